/**
 * The deployment manifests render with the real `kubectl kustomize` and keep
 * the properties operators rely on (non-root, read-only root FS, probes on
 * the metrics port, least-privilege RBAC); the real `kubectl apply -k`
 * applies them to the test API server, and with RBAC enforced the proxy's
 * ServiceAccount can make exactly the calls its rules allow.
 * @module
 */

import { parseAllDocuments } from "yaml";
import { startTestApiServer, type TestApiServer } from "./apiserver/server.ts";
import { deadline, httpClient, kubectl, watchEvents } from "./apiserver/testing.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { denoRun, freePort, run } from "./helpers/proc.ts";

interface Obj {
  kind: string;
  metadata: { name: string; namespace?: string };
  // deno-lint-ignore no-explicit-any
  spec?: any;
  // deno-lint-ignore no-explicit-any
  rules?: any[];
}

async function render(dir: string): Promise<Obj[]> {
  const r = await run("kubectl", ["kustomize", dir]);
  assertEquals(r.code, 0, r.stderr);
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Obj).filter(Boolean);
}

Deno.test("deploy/proxy renders: hardened Deployment, probes, PDB, least-privilege RBAC", async () => {
  const objs = await render("deploy/proxy");
  const kinds = objs.map((o) => o.kind).sort();
  assertEquals(kinds, [
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "Namespace",
    "PodDisruptionBudget",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
  ]);
  const dep = objs.find((o) => o.kind === "Deployment")!;
  assertEquals(dep.metadata.namespace, "kubesphere-system");
  const pod = dep.spec.template.spec;
  assertEquals(pod.securityContext.runAsNonRoot, true);
  const c = pod.containers[0];
  assertEquals(c.securityContext.readOnlyRootFilesystem, true);
  assertEquals(c.securityContext.allowPrivilegeEscalation, false);
  assertEquals(c.livenessProbe.httpGet.path, "/healthz");
  assertEquals(c.readinessProbe.httpGet.path, "/readyz");
  assert(c.resources.requests && c.resources.limits);
  // The agent Service selects the proxy pods by these labels.
  assertEquals(dep.spec.template.metadata.labels.app, "tower");
  assertEquals(dep.spec.template.metadata.labels["app.kubernetes.io/name"], "tower");
  // Active-active: three replicas, spread over nodes, two kept through disruptions.
  assertEquals(dep.spec.replicas, 3);
  const anti = pod.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0];
  assertEquals(anti.podAffinityTerm.topologyKey, "kubernetes.io/hostname");
  assertEquals(anti.podAffinityTerm.labelSelector.matchLabels.app, "tower");
  const pdb = objs.find((o) => o.kind === "PodDisruptionBudget")!;
  assertEquals(pdb.spec.minAvailable, 2);
  // The replica's identity from the downward API.
  const env = Object.fromEntries(
    (c.env as { name: string; valueFrom: { fieldRef: { fieldPath: string } } }[]).map((
      e,
    ) => [e.name, e.valueFrom.fieldRef.fieldPath]),
  );
  assertEquals(env, {
    POD_NAME: "metadata.name",
    POD_NAMESPACE: "metadata.namespace",
    POD_IP: "status.podIP",
  });
  // EndpointSlices and Pods only in the proxy's namespace (a Role), never cluster-wide.
  const clusterRole = objs.find((o) => o.kind === "ClusterRole")!;
  for (const r of clusterRole.rules ?? []) {
    assert(!r.resources.includes("endpointslices") && !r.resources.includes("pods"));
  }
  const role = objs.find((o) => o.kind === "Role")!;
  assertEquals(role.metadata.namespace, "kubesphere-system");
  const rule = (res: string) => role.rules!.find((r) => r.resources.includes(res));
  assertEquals(rule("endpointslices").verbs.sort(), [
    "create",
    "delete",
    "get",
    "list",
    "update",
    "watch",
  ]);
  assertEquals(rule("pods").verbs, ["get"]);
  // No wildcard anywhere in RBAC.
  for (const role of objs.filter((o) => o.kind.endsWith("Role"))) {
    for (const rule of role.rules ?? []) {
      for (const field of ["apiGroups", "resources", "verbs"]) {
        assert(!rule[field].includes("*"), `${role.kind}/${role.metadata.name} uses * in ${field}`);
      }
    }
  }
});

