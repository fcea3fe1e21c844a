/**
 * The deployment manifests render with the real `kubectl kustomize` and keep
 * the properties operators rely on (non-root, read-only root FS, probes on
 * the metrics port, least-privilege RBAC).
 */

import { parseAllDocuments } from "yaml";
import { assert, assertEquals } from "./helpers/assert.ts";
import { run } from "./helpers/proc.ts";

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
  // The mc-<name> Services select the proxy pods by these labels (SPEC §3).
  assertEquals(dep.spec.template.metadata.labels.app, "tower");
  assertEquals(dep.spec.template.metadata.labels["app.kubernetes.io/name"], "tower");
  // No wildcard anywhere in RBAC.
  for (const role of objs.filter((o) => o.kind.endsWith("Role"))) {
    for (const rule of role.rules ?? []) {
      for (const field of ["apiGroups", "resources", "verbs"]) {
        assert(!rule[field].includes("*"), `${role.kind}/${role.metadata.name} uses * in ${field}`);
      }
    }
  }
});

Deno.test("deploy/agent renders: token from a Secret, not on the command line", async () => {
  const objs = await render("deploy/agent");
  const dep = objs.find((o) => o.kind === "Deployment")!;
  const args: string[] = dep.spec.template.spec.containers[0].args;
  assert(args.includes("--token-file=/etc/tower/token"));
  assert(!args.some((a) => a.startsWith("--token=")));
  assert(objs.some((o) => o.kind === "Secret" && o.metadata.name === "tower-agent"));
});
