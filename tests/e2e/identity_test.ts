/**
 * Identity and credentials end to end, as the outside review probed them (real proxy and agent
 * processes on a clusters file, member test API servers, the real kubectl): the kubesphere
 * endpoint hands out no member credential; a kubeconfig works only for its own cluster; two
 * agents of one cluster never see each other's member credentials; rotating a cluster's
 * credentials (generation annotation or token) re-issues its kubeconfig and refuses the old
 * one; certificates are renewed before they expire and re-issued on upgrade; `proxy kubeconfig`
 * mints a per-user kubeconfig the member's RBAC applies to; `--as` behaves as straight to the
 * member; error bodies keep internals to the log.
 * @module
 */

import { Buffer } from "node:buffer";
import { X509Certificate } from "node:crypto";
import { parse } from "yaml";
import { generateCA, issueClientCert, loadCA } from "../../lib/pki/mod.ts";
import { renderKubeconfig } from "../../lib/proxy/kubeconfig.ts";
import { startTestApiServer } from "../apiserver/server.ts";
import { kubectl } from "../apiserver/testing.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { denoRun, freePort, type Proc, run, tempDir } from "../helpers/proc.ts";
import { type Echo, startHttpOrigin } from "../proxy/http/origin.ts";

const CREDENTIAL_GENERATION = "tower.kubesphere.io/credential-generation";

interface ClusterSpec {
  name: string;
  token: string;
  generation?: string;
}

/** A standalone proxy on a clusters file of several clusters, with explicit ports. */
class Tower {
  readonly ports = new Map<string, { kubernetes: number; kubesphere: number }>();
  readonly agentPort = freePort();
  proxy!: Proc;
  readonly procs: Proc[] = [];
  readonly clients: Deno.HttpClient[] = [];

  constructor(readonly dir: string, public clusters: ClusterSpec[]) {
    for (const c of clusters) {
      this.ports.set(c.name, { kubernetes: freePort(), kubesphere: freePort() });
    }
  }

  async writeClusters(clusters = this.clusters): Promise<void> {
    this.clusters = clusters;
    const items = clusters.map((c) => ({
      metadata: {
        name: c.name,
        annotations: c.generation ? { [CREDENTIAL_GENERATION]: c.generation } : {},
      },
      spec: {
        joinFederation: true,
        connection: {
          type: "proxy",
          token: c.token,
          kubernetesAPIServerPort: this.ports.get(c.name)!.kubernetes,
          kubesphereAPIServerPort: this.ports.get(c.name)!.kubesphere,
        },
      },
    }));
    // Write beside, then rename: the proxy never reads a half-written file.
    await Deno.writeTextFile(`${this.dir}/clusters.tmp`, JSON.stringify(items));
    await Deno.rename(`${this.dir}/clusters.tmp`, `${this.dir}/clusters.json`);
  }

  async start(extra: string[] = []): Promise<void> {
    await this.writeClusters();
    this.proxy = denoRun("proxy", "proxy.ts", [
      "--clusters-file",
      `${this.dir}/clusters.json`,
      "--host",
      "127.0.0.1",
      "--port",
      String(this.agentPort),
      "--publish-service-address",
      "127.0.0.1",
      "--metrics-address",
      "",
      ...extra,
    ]);
    this.procs.push(this.proxy);
    await this.proxy.waitFor(/Listening on/, 30_000);
  }

  agent(label: string, cluster: string, kubeconfig: string, extra: string[] = []): Proc {
    const spec = this.clusters.find((c) => c.name === cluster)!;
    const p = denoRun(label, "agent.ts", [
      "--name",
      cluster,
      "--token",
      spec.token,
      "--proxy-server",
      `http://127.0.0.1:${this.agentPort}`,
      "--kubeconfig",
      kubeconfig,
      "--kubesphere-service",
      "127.0.0.1:1",
      "--max-retry-interval",
      "2s",
      ...extra,
    ]);
    this.procs.push(p);
    return p;
  }

  kubeconfigPath(cluster: string): string {
    return `${this.dir}/${cluster}.kubeconfig`;
  }

  /** Wait for the `n`th kubeconfig written for `cluster`, and read it. */
  async kubeconfig(cluster: string, n = 1): Promise<Kubeconfig> {
    const re = new RegExp(`Wrote kubeconfig.*cluster="?${cluster}"?`);
    for (let from = 0, seen = 0;;) {
      await this.proxy.waitFor(re, 30_000, from);
      from = this.proxy.lines.findIndex((l, i) => i >= from && re.test(l)) + 1;
      if (++seen === n) break;
    }
    const k = readKubeconfig(await Deno.readTextFile(this.kubeconfigPath(cluster)));
    const client = Deno.createHttpClient({ caCerts: [k.caPem], cert: k.certPem, key: k.keyPem });
    this.clients.push(client);
    return { ...k, client };
  }