Deno.test("deploy/agent renders: token and pinned fingerprint from a Secret, a narrow Role for the known-proxy Secret", async () => {
  const objs = await render("deploy/agent");
  const dep = objs.find((o) => o.kind === "Deployment")!;
  const args: string[] = dep.spec.template.spec.containers[0].args;
  assert(args.includes("--token-file=/etc/tower/token"));
  assert(!args.some((a) => a.startsWith("--token=")));
  // The agent pins the proxy's host key: the fingerprint sits beside the token.
  assert(args.includes("--proxy-fingerprint-file=/etc/tower/proxy-fingerprint"));
  assert(!args.includes("--insecure-accept-any-proxy-key"));
  const mount = dep.spec.template.spec.containers[0].volumeMounts[0];
  const volume = dep.spec.template.spec.volumes.find((v: { name: string }) =>
    v.name === mount.name
  );
  assertEquals(mount.mountPath, "/etc/tower");
  assertEquals(volume.secret.secretName, "tower-agent");
  assertEquals(volume.secret.items, [
    { key: "token", path: "token" },
    { key: "proxy-fingerprint", path: "proxy-fingerprint" },
  ]);
  const secret = objs.find((o) => o.kind === "Secret" && o.metadata.name === "tower-agent") as
    & Obj
    & { stringData: Record<string, string> };
  assertEquals(secret.stringData, {
    "proxy-fingerprint": "REPLACE-WITH-THE-PROXY-FINGERPRINT",
    token: "REPLACE-WITH-THE-CLUSTER-TOKEN",
  });
  // Where an unpinned agent records the key on first use: shipped empty, so no right to create.
  const known = objs.find((o) => o.metadata.name === "tower-agent-known-proxy") as
    & Obj
    & { data?: unknown; stringData?: unknown };
  assertEquals([known.kind, known.data, known.stringData], ["Secret", undefined, undefined]);
  const role = objs.find((o) => o.kind === "Role")!;
  assertEquals(role.rules, [{
    apiGroups: [""],
    resources: ["secrets"],
    resourceNames: ["tower-agent-known-proxy"],
    verbs: ["get", "update"],
  }]);
  const binding = objs.find((o) => o.kind === "RoleBinding")!;
  assertEquals(binding.metadata.namespace, "kubesphere-system");
  assertEquals(
    (binding as unknown as { roleRef: { kind: string; name: string } }).roleRef.name,
    role.metadata.name,
  );
});

/** Install the CRD, then `kubectl apply -k` both overlays as the admin. */
async function applyAll(s: TestApiServer): Promise<void> {
  const crd = await run("kubectl", ["kustomize", "crd"]);
  assertEquals(crd.code, 0, crd.stderr);
  const c = await kubectl(s, ["apply", "-f", "-"], { stdin: crd.stdout });
  assertEquals(c.code, 0, c.stderr);
  const want: Record<string, string[]> = {
    "deploy/proxy": [
      "serviceaccount/tower created",
      "role.rbac.authorization.k8s.io/tower created",
      "clusterrole.rbac.authorization.k8s.io/tower created",
      "rolebinding.rbac.authorization.k8s.io/tower created",
      "clusterrolebinding.rbac.authorization.k8s.io/tower created",
      "service/tower created",
      "deployment.apps/tower created",
      "poddisruptionbudget.policy/tower created",
    ],
    "deploy/agent": [
      "serviceaccount/tower-agent created",
      "role.rbac.authorization.k8s.io/tower-agent created",
      "rolebinding.rbac.authorization.k8s.io/tower-agent created",
      "clusterrolebinding.rbac.authorization.k8s.io/tower-agent created",
      "secret/tower-agent created",
      "secret/tower-agent-known-proxy created",
      "deployment.apps/tower-agent created",
    ],
  };
  for (const [dir, lines] of Object.entries(want)) {
    const r = await kubectl(s, ["apply", "-k", dir]);
    assertEquals(r.code, 0, r.stderr);
    for (const l of lines) assert(r.stdout.includes(l), `${dir}: no "${l}" in:\n${r.stdout}`);
  }
}

