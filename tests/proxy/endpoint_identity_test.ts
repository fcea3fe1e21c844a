/**
 * Who a caller of the kubernetes endpoint is, tried the way an attacker would: certificates of
 * another cluster, of no cluster, of an earlier credential generation, of another CA, with two
 * bindings; revocation closing open connections; `kubectl --as` through Tower's admin
 * certificate compared with kubectl straight to the member (the test API server enforcing
 * RBAC); a per-user kubeconfig that impersonates its user and may not impersonate anyone else.
 * @module
 */

import * as tls from "node:tls";
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
import { type ClusterEndpoints, startClusterEndpoints } from "../../lib/proxy/endpoint.ts";
import { renderKubeconfig } from "../../lib/proxy/kubeconfig.ts";
import { mintUserKubeconfig } from "../../lib/proxy/user_kubeconfig.ts";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { deadline, kubectl } from "../apiserver/testing.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { RawClient, TestDialer } from "./http/helpers.ts";

const RBAC = "/apis/rbac.authorization.k8s.io/v1";

interface Fixture {
  tower: CA;
  api: TestApiServer;
  /** Current credential epochs; change one to rotate that cluster's credentials. */
  epochs: Record<string, string>;
  alpha: ClusterEndpoints;
  beta: ClusterEndpoints;
  /** An admin certificate bound to `cluster`'s current credentials. */
  admin(cluster: string, ca?: CA): Promise<KeyPairPem>;
  /** `https://127.0.0.1:<port>` of a cluster's kubernetes endpoint. */
  url(ep: ClusterEndpoints): string;
  close(): Promise<void>;
}

async function fixture(): Promise<Fixture> {
  const tower = await generateCA({ commonName: "tower-ca" });
  const api = await startTestApiServer({ rbac: true });
  const serving = await issueServingCert(tower, { commonName: "ep", ipAddresses: ["127.0.0.1"] });
  const epochs: Record<string, string> = {};
  const start = (cluster: string) => {
    epochs[cluster] = credentialEpoch(tower, {
      cluster,
      token: `${cluster}-token`,
      generation: "",
    });
    return startClusterEndpoints({
      cluster,
      host: "127.0.0.1",
      kubernetesPort: 0,
      kubespherePort: 0,
      servingCert: serving,
      verifyClient: (der) => verifyClientCert(tower, der),
      access: (v) => clientAccess(v, cluster, epochs[cluster]),
      // The agent's identity is the member's admin (system:masters): it may impersonate.
      kubernetes: new TestDialer(api.port, {
        wrap: true,
        auth: {
          tls: {
            caPem: api.caPem,
            certPem: api.tls.adminCertPem,
            keyPem: api.tls.adminKeyPem,
            serverName: "127.0.0.1",
          },
        },
      }),
      kubesphere: new TestDialer(1),
    });
  };
  const alpha = await start("alpha");
  const beta = await start("beta");
  return {
    tower,
    api,
    epochs,
    alpha,
    beta,
    admin: (cluster, ca = tower) =>
      issueClientCert(ca, {
        commonName: "kubernetes-admin",
        organizations: ["system:masters"],
        uris: [bindingUri({ cluster, epoch: epochs[cluster], role: "admin" })],
      }),
    url: (ep) => `https://127.0.0.1:${ep.kubernetesPort}`,
    async close() {
      await alpha.close();
      await beta.close();
      await api.close();
    },
  };
}

/** GET `path` on `ep` with `cert`: status and body. */
async function get(
  f: Fixture,
  ep: ClusterEndpoints,
  cert: KeyPairPem,
  path = "/api/v1/namespaces",
): Promise<{ status: number; body: Record<string, unknown> }> {
  const client = Deno.createHttpClient({
    caCerts: [f.tower.certPem],
    cert: cert.certPem,
    key: cert.keyPem,
  });
  try {
    const res = await fetch(f.url(ep) + path, { client });
    return { status: res.status, body: await res.json() };
  } finally {
    client.close();
  }
}

