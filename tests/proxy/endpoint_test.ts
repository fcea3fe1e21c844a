/**
 * The per-cluster endpoints end to end: the kubernetes endpoint (TLS, client
 * certificates of Tower's CA) in front of the test API server over TLS
 * streams, driven by `fetch` and by the real `kubectl` (get/apply/delete,
 * get -w, exec over WebSocket and SPDY, logs -f); the kubesphere endpoint;
 * refusal of callers without a valid certificate; upstream TLS verification
 * and bearer tokens; certificate rotation; busy ports; close().
 * @module
 */

import * as net from "node:net";
import * as tls from "node:tls";
import { stringify as toYaml } from "yaml";
import {
  bindingUri,
  type CA,
  credentialEpoch,
  generateCA,
  issueClientCert,
  issueServingCert,
  type KeyPairPem,
  verifyClientCert,
} from "../../lib/pki/mod.ts";
import { clientAccess } from "../../lib/proxy/client_access.ts";
import {
  type ClusterEndpoints,
  ListenError,
  startClusterEndpoints,
} from "../../lib/proxy/endpoint.ts";
import type { RequestRecord } from "../../lib/proxy/http/forward.ts";
import type { UpstreamAuth } from "../../lib/proxy/http/upstream.ts";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { deadline } from "../helpers/deadline.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "../helpers/assert.ts";
import { Proc, run } from "../helpers/proc.ts";
import { listenLocal, RawClient, TestDialer } from "./http/helpers.ts";
import { type Echo, startHttpOrigin } from "./http/origin.ts";

interface Fixture {
  tower: CA;
  /** The cluster's credential epoch the endpoint accepts (change it to revoke). */
  state: { epoch: string | undefined };
  /** An admin certificate bound to alpha's current credentials. */
  user: KeyPairPem;
  api: TestApiServer;
  kdial: TestDialer;
  ksdial: TestDialer;
  ep: ClusterEndpoints;
  records: RequestRecord[];
  dir: string;
  kubeconfig: string;
  close(): Promise<void>;
}

function upstreamTls(api: TestApiServer): UpstreamAuth {
  return {
    tls: {
      caPem: api.caPem,
      certPem: api.tls.adminCertPem,
      keyPem: api.tls.adminKeyPem,
      serverName: "127.0.0.1",
    },
  };
}