Deno.test("kubectl apply -k deploy/proxy and deploy/agent apply cleanly and again", async () => {
  const s = await startTestApiServer();
  try {
    await applyAll(s);
    const dep = "/apis/apps/v1/namespaces/kubesphere-system/deployments/tower";
    const before = (await s.request("GET", dep)).body;
    assertEquals(before.metadata.generation, 1);
    assertEquals((before as Record<string, unknown>).status, {});
    const rv = new Map<string, string>();
    const paths = [
      dep,
      "/apis/apps/v1/namespaces/kubesphere-system/deployments/tower-agent",
      "/apis/policy/v1/namespaces/kubesphere-system/poddisruptionbudgets/tower",
      "/apis/rbac.authorization.k8s.io/v1/clusterroles/tower",
      "/apis/rbac.authorization.k8s.io/v1/namespaces/kubesphere-system/roles/tower",
      "/api/v1/namespaces/kubesphere-system/services/tower",
      "/api/v1/namespaces/kubesphere-system/secrets/tower-agent",
    ];
    // What an agent records on first use (a PUT of the shipped Secret) survives re-applying.
    const known = "/api/v1/namespaces/kubesphere-system/secrets/tower-agent-known-proxy";
    const recorded = {
      known_proxies: btoa("ws://tower.example.com:8080/ SHA256:" + "a".repeat(43) + "\n"),
    };
    const shipped = (await s.request("GET", known)).body;
    assertEquals((await s.request("PUT", known, { ...shipped, data: recorded })).status, 200);
    paths.push(known);
    for (const p of paths) rv.set(p, (await s.request("GET", p)).body.metadata.resourceVersion!);
    // Applying again changes nothing (kubectl may still say "configured" where its patch
    // re-sends a replace-strategy field or stringData, as against a real server).
    for (const dir of ["deploy/proxy", "deploy/agent"]) {
      const r = await kubectl(s, ["apply", "-k", dir]);
      assertEquals(r.code, 0, r.stderr);
      assert(!r.stdout.includes("created"), r.stdout);
    }
    for (const p of paths) {
      assertEquals((await s.request("GET", p)).body.metadata.resourceVersion, rv.get(p), p);
    }
    assertEquals((await s.request("GET", known)).body.data, recorded);
    // A spec change bumps the Deployment's generation; observedGeneration is the controller's.
    const scaled = await kubectl(s, [
      "-n",
      "kubesphere-system",
      "patch",
      "deployment",
      "tower",
      "-p",
      '{"spec":{"replicas":5}}',
    ]);
    assertEquals(scaled.code, 0, scaled.stderr);
    const after = (await s.request("GET", dep)).body as Record<string, unknown>;
    assertEquals((after.metadata as { generation: number }).generation, 2);
    assertEquals(after.status, {});
    const table = await kubectl(s, ["-n", "kubesphere-system", "get", "deploy,pdb,sa,role"]);
    assertEquals(table.code, 0, table.stderr);
    assert(/deployment\.apps\/tower\s+0\/5\s+0\s+0\s/.test(table.stdout), table.stdout);
    assert(/poddisruptionbudget\.policy\/tower\s+2\s+N\/A\s+0\s/.test(table.stdout), table.stdout);
  } finally {
    await s.close();
  }
});

