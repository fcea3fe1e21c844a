/**
 * Three proxy replicas, active-active, routed by Kubernetes itself: each is a
 * real `proxy.ts` process with its own loopback address as pod IP (Pods
 * `tower-0..2` exist in the test API server), 20 clusters whose agents (one
 * per cluster, in one swarm process) come through a TCP load balancer in
 * front of the replicas' agent ports (to ready replicas, by `/readyz`), and a kube-proxy-like client that
 * resolves `mc-<name>` through the EndpointSlices. Every cluster answers
 * through whichever replica holds its agent; a replica killed with SIGKILL
 * loses only its own clusters, until their agents are back elsewhere and its
 * slices are reaped; a rolling restart (SIGTERM one at a time) fails no
 * request of a steady load.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { denoRun, type Proc } from "../helpers/proc.ts";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { installCrd } from "../controller/helpers.ts";
import { type Answer, getThrough, SliceResolver, startLoadBalancer } from "../helpers/replicas.ts";

const NS = "kubesphere-system";
const TOKEN = "5e".repeat(32);
const CLUSTERS = Array.from({ length: 20 }, (_, i) => `rc-${i}`);
const IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/** A base port whose 40 pairs (kubernetes, +10000) and the agent port are free on every replica address. */
function freeRange(): { min: number; max: number; agentPort: number; metricsPort: number } {
  for (let attempt = 0; attempt < 50; attempt++) {
    const min = 20000 + Math.floor(Math.random() * 4000);
    const ports = [min - 2, min - 1];
    for (let p = min; p < min + 40; p++) ports.push(p, p + 10000);
    const held: Deno.Listener[] = [];
    try {
      for (const hostname of IPS) {
        for (const port of ports) held.push(Deno.listen({ hostname, port }));
      }
      return { min, max: min + 39, agentPort: min - 1, metricsPort: min - 2 };
    } catch {
      // taken: try another base
    } finally {
      for (const l of held) l.close();
    }
  }
  throw new Error("no free port range on 127.0.0.2-4");
}

async function createPods(host: TestApiServer): Promise<void> {
  for (const [i, ip] of IPS.entries()) {
    const pod = `/api/v1/namespaces/${NS}/pods`;
    const made = await host.request("POST", pod, {
      metadata: { name: `tower-${i}`, labels: { app: "tower" } },
      spec: { containers: [{ name: "proxy", image: "kubesphere/tower" }] },
    });
    assertEquals(made.status, 201, made.text);
    const st = await host.request("GET", `${pod}/tower-${i}`);
    const body = st.body as unknown as { status: Record<string, unknown> };
    body.status = { ...body.status, podIP: ip, podIPs: [{ ip }] };
    const put = await host.request("PUT", `${pod}/tower-${i}/status`, body);
    assertEquals(put.status, 200, put.text);
  }
}

interface Replica {
  index: number;
  proc: Proc;
}

function startReplica(
  host: TestApiServer,
  i: number,
  range: { min: number; max: number; agentPort: number; metricsPort: number },
): Replica {
  const proc = denoRun(`tower-${i}`, "proxy.ts", [
    "--kubeconfig",
    host.kubeconfigPath,
    "--leader-elect",
    "--host",
    IPS[i],
    "--port",
    String(range.agentPort),
    "--pod-name",
    `tower-${i}`,
    "--pod-ip",
    IPS[i],
    "--port-range",
    `${range.min}-${range.max}`,
    "--metrics-address",
    `${IPS[i]}:${range.metricsPort}`,
    "--shutdown-grace",
    "5s",
    "--shutdown-delay",
    "1s",
    "--v",
    "1",
  ], { POD_NAMESPACE: NS });
  return { index: i, proc };
}

/** A steady load: every cluster in turn, again and again, each answer recorded. */
function steadyLoad(resolver: SliceResolver) {
  /** `picked`: when its backend was chosen (getThrough picks at once); `t`: when it answered. */
  const answers: (Answer & { cluster: string; picked: number; t: number })[] = [];
  let waiters: { n: number; resolve: () => void }[] = [];
  let stop = false;
  const done = (async () => {
    for (let round = 0; round < 100_000 && !stop; round++) {
      await Promise.all(CLUSTERS.map(async (c) => {
        const picked = performance.now();
        const a = await getThrough(resolver, `mc-${c}`, "kubesphere");
        if (a.ok && !a.body?.includes(`origin of ${c}`)) {
          a.ok = false;
          a.error = `wrong cluster answered: ${a.body}`;
        }
        answers.push({ ...a, cluster: c, picked, t: performance.now() });
        waiters = waiters.filter((w) => answers.length < w.n || (w.resolve(), false));
      }));
    }
  })();
  return {
    answers,
    /** Resolves once `more` answers have come in after this call. */
    more(more = 2 * CLUSTERS.length): Promise<void> {
      const { promise, resolve } = Promise.withResolvers<void>();
      waiters.push({ n: answers.length + more, resolve });
      return promise;
    },
    async stop() {
      stop = true;
      await done;
    },
  };
}