async function refused(f: Fixture, ep: ClusterEndpoints, cert: KeyPairPem, why: string) {
  const r = await get(f, ep, cert);
  assertEquals(r.status, 401, why);
  assertEquals(r.body.kind, "Status", why);
  assertEquals(r.body.reason, "Unauthorized", why);
}

Deno.test("a certificate is accepted only on the endpoint of the cluster it was issued for", async () => {
  const f = await fixture();
  try {
    const forAlpha = await f.admin("alpha");
    const forBeta = await f.admin("beta");
    assertEquals((await get(f, f.alpha, forAlpha)).status, 200);
    assertEquals((await get(f, f.beta, forBeta)).status, 200);
    await refused(f, f.beta, forAlpha, "alpha's certificate on beta");
    await refused(f, f.alpha, forBeta, "beta's certificate on alpha");
    // Signed by Tower's CA, right subject, but no binding (as every certificate before it).
    const unbound = await issueClientCert(f.tower, {
      commonName: "kubernetes-admin",
      organizations: ["system:masters"],
    });
    await refused(f, f.alpha, unbound, "unbound certificate");
    // Bound to both clusters: ambiguous, refused everywhere.
    const both = await issueClientCert(f.tower, {
      commonName: "kubernetes-admin",
      uris: ["alpha", "beta"].map((c) =>
        bindingUri({ cluster: c, epoch: f.epochs[c], role: "admin" })
      ),
    });
    await refused(f, f.alpha, both, "certificate bound to two clusters");
    // A binding with a made-up epoch, and a perfect binding signed by another CA.
    const guessed = await issueClientCert(f.tower, {
      commonName: "kubernetes-admin",
      uris: [bindingUri({ cluster: "alpha", epoch: "A".repeat(22), role: "admin" })],
    });
    await refused(f, f.alpha, guessed, "guessed epoch");
    const otherCa = await generateCA({ commonName: "tower-ca" });
    await refused(f, f.alpha, await f.admin("alpha", otherCa), "another CA of the same name");
    // The epoch comes from the CA key: another CA's epoch for the same inputs differs.
    assert(
      credentialEpoch(otherCa, { cluster: "alpha", token: "alpha-token", generation: "" }) !==
        f.epochs.alpha,
    );
  } finally {
    await f.close();
  }
});

Deno.test("rotated credentials: older certificates are refused and their connections closed", async () => {
  const f = await fixture();
  try {
    const old = await f.admin("alpha");
    const sock = tls.connect({
      host: "127.0.0.1",
      port: f.alpha.kubernetesPort,
      ca: f.tower.certPem,
      cert: old.certPem,
      key: old.keyPem,
    });
    const watch = RawClient.of(sock);
    watch.write("GET /api/v1/namespaces?watch=true HTTP/1.1\r\nHost: x\r\n\r\n");
    assertEquals((await watch.readHead()).status, 200);
    await watch.readSome();
    // The token is rotated (or the credential generation bumped): a new epoch.
    f.epochs.alpha = credentialEpoch(f.tower, {
      cluster: "alpha",
      token: "alpha-token",
      generation: "2",
    });
    await f.alpha.revalidate();
    await deadline(watch.readToEnd(), 10_000, "the revoked certificate's watch ends");
    await watch.close();
    await refused(f, f.alpha, old, "certificate of the earlier generation");
    assertEquals((await get(f, f.alpha, await f.admin("alpha"))).status, 200);
  } finally {
    await f.close();
  }
});

/** A kubeconfig file for `cert` against `server`. */
async function kubeconfigFile(f: Fixture, server: string, cert: KeyPairPem): Promise<string> {
  const path = `${f.api.dir}/kc-${crypto.randomUUID()}`;
  await Deno.writeTextFile(
    path,
    renderKubeconfig({ cluster: "alpha", server, caPem: f.tower.certPem, ...cert }),
  );
  return path;
}