async function fixture(): Promise<Fixture> {
  const tower = await generateCA({ commonName: "tower-ca" });
  const serving = await issueServingCert(tower, {
    commonName: "alpha",
    dnsNames: ["localhost"],
    ipAddresses: ["127.0.0.1"],
  });
  const state = {
    epoch: credentialEpoch(tower, { cluster: "alpha", token: "alpha-token", generation: "" }) as
      | string
      | undefined,
  };
  const user = await issueClientCert(tower, {
    commonName: "kubesphere",
    organizations: ["system:masters"],
    uris: [bindingUri({ cluster: "alpha", epoch: state.epoch!, role: "admin" })],
  });
  const api = await startTestApiServer();
  const ks = await startHttpOrigin();
  const kdial = new TestDialer(api.port, { wrap: true, auth: upstreamTls(api) });
  const ksdial = new TestDialer(ks.port);
  const records: RequestRecord[] = [];
  const ep = await startClusterEndpoints({
    cluster: "alpha",
    host: "127.0.0.1",
    kubernetesPort: 0,
    kubespherePort: 0,
    servingCert: serving,
    verifyClient: (der) => verifyClientCert(tower, der),
    access: (v) => clientAccess(v, "alpha", state.epoch),
    kubernetes: kdial,
    kubesphere: ksdial,
    onRequest: (r) => records.push(r),
  });
  const dir = await Deno.makeTempDir({ prefix: "tower-endpoint-" });
  const kubeconfig = `${dir}/config`;
  const b64 = (s: string) => btoa(s);
  await Deno.writeTextFile(
    kubeconfig,
    toYaml({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{
        name: "alpha",
        cluster: {
          server: `https://127.0.0.1:${ep.kubernetesPort}`,
          "certificate-authority-data": b64(tower.certPem),
        },
      }],
      users: [{
        name: "kubesphere",
        user: {
          "client-certificate-data": b64(user.certPem),
          "client-key-data": b64(user.keyPem),
        },
      }],
      contexts: [{ name: "alpha", context: { cluster: "alpha", user: "kubesphere" } }],
      "current-context": "alpha",
    }),
  );
  return {
    tower,
    state,
    user,
    api,
    kdial,
    ksdial,
    ep,
    records,
    dir,
    kubeconfig,
    async close() {
      await ep.close();
      await api.close();
      await ks.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function kubectlArgs(f: Fixture, args: string[]): string[] {
  return [
    `--kubeconfig=${f.kubeconfig}`,
    `--cache-dir=${f.dir}/cache`,
    "--request-timeout=15s",
    ...args,
  ];
}

async function kubectl(
  f: Fixture,
  args: string[],
  opts: { stdin?: string; env?: Record<string, string> } = {},
): Promise<string> {
  const r = await run("kubectl", kubectlArgs(f, args), {
    stdin: opts.stdin,
    timeoutMs: 30_000,
    env: { HOME: f.dir, ...opts.env },
  });
  assertEquals(r.code, 0, `kubectl ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

function client(f: Fixture, identity?: KeyPairPem): Deno.HttpClient {
  return Deno.createHttpClient({
    caCerts: [f.tower.certPem],
    ...(identity ? { cert: identity.certPem, key: identity.keyPem } : {}),
  } as Deno.CreateHttpClientOptions);
}

/** Active (not idle) upstream connections of the kubernetes endpoint. */
function activeUpstreams(f: Fixture): number {
  const s = f.ep.stats().kubernetes;
  return s.upstreams - s.idle;
}

/**
 * Every upstream stream closes once idle ones are dropped: in-flight ones must have been
 * closed by the proxy already (a leaked one keeps `open` above 0 and this times out).
 */
async function noLeakedStreams(f: Fixture): Promise<void> {
  f.ep.dropSession(f.kdial.key);
  await f.kdial.waitOpen(0);
  // A TLS stream reports its close a moment after the tunnel stream under it: wait for the
  // count (bounded), rather than for a fixed time.
  for (let i = 0; i < 500 && activeUpstreams(f) !== 0; i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assertEquals(activeUpstreams(f), 0);
}

Deno.test("kubernetes endpoint: requests with a Tower client certificate reach the member API", async (t) => {
  const f = await fixture();
  try {
    await t.step("fetch with the issued client certificate", async () => {
      const c = client(f, f.user);
      try {
        const res = await fetch(`https://127.0.0.1:${f.ep.kubernetesPort}/api/v1/namespaces`, {
          client: c,
          headers: { Authorization: "Bearer not-forwarded" },
        });
        assertEquals(res.status, 200);
        const list = await res.json();
        assertEquals(list.kind, "NamespaceList");
      } finally {
        c.close();
      }
      const rec = f.records.at(-1)!;
      assertEquals(rec.commonName, "kubesphere");
      assertEquals(rec.endpoint, "kubernetes");
      assertEquals(rec.status, 200);
    });

    await t.step("401 Status without a client certificate or with one of another CA", async () => {
      for (
        const identity of [undefined, {
          certPem: f.api.tls.adminCertPem,
          keyPem: f.api.tls.adminKeyPem,
        }]
      ) {
        const c = client(f, identity);
        try {
          const res = await fetch(`https://127.0.0.1:${f.ep.kubernetesPort}/api/v1/namespaces`, {
            client: c,
          });
          assertEquals(res.status, 401);
          const s = await res.json();
          assertEquals(s.kind, "Status");
          assertEquals(s.code, 401);
          assertEquals(s.reason, "Unauthorized");
        } finally {
          c.close();
        }
      }
      assertEquals(f.kdial.dials, 1, "refused callers never reach the tunnel");
    });

    await t.step("kubectl get --raw /healthz, get/apply/delete", async () => {
      assertEquals(await kubectl(f, ["get", "--raw", "/healthz"]), "ok");
      assertMatch(await kubectl(f, ["get", "ns"]), /default\s+Active/);
      const applied = await kubectl(f, ["apply", "-f", "-"], {
        stdin: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: through-tower\n",
      });
      assertStringIncludes(applied, "namespace/through-tower created");
      assertStringIncludes(
        await kubectl(f, ["delete", "namespace", "through-tower", "--timeout=20s"]),
        "deleted",
      );
    });

    await t.step(
      "kubectl get -w receives a later change; killing it frees the stream",
      async () => {
        const w = new Proc(
          "kubectl-watch",
          "kubectl",
          kubectlArgs(f, ["get", "ns", "-w", "--request-timeout=0"]).filter((a) =>
            !a.startsWith("--request-timeout=15s")
          ),
          { HOME: f.dir },
        );
        try {
          await w.waitFor(/^default\s+Active/);
          const r = await f.api.request("POST", "/api/v1/namespaces", {
            apiVersion: "v1",
            kind: "Namespace",
            metadata: { name: "watched" },
          });
          assertEquals(r.status, 201);
          await w.waitFor(/^watched\s+Active/);
          assert(activeUpstreams(f) >= 1);
        } finally {
          await w.stop();
        }
        await noLeakedStreams(f);
      },
    );

    await t.step("kubectl exec -i -- cat (WebSocket v5.channel.k8s.io)", async () => {
      const out = await kubectl(f, ["exec", "-i", "web-0", "--", "cat"], {
        stdin: "hello through tower\n",
      });
      assertEquals(out, "hello through tower\n");
      assertEquals(f.api.streams.execSessions, 1);
    });

    // The test API server's SPDY endpoints echo raw bytes after the 101 (no SPDY framing), so
    // SPDY/3.1 is exercised with a raw client: the proxy relays bytes, whatever they are.
    for (const upgrade of ["SPDY/3.1", "websocket"]) {
      await t.step(`raw ${upgrade} port-forward upgrade through TLS on both sides`, async () => {
        const sock = tls.connect({
          host: "127.0.0.1",
          port: f.ep.kubernetesPort,
          ca: f.tower.certPem,
          cert: f.user.certPem,
          key: f.user.keyPem,
        });
        await new Promise<void>((resolve, reject) => {
          sock.once("secureConnect", () => resolve());
          sock.once("error", reject);
        });
        const c = RawClient.of(sock);
        try {
          const extra = upgrade === "websocket"
            ? "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
              "Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n"
            : "X-Stream-Protocol-Version: portforward.k8s.io\r\n";
          c.write(
            "POST /api/v1/namespaces/default/pods/web-0/portforward?ports=80 HTTP/1.1\r\n" +
              `Host: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n${extra}\r\n`,
          );
          const head = await c.readHead();
          assertEquals(head.status, 101, head.rawHead);
          if (upgrade === "websocket") {
            assertEquals(head.headers["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
            // One masked binary frame "ping" → echoed unmasked.
            const mask = [1, 2, 3, 4];
            const payload = [..."ping"].map((ch, i) => ch.charCodeAt(0) ^ mask[i % 4]);
            c.write(new Uint8Array([0x82, 0x80 | 4, ...mask, ...payload]));
            const frame = await c.readBytes(6);
            assertEquals(frame.subarray(2).toString(), "ping");
          } else {
            assertMatch(head.rawHead, /X-Stream-Protocol-Version: portforward\.k8s\.io/i);
            const payload = crypto.getRandomValues(new Uint8Array(50_000));
            c.write(payload);
            assertEquals(new Uint8Array(await c.readBytes(payload.length)), payload);
          }
        } finally {
          await c.close();
        }
      });
    }
    assertEquals(f.api.streams.spdySessions, 1);
    assert(f.records.some((r) => r.upgrade && r.status === 101));
    await noLeakedStreams(f);

    await t.step("kubectl logs -f streams until the client leaves", async () => {
      const p = new Proc(
        "kubectl-logs",
        "kubectl",
        kubectlArgs(f, ["logs", "-f", "web-1"]).filter((a) => a !== "--request-timeout=15s"),
        { HOME: f.dir },
      );
      try {
        await p.waitFor(/line 5$/);
      } finally {
        await p.stop();
      }
      await deadline(f.api.core.logStreamsIdle(), 10_000, "log stream closed after client left");
    });

    await t.step("losing the agent mid-watch ends the client's response promptly", async () => {
      const sock = tls.connect({
        host: "127.0.0.1",
        port: f.ep.kubernetesPort,
        ca: f.tower.certPem,
        cert: f.user.certPem,
        key: f.user.keyPem,
      });
      const c = RawClient.of(sock);
      try {
        c.write("GET /api/v1/namespaces?watch=true HTTP/1.1\r\nHost: x\r\n\r\n");
        assertEquals((await c.readHead()).status, 200);
        await c.readSome();
        f.kdial.killAll();
        await deadline(c.readToEnd(), 5_000, "client connection ended after the agent was lost");
        assert(c.ended);
      } finally {
        await c.close();
      }
      await f.kdial.waitOpen(0);
    });

    await t.step("no credentials of the agent in responses or audit records", () => {
      const text = JSON.stringify(f.records);
      assert(!text.includes("PRIVATE KEY"));
      assert(!text.includes("not-forwarded"));
    });
  } finally {
    await f.close();
  }
});