/** The replica (index) whose slice serves `cluster` now, from the resolver. */
function holders(resolver: SliceResolver, cluster: string): string[] {
  return resolver.backends(`mc-${cluster}`).map((b) => b.address);
}

Deno.test("three replicas: every cluster answers through its replica; SIGKILL loses only that replica's clusters, briefly; a rolling restart fails nothing", async (t) => {
  const host = await startTestApiServer({
    namespaces: [NS],
    allowLoopbackEndpoints: true,
    bookmarkIntervalMs: 200,
  });
  const origins = CLUSTERS.map((c) =>
    Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      () => new Response(`origin of ${c}\n`),
    )
  );
  const range = freeRange();
  const replicas: Replica[] = [];
  const procs: Proc[] = [];
  let resolver: SliceResolver | undefined;
  const lb = startLoadBalancer(() =>
    replicas.filter((r) => !r.proc.exited).map((r) => ({
      hostname: IPS[r.index],
      port: range.agentPort,
      ready: `http://${IPS[r.index]}:${range.metricsPort}/readyz`,
    }))
  );
  try {
    await installCrd(host);
    await createPods(host);
    for (const c of CLUSTERS) {
      const r = await host.request("POST", "/apis/cluster.kubesphere.io/v1alpha1/clusters", {
        apiVersion: "cluster.kubesphere.io/v1alpha1",
        kind: "Cluster",
        metadata: { name: c },
        spec: { joinFederation: true, connection: { type: "proxy", token: TOKEN } },
      });
      assertEquals(r.status, 201, r.text);
    }
    for (let i = 0; i < 3; i++) replicas.push(startReplica(host, i, range));
    for (const r of replicas) await r.proc.waitFor(/Listening on/, 60_000);
    resolver = new SliceResolver(host);
    await resolver.ready;
    const swarm = denoRun("swarm", "tests/helpers/agent_swarm.ts", [
      "--proxy",
      `http://127.0.0.1:${lb.port}`,
      "--token",
      TOKEN,
      "--count",
      String(CLUSTERS.length),
      "--clusters",
      String(CLUSTERS.length),
      "--prefix",
      "rc-",
      "--kubesphere",
      origins.map((o) => `127.0.0.1:${o.addr.port}`).join(","),
      "--max-retry-interval",
      "2s",
    ]);
    procs.push(swarm);
    const res = resolver;

    await t.step(
      "every cluster is served by one replica's slice and answers through it",
      async () => {
        await res.until(
          () => CLUSTERS.every((c) => holders(res, c).length > 0),
          "every cluster served",
        );
        const perReplica = new Map<string, number>();
        for (const c of CLUSTERS) {
          for (const a of holders(res, c)) perReplica.set(a, (perReplica.get(a) ?? 0) + 1);
          const answer = await getThrough(res, `mc-${c}`, "kubesphere");
          assert(answer.ok, `${c}: ${JSON.stringify(answer)}`);
          assert(answer.body!.includes(`origin of ${c}`), `${c} answered ${answer.body}`);
        }
        // The load balancer spread the agents: every replica serves some clusters.
        assertEquals([...perReplica.keys()].sort(), IPS, JSON.stringify([...perReplica]));
        // The Services select no pods; the leader wrote a kubeconfig and AgentAvailable for every
        // cluster, those held by other replicas included.
        for (const c of CLUSTERS) {
          const svc = await host.request("GET", `/api/v1/namespaces/${NS}/services/mc-${c}`);
          assertEquals(
            (svc.body as unknown as { spec: { selector?: unknown } }).spec.selector,
            undefined,
          );
        }
        const deadline = Date.now() + 60_000;
        for (;;) {
          const list = await host.request("GET", "/apis/cluster.kubesphere.io/v1alpha1/clusters");
          const items = (list.body as unknown as {
            items: {
              metadata: { name: string };
              spec: { connection: { kubeconfig?: string } };
              status?: { conditions?: { type: string; status: string }[] };
            }[];
          }).items;
          const pending = items.filter((c) =>
            !c.spec.connection.kubeconfig ||
            c.status?.conditions?.find((x) => x.type === "AgentAvailable")?.status !== "True"
          ).map((c) => c.metadata.name);
          if (pending.length === 0) break;
          assert(Date.now() < deadline, `no kubeconfig or AgentAvailable yet: ${pending}`);
          await new Promise((r) => setTimeout(r, 200)); // polling the API: no event to wait on
        }
      },
    );

    await t.step(
      "SIGKILL one (non-leader) replica: only its clusters fail, and come back",
      async () => {
        const leader = replicas.find((r) => r.proc.count(/became leader/) > 0)!;
        const victim = replicas.find((r) =>
          r !== leader && CLUSTERS.some((c) => holders(res, c).includes(IPS[r.index]))
        )!;
        const ip = IPS[victim.index];
        const mine = CLUSTERS.filter((c) => holders(res, c).includes(ip));
        const load = steadyLoad(res);
        await load.more();
        const killedAt = performance.now();
        const killedWall = Date.now();
        victim.proc.signal("SIGKILL");
        await victim.proc.status();
        // Back: every one of its clusters is served elsewhere, and its dead slices are gone.
        await res.until(
          () => mine.every((c) => holders(res, c).length > 0 && !holders(res, c).includes(ip)),
          "the victim's clusters served elsewhere",
        );
        const servedAt = performance.now();
        await load.more();
        await load.stop();
        const failed = load.answers.filter((a) => !a.ok);
        const others = failed.filter((a) => !mine.includes(a.cluster));
        assertEquals(others, [], "clusters of the other replicas saw failures");
        // Routed after the slices changed (a request routed to the dead replica just before may
        // be refused just after: its answer's time says nothing about routing).
        const late = failed.filter((a) => a.picked > servedAt);
        assertEquals(late, [], "failures after the victim's clusters were served elsewhere");
        // What it took: the agents' reconnects (swarm log) and the last failure per cluster.
        const reconnects = swarm.lines.map((l) => {
          try {
            return JSON.parse(l) as { event: string; cluster: string; t: number };
          } catch {
            return undefined;
          }
        }).filter((e) => e?.event === "connected" && e.t > killedWall && mine.includes(e.cluster));
        const lastFailure = Math.max(0, ...failed.map((a) => a.t - killedAt));
        const agentsBack = Math.max(0, ...reconnects.map((e) => e!.t - killedWall));
        console.log(
          `SIGKILL of tower-${victim.index}: ${mine.length} clusters; agents back after ` +
            `${Math.round(agentsBack)} ms; served elsewhere after ${
              Math.round(servedAt - killedAt)
            } ms; ` +
            `last failed request ${
              Math.round(lastFailure)
            } ms after the kill; ${failed.length} of ` +
            `${load.answers.length} requests failed, all on its clusters`,
        );
        // Restart it (same pod): it takes agents again.
        replicas[victim.index] = startReplica(host, victim.index, range);
        await replicas[victim.index].proc.waitFor(/Listening on/, 60_000);
      },
    );

    await t.step(
      "rolling restart, SIGTERM one at a time: a steady load fails nothing",
      async () => {
        const load = steadyLoad(res);
        await load.more();
        for (let i = 0; i < 3; i++) {
          const old = replicas[i];
          old.proc.signal("SIGTERM");
          const st = await old.proc.status();
          assertEquals(st.code, 0, old.proc.tail());
          // Its slices went away before its sockets did.
          const withdrawn = old.proc.lines.findIndex((l) =>
            l.includes("Withdrew every EndpointSlice")
          );
          const stopped = old.proc.lines.findIndex((l) => l.includes("Stopped cluster endpoints"));
          assert(withdrawn >= 0 && (stopped < 0 || withdrawn < stopped), old.proc.tail());
          replicas[i] = startReplica(host, i, range);
          await replicas[i].proc.waitFor(/Listening on/, 60_000);
          await res.until(() => CLUSTERS.every((c) => holders(res, c).length > 0), "all served");
        }
        await load.more();
        await load.stop();
        const failed = load.answers.filter((a) => !a.ok);
        assertEquals(failed.slice(0, 5), [], `${failed.length} of ${load.answers.length} failed`);
        console.log(`rolling restart: ${load.answers.length} requests, none failed`);
      },
    );
  } finally {
    resolver?.close();
    for (const p of procs) await p.stop();
    for (const r of replicas) await r.proc.stop();
    await lb.close();
    for (const o of origins) await o.shutdown();
    await host.close();
  }
});