  server(cluster: string): string {
    return `https://127.0.0.1:${this.ports.get(cluster)!.kubernetes}`;
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.close();
    for (const p of this.procs.reverse()) await p.stop();
  }
}

interface Kubeconfig {
  server: string;
  caPem: string;
  certPem: string;
  keyPem: string;
  client: Deno.HttpClient;
}

function readKubeconfig(text: string): Omit<Kubeconfig, "client"> {
  const kc = parse(text);
  const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
  return {
    server: kc.clusters[0].cluster.server,
    caPem: unb64(kc.clusters[0].cluster["certificate-authority-data"]),
    certPem: unb64(kc.users[0].user["client-certificate-data"]),
    keyPem: unb64(kc.users[0].user["client-key-data"]),
  };
}

async function status(url: string, client: Deno.HttpClient): Promise<number> {
  const r = await fetch(url, { client });
  await r.body?.cancel();
  return r.status;
}

Deno.test("kubesphere endpoint: no member credential for anyone; the caller's own passes", async () => {
  await using dir = await tempDir();
  const member = await startTestApiServer();
  const ks = await startHttpOrigin();
  const tower = new Tower(dir.path, [{ name: "alpha", token: "a1".repeat(32) }]);
  try {
    await tower.start();
    // An agent in a pod always sends a bearer token (its ServiceAccount's).
    const kc = await member.kubeconfigFor("tower-agent", ["system:masters"], { token: true });
    const agent = tower.agent("agent", "alpha", kc, [
      "--kubesphere-service",
      `127.0.0.1:${ks.port}`,
    ]);
    await agent.waitFor(/Connected\./, 30_000);
    // The endpoints listen where the agent port does (--host), not on every address.
    await tower.proxy.waitFor(/cluster endpoints listening.*kubernetes="127\.0\.0\.1:/);
    const base = `http://127.0.0.1:${tower.ports.get("alpha")!.kubesphere}/echo`;
    const anonymous = await (await fetch(base)).json() as Echo;
    assertEquals(anonymous.headers["authorization"], undefined);
    const user = await (await fetch(base, {
      headers: { Authorization: "Bearer host-user-token", "X-Forwarded-For": "10.1.2.3" },
    })).json() as Echo;
    assertEquals(user.headers["authorization"], "Bearer host-user-token");
    assertEquals(user.headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    // The member's token went nowhere near the endpoint's answers.
    const memberToken = parse(await Deno.readTextFile(kc)).users[0].user.token as string;
    assert(!JSON.stringify([anonymous, user]).includes(memberToken));
  } finally {
    await tower.close();
    await ks.close();
    await member.close();
  }
});

Deno.test("a cluster's kubeconfig is refused on every other cluster's endpoint", async () => {
  await using dir = await tempDir();
  const member = await startTestApiServer();
  const tower = new Tower(dir.path, [
    { name: "alpha", token: "a2".repeat(32) },
    { name: "beta", token: "b2".repeat(32) },
  ]);
  try {
    await tower.start();
    tower.agent("agent-alpha", "alpha", member.kubeconfigPath);
    tower.agent("agent-beta", "beta", member.kubeconfigPath);
    const alpha = await tower.kubeconfig("alpha");
    const beta = await tower.kubeconfig("beta");
    const ns = "/api/v1/namespaces";
    assertEquals(await status(alpha.server + ns, alpha.client), 200);
    assertEquals(await status(beta.server + ns, beta.client), 200);
    const cross = await fetch(beta.server + ns, { client: alpha.client });
    assertEquals(cross.status, 401);
    assertEquals((await cross.json()).kind, "Status");
    assertEquals(await status(alpha.server + ns, beta.client), 401);
  } finally {
    await tower.close();
    await member.close();
  }
});

Deno.test("two agents of one cluster: each request carries only its own session's member credentials", async () => {
  await using dir = await tempDir();
  // Two members with their own CAs and tokens: a request sent with the other agent's TLS
  // settings or token would fail there (bad certificate, 401).
  const m1 = await startTestApiServer();
  const m2 = await startTestApiServer();
  const tower = new Tower(dir.path, [{ name: "alpha", token: "a3".repeat(32) }]);
  try {
    await tower.start();
    const a = tower.agent(
      "agent-a",
      "alpha",
      await m1.kubeconfigFor("agent-a", ["system:masters"], { token: true }),
    );
    await a.waitFor(/Connected\./, 30_000);
    const admin = await tower.kubeconfig("alpha");
    const b = tower.agent(
      "agent-b",
      "alpha",
      await m2.kubeconfigFor("agent-b", ["system:masters"], { token: true }),
    );
    await b.waitFor(/Connected\./, 30_000);
    // Fresh streams (watches) spread over both sessions.
    for (let i = 0; i < 12; i++) {
      const r = await fetch(`${admin.server}/api/v1/namespaces?watch=true&timeoutSeconds=1`, {
        client: admin.client,
      });
      assertEquals(r.status, 200, `request ${i}`);
      await r.body?.cancel();
    }
    for (const [m, user] of [[m1, "agent-a"], [m2, "agent-b"]] as const) {
      const seen = m.audit.filter((e) => e.uri.startsWith("/api/v1/namespaces"));
      assert(seen.length > 0, `${user}'s member got none of the requests`);
      for (const e of seen) assertEquals([e.user, e.status], [user, 200]);
    }
    // The first agent leaves: its credentials leave with it.
    a.signal("SIGKILL");
    await a.status();
    await tower.proxy.waitFor(/Agent disconnected/);
    m1.audit.length = 0;
    for (let i = 0; i < 10; i++) {
      assertEquals(await status(`${admin.server}/api/v1/namespaces`, admin.client), 200);
    }
    assertEquals(m1.audit.length, 0);
  } finally {
    await tower.close();
    await m1.close();
    await m2.close();
  }
});

Deno.test("rotation: a new credential generation, then a new token, each re-issue the kubeconfig and refuse the old", async () => {
  await using dir = await tempDir();
  const member = await startTestApiServer();
  const tower = new Tower(dir.path, [{ name: "alpha", token: "a4".repeat(32) }]);
  try {
    await tower.start();
    const agent = tower.agent("agent-1", "alpha", member.kubeconfigPath);
    const first = await tower.kubeconfig("alpha");
    const url = `${first.server}/api/v1/namespaces`;
    assertEquals(await status(url, first.client), 200);
    // An operator revokes every certificate of the cluster: a new generation.
    await tower.writeClusters([{ name: "alpha", token: "a4".repeat(32), generation: "2" }]);
    const second = await tower.kubeconfig("alpha", 2);
    assert(second.certPem !== first.certPem);
    assertEquals(await status(url, first.client), 401);
    assertEquals(await status(url, second.client), 200);
    // The token rotates: the agent's session closes, an agent with the new token comes back.
    const token = "c4".repeat(32);
    await tower.writeClusters([{ name: "alpha", token, generation: "2" }]);
    await tower.proxy.waitFor(/Token changed/);
    await agent.stop();
    // The kubeconfig is re-issued at once (the endpoints keep running, answering 503 until
    // an agent is back); requests go through once the new agent is.
    const third = await tower.kubeconfig("alpha", 3);
    const next = tower.agent("agent-2", "alpha", member.kubeconfigPath, ["--token", token]);
    await next.waitFor(/Connected\./, 30_000);
    assertEquals(await status(url, second.client), 401);
    assertEquals(await status(url, third.client), 200);
  } finally {
    await tower.close();
    await member.close();
  }
});

Deno.test("certificates are renewed before they expire, and unbound ones re-issued on upgrade", async () => {
  await using dir = await tempDir();
  const member = await startTestApiServer();
  const tower = new Tower(dir.path, [{ name: "alpha", token: "a5".repeat(32) }]);
  try {
    // A kubeconfig from before certificates were bound, signed by the same CA.
    const ca = await generateCA({ commonName: "tower-ca" });
    await Deno.writeTextFile(`${dir.path}/ca.crt`, ca.certPem);
    await Deno.writeTextFile(`${dir.path}/ca.key`, ca.keyPem, { mode: 0o600 });
    const old = await issueClientCert(await loadCA(ca.certPem, ca.keyPem), {
      commonName: "kubernetes-admin",
      organizations: ["system:masters"],
    });
    const oldText = renderKubeconfig({
      cluster: "alpha",
      server: tower.server("alpha"),
      caPem: ca.certPem,
      ...old,
    });
    await Deno.writeTextFile(tower.kubeconfigPath("alpha"), oldText, { mode: 0o600 });
    await tower.start(["--client-cert-validity", "9s"]);
    tower.agent("agent", "alpha", member.kubeconfigPath);
    const first = await tower.kubeconfig("alpha");
    assert(first.certPem !== old.certPem, "the unbound certificate was kept");
    const oldClient = Deno.createHttpClient({
      caCerts: [ca.certPem],
      cert: old.certPem,
      key: old.keyPem,
    });
    tower.clients.push(oldClient);
    assertEquals(await status(`${first.server}/api/v1/namespaces`, oldClient), 401);
    // Valid for 9 s: renewed once less than 3 s is left, well before it expires.
    const renewed = await tower.kubeconfig("alpha", 2);
    const t1 = new Date(new X509Certificate(first.certPem).validTo).getTime();
    const t2 = new Date(new X509Certificate(renewed.certPem).validTo).getTime();
    assert(t2 > t1, "the renewed certificate does not last longer");
    assertEquals(await status(`${renewed.server}/api/v1/namespaces`, renewed.client), 200);
  } finally {
    await tower.close();
    await member.close();
  }
});

Deno.test("proxy kubeconfig: a per-user kubeconfig, and --as through Tower as straight to the member", async () => {
  await using dir = await tempDir();
  const member = await startTestApiServer({ rbac: true });
  const tower = new Tower(dir.path, [{ name: "alpha", token: "a6".repeat(32) }]);
  try {
    await tower.start();
    tower.agent("agent", "alpha", member.kubeconfigPath);
    await tower.kubeconfig("alpha");
    const canI = async (kubeconfig: string | undefined, args: string[]) => {
      const r = await kubectl(member, ["auth", "can-i", ...args], { kubeconfig });
      assert(r.code === 0 || r.code === 1, r.stderr);
      return r.stdout.trim();
    };
    for (const args of [["create", "pods"], ["create", "pods", "--as=system:anonymous"]]) {
      assertEquals(
        await canI(tower.kubeconfigPath("alpha"), args),
        await canI(undefined, args),
        args.join(" "),
      );
    }
    assertEquals(
      await canI(tower.kubeconfigPath("alpha"), ["create", "pods", "--as=system:anonymous"]),
      "no",
    );
    const minted = await run("deno", [
      "run",
      "-A",
      "proxy.ts",
      "kubeconfig",
      "alpha",
      "--user",
      "alice",
      "--group",
      "dev",
      "--validity",
      "1h",
      "--clusters-file",
      `${dir.path}/clusters.json`,
    ]);
    assertEquals(minted.code, 0, minted.stderr);
    const alicePath = `${dir.path}/alice.kubeconfig`;
    await Deno.writeTextFile(alicePath, minted.stdout);
    assertEquals(await canI(alicePath, ["create", "pods"]), "no");
    assertEquals(await canI(alicePath, ["get", "namespaces"]), "no");
    const asAdmin = await kubectl(member, ["get", "pods", "--as=kubernetes-admin"], {
      kubeconfig: alicePath,
    });
    assertEquals(asAdmin.code, 1);
    assertMatch(asAdmin.stderr, /impersonation is not allowed with a per-user certificate/);
    // Unknown cluster or user names the command cannot put in a certificate: clear errors.
    for (const bad of [["nope", "--user", "alice"], ["alpha", "--user", " alice"]]) {
      const r = await run("deno", [
        "run",
        "-A",
        "proxy.ts",
        "kubeconfig",
        ...bad,
        "--clusters-file",
        `${dir.path}/clusters.json`,
      ]);
      assertEquals(r.code, 1, bad.join(" "));
      assertMatch(r.stderr, /^proxy kubeconfig: /);
    }
  } finally {
    await tower.close();
    await member.close();
  }
});

Deno.test("502 bodies say what failed; where and why only in the proxy's log", async () => {
  await using dir = await tempDir();
  const tower = new Tower(dir.path, [{ name: "alpha", token: "a7".repeat(32) }]);
  try {
    await tower.start();
    // The agent's member API server is not listening.
    const closed = freePort();
    const kc = `${dir.path}/member.kubeconfig`;
    await Deno.writeTextFile(
      kc,
      JSON.stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [{ name: "m", cluster: { server: `https://127.0.0.1:${closed}` } }],
        users: [{ name: "u", user: { token: "member-token-0123" } }],
        contexts: [{ name: "c", context: { cluster: "m", user: "u" } }],
        "current-context": "c",
      }),
    );
    tower.agent("agent", "alpha", kc);
    const admin = await tower.kubeconfig("alpha");
    const r = await fetch(`${admin.server}/api/v1/namespaces`, { client: admin.client });
    assertEquals(r.status, 502);
    const body = await r.text();
    assertEquals(JSON.parse(body).message, "cluster alpha: kubernetes API server unreachable");
    for (const secret of [String(closed), "alpha#", "member-token"]) {
      assert(!body.includes(secret), `${secret} in ${body}`);
    }
    await tower.proxy.waitFor(new RegExp(`upstream unreachable.*${closed}`));
  } finally {
    await tower.close();
  }
});
