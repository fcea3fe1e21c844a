/**
 * RBAC in the test API server, with Kubernetes semantics: how requests map
 * to verbs/resources/names, rule matching (wildcards, subresources,
 * resourceNames, non-resource URLs), Role vs ClusterRole bindings, subjects
 * (User, Group, ServiceAccount), the 403 Status, tokens and kubeconfigs for
 * other identities, the request log, and the RBAC objects' validation.
 * @module
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { type PolicyRule, ruleAllows, serviceAccountIdentity } from "./rbac.ts";
import { requestAttributes } from "./requestinfo.ts";
import { startTestApiServer, type TestApiServer } from "./server.ts";
import { httpClient, kubectl } from "./testing.ts";

type Obj = Record<string, unknown>;

const RBAC = "/apis/rbac.authorization.k8s.io/v1";
const CLUSTERS = "/apis/cluster.kubesphere.io/v1alpha1/clusters";

function attrs(method: string, path: string) {
  return requestAttributes(method, new URL(path, "https://127.0.0.1"));
}

Deno.test("request attributes: verbs, namespaces, subresources, names as the real server", () => {
  const pick = (method: string, path: string) => {
    const a = attrs(method, path);
    return [a.verb, a.group, a.resource, a.subresource, a.namespace, a.name].join("|");
  };
  assertEquals(pick("GET", "/api/v1/namespaces/ns/secrets"), "list||secrets||ns|");
  assertEquals(pick("GET", "/api/v1/namespaces/ns/secrets?watch=true"), "watch||secrets||ns|");
  assertEquals(pick("GET", "/api/v1/watch/namespaces/ns/secrets"), "watch||secrets||ns|");
  assertEquals(pick("GET", "/api/v1/namespaces/ns/secrets/a"), "get||secrets||ns|a");
  assertEquals(pick("POST", "/api/v1/namespaces/ns/secrets"), "create||secrets||ns|");
  assertEquals(pick("PUT", "/api/v1/namespaces/ns/secrets/a"), "update||secrets||ns|a");
  assertEquals(pick("PATCH", "/api/v1/namespaces/ns/secrets/a"), "patch||secrets||ns|a");
  assertEquals(pick("DELETE", "/api/v1/namespaces/ns/secrets/a"), "delete||secrets||ns|a");
  assertEquals(pick("DELETE", "/api/v1/namespaces/ns/secrets"), "deletecollection||secrets||ns|");
  assertEquals(
    pick("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Da"),
    "list||secrets||ns|a",
  );
  assertEquals(pick("GET", "/api/v1/namespaces/ns"), "get||namespaces||ns|ns");
  assertEquals(pick("PUT", "/api/v1/namespaces/ns/finalize"), "update||namespaces|finalize|ns|ns");
  assertEquals(pick("GET", "/api/v1/pods"), "list||pods|||");
  assertEquals(
    pick("PUT", "/apis/cluster.kubesphere.io/v1alpha1/clusters/alpha/status"),
    "update|cluster.kubesphere.io|clusters|status||alpha",
  );
  const nr = attrs("GET", "/apis");
  assertEquals([nr.resourceRequest, nr.verb, nr.path], [false, "get", "/apis"]);
  assertEquals(attrs("GET", "/apis/apps/v1").resourceRequest, false);
});

Deno.test("rules: verbs, groups, wildcards, subresources, resourceNames, URLs", () => {
  const r = (rule: PolicyRule, method: string, path: string) =>
    ruleAllows(rule, attrs(method, path));
  const clusters: PolicyRule = {
    apiGroups: ["cluster.kubesphere.io"],
    resources: ["clusters"],
    verbs: ["get", "update"],
  };
  assert(r(clusters, "GET", `${CLUSTERS}/a`));
  assert(r(clusters, "PUT", `${CLUSTERS}/a`));
  assert(!r(clusters, "DELETE", `${CLUSTERS}/a`), "verb not granted");
  assert(!r(clusters, "GET", CLUSTERS), "get does not grant list");
  assert(!r(clusters, "PUT", `${CLUSTERS}/a/status`), "clusters does not grant clusters/status");
  assert(!r(clusters, "GET", "/apis/other.io/v1alpha1/clusters/a"), "other group");
  const status: PolicyRule = { ...clusters, resources: ["clusters/status"] };
  assert(r(status, "PUT", `${CLUSTERS}/a/status`));
  assert(!r(status, "PUT", `${CLUSTERS}/a`), "clusters/status does not grant clusters");
  assert(r({ ...clusters, resources: ["*/status"] }, "PUT", `${CLUSTERS}/a/status`));
  assert(r({ ...clusters, resources: ["clusters/*"] }, "PUT", `${CLUSTERS}/a/status`));
  assert(r({ ...clusters, resources: ["*"] }, "PUT", `${CLUSTERS}/a/status`));
  assert(r({ apiGroups: ["*"], resources: ["*"], verbs: ["*"] }, "DELETE", `${CLUSTERS}/a`));
  const named: PolicyRule = {
    apiGroups: [""],
    resources: ["secrets"],
    resourceNames: ["tower-ca"],
    verbs: ["get", "list", "create", "watch"],
  };
  const S = "/api/v1/namespaces/ns/secrets";
  assert(r(named, "GET", `${S}/tower-ca`));
  assert(!r(named, "GET", `${S}/other`), "name not listed");
  assert(!r(named, "GET", S), "resourceNames never grant an unnamed list");
  assert(!r(named, "POST", S), "resourceNames never grant create");
  assert(r(named, "GET", `${S}?watch=true&fieldSelector=metadata.name=tower-ca`));
  const urls: PolicyRule = { nonResourceURLs: ["/healthz", "/apis/*"], verbs: ["get"] };
  assert(r(urls, "GET", "/healthz"));
  assert(r(urls, "GET", "/apis/apps/v1"));
  assert(!r(urls, "GET", "/api"));
  assert(!r(urls, "GET", `${S}/tower-ca`), "URL rules never grant resources");
  assert(!r(named, "GET", "/healthz"), "resource rules never grant URLs");
});