Deno.test("RBAC enforced: the tower ServiceAccount can do what deploy/proxy grants, no more", async () => {
  const s = await startTestApiServer({ rbac: true });
  const admin = httpClient(s, "admin");
  const tower = httpClient(
    s,
    await s.tls.issueClient(
      "system:serviceaccount:kubesphere-system:tower",
      ["system:serviceaccounts", "system:serviceaccounts:kubesphere-system"],
    ),
  );
  const call = async (client: Deno.HttpClient, method: string, path: string, body?: unknown) => {
    const res = await fetch(`${s.url}${path}`, {
      method,
      client,
      headers: {
        "content-type": method === "PATCH" ? "application/merge-patch+json" : "application/json",
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    // A watch answers one JSON event per line: the first is enough here.
    return { status: res.status, body: text ? JSON.parse(text.split("\n")[0]) : {} };
  };
  try {
    await applyAll(s);
    const CL = "/apis/cluster.kubesphere.io/v1alpha1/clusters";
    const NS = "/api/v1/namespaces/kubesphere-system";
    const LEASES = "/apis/coordination.k8s.io/v1/namespaces/kubesphere-system/leases";
    for (
      const [path, body] of [
        [CL, {
          apiVersion: "cluster.kubesphere.io/v1alpha1",
          kind: "Cluster",
          metadata: { name: "alpha" },
        }],
        [`${NS}/secrets`, { metadata: { name: "someone-elses" }, stringData: { k: "v" } }],
        [LEASES, { metadata: { name: "other" }, spec: {} }],
      ] as const
    ) {
      assertEquals((await call(admin, "POST", path, body)).status, 201, path);
    }
    s.audit.clear();
    const alpha = (await call(admin, "GET", `${CL}/alpha`)).body as {
      metadata: Record<string, unknown>;
    };
    const labelled = { ...alpha, metadata: { ...alpha.metadata, labels: { a: "b" } } };
    const allowed: [string, string, unknown?][] = [
      ["GET", CL],
      ["GET", `${CL}?watch=true&timeoutSeconds=1`],
      ["GET", `${CL}/alpha`],
      ["PUT", `${CL}/alpha`, labelled],
      ["POST", `${NS}/secrets`, { metadata: { name: "tower-ca" }, stringData: { "ca.crt": "x" } }],
      ["GET", `${NS}/secrets/tower-ca`],
      ["POST", `${NS}/services`, {
        metadata: { name: "mc-alpha" },
        spec: { ports: [{ port: 80 }] },
      }],
      ["GET", `${NS}/services`],
      ["DELETE", `${NS}/services/mc-alpha`],
      ["POST", LEASES, { metadata: { name: "tower" }, spec: { holderIdentity: "p-0" } }],
      ["GET", `${LEASES}/tower`],
      // Replica Leases: any name (tower-replica-<pod>), read by every replica, reaped when dead.
      ["GET", `${LEASES}?watch=true&timeoutSeconds=1`],
      ["DELETE", `${LEASES}/other`],
      ["POST", `/apis/discovery.k8s.io/v1/namespaces/kubesphere-system/endpointslices`, {
        metadata: {
          name: "mc-alpha-0123456789",
          labels: { "kubernetes.io/service-name": "mc-alpha" },
        },
        addressType: "IPv4",
        endpoints: [{ addresses: ["10.0.0.7"] }],
        ports: [{ name: "kubesphere", port: 16001, protocol: "TCP" }],
      }],
      [
        "GET",
        `/apis/discovery.k8s.io/v1/namespaces/kubesphere-system/endpointslices?watch=true&timeoutSeconds=1`,
      ],
      [
        "DELETE",
        `/apis/discovery.k8s.io/v1/namespaces/kubesphere-system/endpointslices/mc-alpha-0123456789`,
      ],
      ["GET", `${NS}/pods/nonexistent-but-allowed`],
      ["POST", "/api/v1/namespaces/default/events", {
        metadata: { name: "alpha.1" },
        involvedObject: { kind: "Cluster", name: "alpha" },
        reason: "Test",
        message: "m",
      }],
    ];
    for (const [method, path, body] of allowed) {
      const r = await call(tower, method, path, body);
      const allowed = r.status < 300 || (r.status === 404 && path.includes("nonexistent"));
      assert(allowed, `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
    }
    const denied: [string, string, unknown?][] = [
      ["DELETE", `${CL}/alpha`],
      ["POST", CL, {
        apiVersion: "cluster.kubesphere.io/v1alpha1",
        kind: "Cluster",
        metadata: { name: "b" },
      }],
      ["GET", `${NS}/secrets/someone-elses`],
      ["GET", `${NS}/secrets`],
      ["DELETE", `${NS}/secrets/tower-ca`],
      ["GET", "/api/v1/namespaces/kube-system/secrets/anything"],
      ["GET", "/api/v1/namespaces/default/services"],
      ["GET", "/api/v1/namespaces/default/configmaps"],
      ["GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"],
      ["GET", "/apis/discovery.k8s.io/v1/endpointslices"],
      ["GET", `${NS}/pods`],
      ["DELETE", `${NS}/pods/tower-0`],
      ["GET", "/apis/apps/v1/namespaces/kubesphere-system/deployments/tower"],
    ];
    for (const [method, path, body] of denied) {
      const r = await call(tower, method, path, body);
      assertEquals(r.status, 403, `${method} ${path}: ${JSON.stringify(r.body)}`);
      assertEquals(r.body.reason, "Forbidden");
    }
    const del = await call(tower, "DELETE", `${CL}/alpha`);
    assertEquals(
      del.body.message,
      'clusters.cluster.kubesphere.io "alpha" is forbidden: User ' +
        '"system:serviceaccount:kubesphere-system:tower" cannot delete resource "clusters" in ' +
        'API group "cluster.kubesphere.io" at the cluster scope',
    );
    // The request log lists the ServiceAccount's calls and their outcome.
    const me = "system:serviceaccount:kubesphere-system:tower";
    assertEquals(s.audit.where({ user: me }).length, allowed.length + denied.length + 1);
    assert(s.audit.calls(me).includes("watch cluster.kubesphere.io/clusters"));
    assertEquals(s.audit.where({ user: me, verb: "delete", resource: "clusters" })[0].status, 403);
    // Real kubectl with the ServiceAccount's kubeconfig (discovery is open to it).
    const kc = await s.kubeconfigForServiceAccount("kubesphere-system", "tower", { token: true });
    const get = await kubectl(s, ["get", "clusters"], { kubeconfig: kc });
    assertEquals(get.code, 0, get.stderr);
    assert(get.stdout.includes("alpha"), get.stdout);
    const rm = await kubectl(s, ["delete", "cluster", "alpha"], { kubeconfig: kc });
    assertEquals(rm.code, 1);
    assert(rm.stderr.includes("is forbidden"), rm.stderr);
    // The agent's ServiceAccount (bound to cluster-admin by deploy/agent) may do anything.
    const agentKc = await s.kubeconfigForServiceAccount("kubesphere-system", "tower-agent");
    const all = await kubectl(s, ["get", "secrets", "-A"], { kubeconfig: agentKc });
    assertEquals(all.code, 0, all.stderr);
    assert(all.stdout.includes("someone-elses"), all.stdout);
  } finally {
    admin.close();
    tower.close();
    await s.close();
  }
});

Deno.test("the real proxy runs as the tower ServiceAccount under deploy/proxy's RBAC: no 403", async () => {
  const s = await startTestApiServer({ rbac: true });
  const admin = httpClient(s, "admin");
  const me = "system:serviceaccount:kubesphere-system:tower";
  const CL = "/apis/cluster.kubesphere.io/v1alpha1/clusters";
  let proxy: ReturnType<typeof denoRun> | undefined;
  const ac = new AbortController();
  try {
    await applyAll(s);
    const created = await s.request("POST", CL, {
      apiVersion: "cluster.kubesphere.io/v1alpha1",
      kind: "Cluster",
      metadata: { name: "alpha" },
      spec: { joinFederation: true, connection: { type: "proxy", token: "" } },
    });
    assertEquals(created.status, 201, created.text);
    // Follow the controller's Services (as the admin) to know when it acted.
    const res = await fetch(
      `${s.url}/api/v1/namespaces/kubesphere-system/services?watch=true`,
      { client: admin, signal: ac.signal },
    );
    const events = watchEvents(res.body!);
    const seen = async (type: string, name: string) => {
      // next() by hand: leaving a for-await loop would close the watch.
      for (let i = 0; i < 1000; i++) {
        const { done, value: e } = await events.next();
        if (done) break;
        const m = e.object.metadata as { name?: string } | undefined;
        if (e.type === type && m?.name === name) return;
      }
      throw new Error(`watch ended before ${type} ${name}`);
    };
    // Its Pod, as the Deployment makes it (the replica reads it once: the owner of its slices).
    const pod = await s.request("POST", "/api/v1/namespaces/kubesphere-system/pods", {
      metadata: { name: "tower-0", labels: { app: "tower" } },
      spec: { containers: [{ name: "proxy", image: "kubesphere/tower" }] },
    });
    assertEquals(pod.status, 201, pod.text);
    s.audit.clear();
    const kc = await s.kubeconfigForServiceAccount("kubesphere-system", "tower");
    proxy = denoRun("proxy", "proxy.ts", [
      `--kubeconfig=${kc}`,
      "--leader-elect",
      "--host=127.0.0.1",
      `--port=${freePort()}`,
      "--metrics-address=",
      "--pod-name=tower-0",
      "--pod-ip=10.244.0.7",
    ], { POD_NAMESPACE: "kubesphere-system" });
    await deadline(seen("ADDED", "mc-alpha"), 30_000, `Service mc-alpha; proxy:\n${proxy.tail()}`);
    assertEquals((await s.request("DELETE", `${CL}/alpha`)).status, 200);
    await deadline(seen("DELETED", "mc-alpha"), 30_000, `mc-alpha deleted; ${proxy.tail()}`);
    await proxy.stop();
    const denied = s.audit.where({ user: me, status: 403 });
    assertEquals(denied, [], `tower was refused:\n${proxy.tail()}`);
    const calls = s.audit.calls(me);
    for (
      const c of [
        "watch cluster.kubesphere.io/clusters",
        "update cluster.kubesphere.io/clusters alpha",
        "create core/services kubesphere-system",
        "delete core/services kubesphere-system/mc-alpha",
        "update coordination.k8s.io/leases kubesphere-system/tower",
        "get core/pods kubesphere-system/tower-0",
        "watch discovery.k8s.io/endpointslices kubesphere-system",
        "watch coordination.k8s.io/leases kubesphere-system",
        "create coordination.k8s.io/leases kubesphere-system",
        "delete coordination.k8s.io/leases kubesphere-system/tower-replica-tower-0",
      ]
    ) assert(calls.includes(c), `no "${c}" in:\n${calls.join("\n")}`);
  } finally {
    ac.abort();
    if (proxy && !proxy.exited) await proxy.stop();
    admin.close();
    await s.close();
  }
});