Deno.test("kubesphere endpoint: plain HTTP; the caller's Authorization passes untouched", async () => {
  const f = await fixture();
  const c = Deno.createHttpClient({});
  try {
    const anonymous = await fetch(`http://127.0.0.1:${f.ep.kubespherePort}/echo`, { client: c });
    assertEquals((await anonymous.json() as Echo).headers["authorization"], undefined);
    const res = await fetch(`http://127.0.0.1:${f.ep.kubespherePort}/echo`, {
      client: c,
      headers: { Authorization: "Bearer user-token", "Impersonate-User": "bob" },
    });
    const echo = await res.json() as Echo;
    assertEquals(echo.headers["authorization"], "Bearer user-token");
    assertEquals(echo.headers["impersonate-user"], "bob");
    assertEquals(echo.headers["x-forwarded-proto"], "http");
    assertEquals(echo.headers["x-forwarded-for"], "127.0.0.1");
    assertEquals(f.ksdial.dials, 1);
    assertEquals(f.kdial.dials, 0);
  } finally {
    c.close();
    await f.close();
  }
});

Deno.test("upstream: bearer token instead of a client certificate; CA mismatch is a 502", async () => {
  const f = await fixture();
  const token = "agent-bearer-token-0123456789";
  const api2 = await startTestApiServer({ tokens: [token] });
  const c = client(f, f.user);
  try {
    const url = `https://127.0.0.1:${f.ep.kubernetesPort}/api/v1/namespaces`;
    f.kdial.port = api2.port;
    // Each case is an agent session of its own, with the credentials its config carried.
    let n = 1;
    const session = (auth: UpstreamAuth) => {
      f.ep.dropSession(f.kdial.key);
      f.kdial.key = `session-${++n}`;
      f.kdial.auth = auth;
    };
    session({ tls: { caPem: api2.caPem, serverName: "127.0.0.1" }, bearerToken: token });
    const ok = await fetch(url, { client: c });
    assertEquals(ok.status, 200);
    await ok.body?.cancel();
    // Without the token the member API server refuses: the proxy added it.
    session({ tls: { caPem: api2.caPem, serverName: "127.0.0.1" } });
    const anon = await fetch(url, { client: c });
    assertEquals(anon.status, 401);
    await anon.body?.cancel();
    // A member CA that did not sign the server's certificate: 502, the cause only in the log.
    session({ tls: { caPem: f.tower.certPem, serverName: "127.0.0.1" } });
    const bad = await fetch(url, { client: c });
    assertEquals(bad.status, 502);
    const s = await bad.json();
    assertEquals(s.kind, "Status");
    assertEquals(s.message, "cluster alpha: kubernetes API server unreachable");
    // ... unless the agent's kubeconfig said insecure-skip-tls-verify.
    session({
      tls: { caPem: f.tower.certPem, serverName: "127.0.0.1", insecureSkipVerify: true },
      bearerToken: token,
    });
    const insecure = await fetch(url, { client: c });
    assertEquals(insecure.status, 200);
    await insecure.body?.cancel();
    // A server name the certificate does not carry.
    session({ tls: { caPem: api2.caPem, serverName: "other.example" } });
    const wrong = await fetch(url, { client: c });
    assertEquals(wrong.status, 502);
    await wrong.body?.cancel();
    assertEquals(activeUpstreams(f), 0);
  } finally {
    c.close();
    await api2.close();
    await f.close();
  }
});