async function canI(f: Fixture, kubeconfig: string | undefined, args: string[]): Promise<string> {
  const r = await kubectl(f.api, ["auth", "can-i", ...args], { kubeconfig });
  assert(r.code === 0 || r.code === 1, r.stderr);
  return r.stdout.trim();
}

Deno.test("admin certificate: kubectl --as through the tunnel answers as straight to the member", async () => {
  const f = await fixture();
  try {
    const viaTower = await kubeconfigFile(f, f.url(f.alpha), await f.admin("alpha"));
    const cases = [
      ["create", "pods"],
      ["create", "pods", "--as=system:anonymous"],
      ["list", "secrets", "-n", "kube-system", "--as=alice", "--as-group=dev"],
      ["get", "namespaces", "--as=bob", "--as-group=system:masters"],
    ];
    const answers: string[] = [];
    for (const args of cases) {
      const direct = await canI(f, undefined, args);
      assertEquals(await canI(f, viaTower, args), direct, args.join(" "));
      answers.push(direct);
    }
    // The comparison means something only if impersonation changed the answers.
    assertEquals(answers, ["yes", "no", "no", "yes"]);
  } finally {
    await f.close();
  }
});

Deno.test("per-user certificate: requests run as its user; its own impersonation is refused", async () => {
  const f = await fixture();
  try {
    const path = `${f.api.dir}/alice.kubeconfig`;
    await Deno.writeTextFile(
      path,
      await mintUserKubeconfig({
        ca: f.tower,
        cluster: "alpha",
        token: "alpha-token",
        generation: "",
        server: f.url(f.alpha),
        user: "alice",
        groups: ["dev"],
        validityMs: 3600_000,
      }),
    );
    assertEquals(await canI(f, path, ["create", "configmaps", "-n", "default"]), "no");
    const denied = await kubectl(f.api, ["get", "configmaps", "-n", "default"], {
      kubeconfig: path,
    });
    assertEquals(denied.code, 1);
    assertMatch(denied.stderr, /User "alice" cannot list resource "configmaps"/);
    // The member's own RBAC decides: bind the user's group, and the same kubeconfig may.
    const role = await f.api.request("POST", `${RBAC}/clusterroles`, {
      metadata: { name: "everything" },
      rules: [{ apiGroups: ["*"], resources: ["*"], verbs: ["*"] }],
    });
    assertEquals(role.status, 201);
    const bind = await f.api.request("POST", `${RBAC}/namespaces/default/rolebindings`, {
      metadata: { name: "dev-everything" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "everything" },
      subjects: [{ kind: "Group", name: "dev", apiGroup: "rbac.authorization.k8s.io" }],
    });
    assertEquals(bind.status, 201);
    assertEquals(await canI(f, path, ["create", "configmaps", "-n", "default"]), "yes");
    assertEquals(await canI(f, path, ["create", "configmaps", "-n", "kube-system"]), "no");
    // A user may not become someone else through Tower, not even with kubectl's flags.
    for (const as of [["--as=kubernetes-admin"], ["--as=alice", "--as-group=system:masters"]]) {
      const r = await kubectl(f.api, ["get", "configmaps", "-n", "default", ...as], {
        kubeconfig: path,
      });
      assertEquals(r.code, 1, as.join(" "));
      assertMatch(r.stderr, /Forbidden|forbidden/);
      assertMatch(r.stderr, /impersonation is not allowed with a per-user certificate/);
    }
    // Nor on beta's endpoint: the certificate is alpha's.
    const other = (await Deno.readTextFile(path)).replace(f.url(f.alpha), f.url(f.beta));
    const otherPath = `${f.api.dir}/alice-beta.kubeconfig`;
    await Deno.writeTextFile(otherPath, other);
    const onBeta = await kubectl(f.api, ["get", "configmaps", "-n", "default"], {
      kubeconfig: otherPath,
    });
    assertEquals(onBeta.code, 1);
    assertMatch(onBeta.stderr, /Unauthorized|provide credentials/);
  } finally {
    await f.close();
  }
});