async function status(
  s: TestApiServer,
  client: Deno.HttpClient,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: Obj }> {
  const res = await fetch(`${s.url}${path}`, {
    method,
    client,
    headers: {
      "content-type": method === "PATCH" ? "application/merge-patch+json" : "application/json",
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {} };
}

async function mustCreate(s: TestApiServer, path: string, body: Obj): Promise<void> {
  const r = await s.request("POST", path, body);
  assertEquals(r.status, 201, r.text);
}

Deno.test("enforced RBAC: bindings, subjects, namespaces, 403 Status, audit", async () => {
  const s = await startTestApiServer({ rbac: true, namespaces: ["team-a", "team-b"] });
  const clients: Deno.HttpClient[] = [];
  const clientFor = async (cn: string, orgs: string[]) => {
    const c = httpClient(s, await s.tls.issueClient(cn, orgs));
    clients.push(c);
    return c;
  };
  try {
    // A ClusterRole for ConfigMaps, bound in team-a only (RoleBinding) to a ServiceAccount.
    await mustCreate(s, `${RBAC}/clusterroles`, {
      metadata: { name: "cm-reader" },
      rules: [{ apiGroups: [""], resources: ["configmaps"], verbs: ["get", "list"] }],
    });
    await mustCreate(s, `${RBAC}/namespaces/team-a/rolebindings`, {
      metadata: { name: "sa-reads" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "cm-reader" },
      subjects: [{ kind: "ServiceAccount", name: "bot", namespace: "team-a" }],
    });
    // A Role in team-b for a group, with resourceNames and a subresource.
    await mustCreate(s, `${RBAC}/namespaces/team-b/roles`, {
      metadata: { name: "one-secret" },
      rules: [
        { apiGroups: [""], resources: ["secrets"], resourceNames: ["s1"], verbs: ["get"] },
        { apiGroups: [""], resources: ["services/status"], verbs: ["update"] },
      ],
    });
    await mustCreate(s, `${RBAC}/namespaces/team-b/rolebindings`, {
      metadata: { name: "devs" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "one-secret" },
      subjects: [{ kind: "Group", apiGroup: "rbac.authorization.k8s.io", name: "devs" }],
    });
    // A ClusterRoleBinding for a User: list secrets everywhere.
    await mustCreate(s, `${RBAC}/clusterroles`, {
      metadata: { name: "secret-lister" },
      rules: [{ apiGroups: [""], resources: ["secrets"], verbs: ["list"] }],
    });
    await mustCreate(s, `${RBAC}/clusterrolebindings`, {
      metadata: { name: "alice" },
      roleRef: {
        apiGroup: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        name: "secret-lister",
      },
      subjects: [{ kind: "User", apiGroup: "rbac.authorization.k8s.io", name: "alice" }],
    });
    for (const ns of ["team-a", "team-b"]) {
      await mustCreate(s, `/api/v1/namespaces/${ns}/configmaps`, { metadata: { name: "c" } });
      await mustCreate(s, `/api/v1/namespaces/${ns}/secrets`, { metadata: { name: "s1" } });
      await mustCreate(s, `/api/v1/namespaces/${ns}/secrets`, { metadata: { name: "s2" } });
    }
    await mustCreate(s, "/api/v1/namespaces/team-b/services", {
      metadata: { name: "web" },
      spec: { ports: [{ port: 80 }] },
    });

    const sa = serviceAccountIdentity("team-a", "bot");
    const bot = await clientFor(sa.name, sa.groups);
    s.audit.clear();
    assertEquals(
      (await status(s, bot, "GET", "/api/v1/namespaces/team-a/configmaps/c")).status,
      200,
    );
    assertEquals((await status(s, bot, "GET", "/api/v1/namespaces/team-a/configmaps")).status, 200);
    // The RoleBinding grants only in its namespace, only the bound verbs.
    const denied = await status(s, bot, "GET", "/api/v1/namespaces/team-b/configmaps/c");
    assertEquals(denied.status, 403);
    assertEquals(denied.body.kind, "Status");
    assertEquals(denied.body.reason, "Forbidden");
    assertEquals(denied.body.code, 403);
    assertEquals(
      denied.body.message,
      'configmaps "c" is forbidden: User "system:serviceaccount:team-a:bot" cannot get ' +
        'resource "configmaps" in API group "" in the namespace "team-b"',
    );
    assertEquals(denied.body.details, { name: "c", kind: "configmaps" });
    assertEquals((await status(s, bot, "GET", "/api/v1/configmaps")).status, 403);
    const del = await status(s, bot, "DELETE", "/api/v1/namespaces/team-a/configmaps/c");
    assertEquals(del.status, 403);
    // Another ServiceAccount of the same name elsewhere is not the subject.
    const other = serviceAccountIdentity("team-b", "bot");
    const bot2 = await clientFor(other.name, other.groups);
    assertEquals(
      (await status(s, bot2, "GET", "/api/v1/namespaces/team-a/configmaps/c")).status,
      403,
    );
    // Discovery is open to every authenticated user (bootstrap system:discovery).
    assertEquals((await status(s, bot, "GET", "/apis")).status, 200);
    assertEquals((await status(s, bot, "GET", "/api/v1")).status, 200);
    // The audit log has the calls, with verbs and statuses.
    assertEquals(
      s.audit.where({ user: sa.name, resourceRequest: true }).map((e) =>
        `${e.verb} ${e.resource} ${e.namespace}/${e.name} ${e.status}`
      ),
      [
        "get configmaps team-a/c 200",
        "list configmaps team-a/ 200",
        "get configmaps team-b/c 403",
        "list configmaps / 403",
        "delete configmaps team-a/c 403",
      ],
    );
    assertEquals(s.audit.calls(sa.name), [
      "delete core/configmaps team-a/c",
      "get core/configmaps team-a/c",
      "get core/configmaps team-b/c",
      "list core/configmaps",
      "list core/configmaps team-a",
    ]);

    // Group subject, resourceNames, subresource.
    const dev = await clientFor("bob", ["devs"]);
    assertEquals((await status(s, dev, "GET", "/api/v1/namespaces/team-b/secrets/s1")).status, 200);
    assertEquals((await status(s, dev, "GET", "/api/v1/namespaces/team-b/secrets/s2")).status, 403);
    assertEquals((await status(s, dev, "GET", "/api/v1/namespaces/team-b/secrets")).status, 403);
    assertEquals((await status(s, dev, "GET", "/api/v1/namespaces/team-a/secrets/s1")).status, 403);
    const svc = (await s.request("GET", "/api/v1/namespaces/team-b/services/web")).body;
    assertEquals(
      (await status(s, dev, "PUT", "/api/v1/namespaces/team-b/services/web/status", svc)).status,
      200,
    );
    const mainPut = await status(s, dev, "PUT", "/api/v1/namespaces/team-b/services/web", svc);
    assertEquals(mainPut.status, 403);
    assertEquals(
      mainPut.body.message,
      'services "web" is forbidden: User "bob" cannot update resource "services" in API group "" ' +
        'in the namespace "team-b"',
    );
    const subDenied = await status(
      s,
      bot,
      "PUT",
      "/api/v1/namespaces/team-b/services/web/status",
      svc,
    );
    assertEquals(subDenied.status, 403);
    assert(String(subDenied.body.message).includes('cannot update resource "services/status"'));

    // User subject through a ClusterRoleBinding: every namespace and the cluster scope.
    const alice = await clientFor("alice", []);
    assertEquals((await status(s, alice, "GET", "/api/v1/namespaces/team-a/secrets")).status, 200);
    assertEquals((await status(s, alice, "GET", "/api/v1/secrets")).status, 200);
    const get = await status(s, alice, "GET", "/api/v1/namespaces/team-a/secrets/s1");
    assertEquals(get.status, 403);
    const crd = await status(s, alice, "DELETE", `${RBAC}/clusterroles/cm-reader`);
    assertEquals(
      crd.body.message,
      'clusterroles.rbac.authorization.k8s.io "cm-reader" is forbidden: User "alice" cannot ' +
        'delete resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster ' +
        "scope",
    );
    assertEquals(crd.body.details, {
      name: "cm-reader",
      group: "rbac.authorization.k8s.io",
      kind: "clusterroles",
    });
    const nr = await status(s, alice, "GET", "/metrics");
    assertEquals([nr.status, nr.body.message], [
      403,
      'forbidden: User "alice" cannot get path "/metrics"',
    ]);

    // system:masters (the admin) is always allowed; bindings change take effect at once.
    const admin = httpClient(s, "admin");
    clients.push(admin);
    assertEquals(
      (await status(s, admin, "GET", "/api/v1/namespaces/team-b/secrets/s2")).status,
      200,
    );
    assertEquals(
      (await s.request("DELETE", `${RBAC}/namespaces/team-a/rolebindings/sa-reads`)).status,
      200,
    );
    assertEquals(
      (await status(s, bot, "GET", "/api/v1/namespaces/team-a/configmaps/c")).status,
      403,
    );

    // Switched off: everything authenticated is allowed again.
    s.rbac = false;
    assertEquals((await status(s, bot, "GET", "/api/v1/namespaces/team-b/secrets/s2")).status, 200);
  } finally {
    for (const c of clients) c.close();
    await s.close();
  }
});

Deno.test("minted tokens and kubeconfigs for other identities work with kubectl", async () => {
  const s = await startTestApiServer({ rbac: true, namespaces: ["kubesphere-system"] });
  try {
    await mustCreate(s, "/apis/rbac.authorization.k8s.io/v1/namespaces/kubesphere-system/roles", {
      metadata: { name: "cm" },
      rules: [{ apiGroups: [""], resources: ["configmaps"], verbs: ["get", "list", "create"] }],
    });
    await mustCreate(
      s,
      "/apis/rbac.authorization.k8s.io/v1/namespaces/kubesphere-system/rolebindings",
      {
        metadata: { name: "cm" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "cm" },
        subjects: [{ kind: "Group", name: "system:serviceaccounts:kubesphere-system" }],
      },
    );
    for (const token of [false, true]) {
      const kc = await s.kubeconfigForServiceAccount("kubesphere-system", "tower", { token });
      const ok = await kubectl(s, ["-n", "kubesphere-system", "create", "-f", "-"], {
        kubeconfig: kc,
        stdin: JSON.stringify({
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: { name: `c-${token}` },
          data: { a: "b" },
        }),
      });
      assertEquals(ok.code, 0, ok.stderr);
      const no = await kubectl(s, ["-n", "kubesphere-system", "get", "secrets"], {
        kubeconfig: kc,
      });
      assertEquals(no.code, 1);
      assert(
        no.stderr.includes(
          'secrets is forbidden: User "system:serviceaccount:kubesphere-system:tower" cannot ' +
            'list resource "secrets" in API group "" in the namespace "kubesphere-system"',
        ),
        no.stderr,
      );
    }
    const entry = s.audit.where({ verb: "create", resource: "configmaps", status: 201 });
    assertEquals(entry.length, 2);
    assertEquals(entry[1].user, "system:serviceaccount:kubesphere-system:tower");
    assert(entry[1].groups.includes("system:serviceaccounts:kubesphere-system"));
    // A minted token authenticates; an unknown one is 401.
    const anon = httpClient(s, "none");
    try {
      const token = s.issueToken("carol", ["ops"]);
      for (const [t, want] of [[token, 403], ["nope", 401]] as const) {
        const res = await fetch(`${s.url}/api/v1/namespaces/kubesphere-system/secrets`, {
          client: anon,
          headers: { authorization: `Bearer ${t}` },
        });
        await res.body?.cancel();
        assertEquals(res.status, want);
      }
      assertEquals(s.audit.at(-2)?.user, "carol");
      assertEquals(s.audit.at(-2)?.groups, ["ops", "system:authenticated"]);
    } finally {
      anon.close();
    }
  } finally {
    await s.close();
  }
});

Deno.test("RBAC objects: served and printed, roleRef immutable, rules validated", async () => {
  const s = await startTestApiServer();
  try {
    const crb = await s.request("GET", `${RBAC}/clusterrolebindings/cluster-admin`);
    assertEquals(crb.status, 200);
    assertEquals((crb.body as Obj).subjects, [{
      apiGroup: "rbac.authorization.k8s.io",
      kind: "Group",
      name: "system:masters",
    }]);
    await mustCreate(s, `${RBAC}/namespaces/default/rolebindings`, {
      metadata: { name: "b" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "r" },
      subjects: [{ kind: "User", name: "u" }],
    });
    const changed = await s.request(
      "PATCH",
      `${RBAC}/namespaces/default/rolebindings/b`,
      { roleRef: { name: "other" } },
      "application/merge-patch+json",
    );
    assertEquals(changed.status, 422, changed.text);
    assert(String(changed.body.message).includes("cannot change roleRef"));
    const badKind = await s.request("POST", `${RBAC}/clusterrolebindings`, {
      metadata: { name: "x" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "r" },
    });
    assertEquals(badKind.status, 422);
    const noVerbs = await s.request("POST", `${RBAC}/clusterroles`, {
      metadata: { name: "x" },
      rules: [{ apiGroups: [""], resources: ["pods"] }],
    });
    assertEquals(noVerbs.status, 422);
    const urlsInRole = await s.request("POST", `${RBAC}/namespaces/default/roles`, {
      metadata: { name: "x" },
      rules: [{ nonResourceURLs: ["/x"], verbs: ["get"] }],
    });
    assertEquals(urlsInRole.status, 422);
    const table = await kubectl(s, ["get", "rolebindings", "-n", "default", "-o", "wide"]);
    assertEquals(table.code, 0, table.stderr);
    assert(/^b\s+Role\/r\s+\S+\s+u\s/m.test(table.stdout), table.stdout);
    const roles = await kubectl(s, ["get", "clusterroles", "cluster-admin"]);
    assertEquals(roles.code, 0, roles.stderr);
    assert(/CREATED AT/.test(roles.stdout), roles.stdout);
  } finally {
    await s.close();
  }
});

Deno.test("kubectl auth can-i (access reviews) and --as (impersonation) under RBAC", async () => {
  const s = await startTestApiServer({ rbac: true, namespaces: ["ns1"] });
  try {
    await mustCreate(s, `${RBAC}/namespaces/ns1/roles`, {
      metadata: { name: "r" },
      rules: [
        { apiGroups: [""], resources: ["secrets"], resourceNames: ["mine"], verbs: ["get"] },
        { apiGroups: ["apps"], resources: ["deployments", "deployments/scale"], verbs: ["patch"] },
      ],
    });
    await mustCreate(s, `${RBAC}/namespaces/ns1/rolebindings`, {
      metadata: { name: "r" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "r" },
      subjects: [{ kind: "ServiceAccount", name: "sa", namespace: "ns1" }],
    });
    const kc = await s.kubeconfigForServiceAccount("ns1", "sa");
    const canI = async (args: string[], kubeconfig?: string) => {
      const r = await kubectl(s, ["auth", "can-i", ...args], { kubeconfig });
      assert(r.code === 0 || r.code === 1, r.stderr);
      return r.stdout.trim();
    };
    assertEquals(await canI(["get", "secret/mine", "-n", "ns1"], kc), "yes");
    assertEquals(await canI(["get", "secret/other", "-n", "ns1"], kc), "no");
    assertEquals(
      await canI(["patch", "deployments.apps", "--subresource=scale", "-n", "ns1"], kc),
      "yes",
    );
    assertEquals(await canI(["delete", "deployments.apps", "-n", "ns1"], kc), "no");
    // SubjectAccessReview as the admin, for the ServiceAccount.
    assertEquals(
      await canI(["get", "secret/mine", "-n", "ns1", "--as=system:serviceaccount:ns1:sa"]),
      "yes",
    );
    assertEquals(
      await canI(["list", "secrets", "-n", "ns1", "--as=system:serviceaccount:ns1:sa"]),
      "no",
    );
    const list = await kubectl(s, ["auth", "can-i", "--list", "-n", "ns1"], { kubeconfig: kc });
    assertEquals(list.code, 0, list.stderr);
    assert(/secrets\s+\[\]\s+\[mine\]\s+\[get\]/.test(list.stdout), list.stdout);
    // Impersonation: the admin may; the ServiceAccount may not (403 on users).
    const asSa = await kubectl(s, [
      "get",
      "secrets",
      "-n",
      "ns1",
      "--as=system:serviceaccount:ns1:sa",
    ]);
    assertEquals(asSa.code, 1);
    assert(asSa.stderr.includes('User "system:serviceaccount:ns1:sa" cannot list'), asSa.stderr);
    assertEquals(s.audit.at(-1)?.user, "system:serviceaccount:ns1:sa");
    assertEquals(s.audit.at(-1)?.impersonatedBy, "kubernetes-admin");
    assertEquals(s.audit.at(-1)?.groups, [
      "system:serviceaccounts",
      "system:serviceaccounts:ns1",
      "system:authenticated",
    ]);
    const escalate = await kubectl(s, [
      "get",
      "secrets",
      "--as=kubernetes-admin",
      "--as-group=system:masters",
    ], {
      kubeconfig: kc,
    });
    assertEquals(escalate.code, 1);
    assert(
      escalate.stderr.includes(
        'users "kubernetes-admin" is forbidden: User "system:serviceaccount:ns1:sa" cannot ' +
          'impersonate resource "users" in API group "" at the cluster scope',
      ),
      escalate.stderr,
    );
  } finally {
    await s.close();
  }
});