Deno.test("serving certificate rotation, busy port, close() ends in-flight streams", async () => {
  const f = await fixture();
  try {
    const next = await issueServingCert(f.tower, {
      commonName: "alpha-rotated",
      ipAddresses: ["127.0.0.1"],
    });
    f.ep.updateServingCert(next);
    const sock = tls.connect({
      host: "127.0.0.1",
      port: f.ep.kubernetesPort,
      ca: f.tower.certPem,
      cert: f.user.certPem,
      key: f.user.keyPem,
    });
    await new Promise<void>((resolve, reject) => {
      sock.once("secureConnect", () => resolve());
      sock.once("error", reject);
    });
    assertEquals(sock.getPeerCertificate().subject.CN, "alpha-rotated");
    // A watch in flight when the endpoints close.
    sock.write("GET /api/v1/namespaces?watch=true HTTP/1.1\r\nHost: x\r\n\r\n");
    await new Promise((r) => sock.once("data", r));
    assertEquals(f.kdial.open, 1);
    const closed = new Promise((r) => sock.once("close", r));
    sock.on("error", () => {});

    // Busy port: a clear error, no crash.
    const busy = await listenLocal(net.createServer());
    try {
      const err = await assertRejects(() =>
        startClusterEndpoints({
          cluster: "beta",
          host: "127.0.0.1",
          kubernetesPort: 0,
          kubespherePort: busy.port,
          servingCert: next,
          verifyClient: (der) => verifyClientCert(f.tower, der),
          access: (v) => clientAccess(v, "beta", f.state.epoch),
          kubernetes: f.kdial,
          kubesphere: f.ksdial,
        })
      );
      assert(err instanceof ListenError);
      assertEquals(err.message, `cluster beta: listen 127.0.0.1:${busy.port}: address in use`);
      assertEquals(err.code, "EADDRINUSE");
    } finally {
      await busy.close();
    }

    await f.ep.close();
    await closed;
    await f.kdial.waitOpen(0);
  } finally {
    await f.close();
  }
});
