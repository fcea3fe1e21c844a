/**
 * The agent's `config` from each credential form (what the proxy will present to the member
 * API server), in-cluster credentials, and exec plugins run again before a connection only once
 * their credential has expired. That the proxy then authenticates with them is proved end to end
 * in tests/e2e/agent_credentials_test.ts.
 * @module
 */

import nodeAssert from "node:assert/strict";
import { buildAgentConfig } from "../../lib/agent/member_config.ts";
import { clearExecCredentialCache } from "../../lib/kube/exec_credential.ts";
import { startTestApiServer } from "../apiserver/server.ts";
import {
  execCredential,
  execUser,
  kubeconfigYaml,
  writeExecPlugin,
  writeShapes,
} from "../kube/kubeconfig_shapes.ts";

const text = (b?: Uint8Array) => (b ? new TextDecoder().decode(b) : undefined);
const input = (kubeconfig: string) => ({
  name: "alpha",
  token: "t0k3n",
  kubeconfig,
  kubernetesService: "kubernetes.default.svc",
  kubesphereService: "ks-apiserver.kubesphere-system.svc",
});

Deno.test("agent config: every kubeconfig credential form", async () => {
  const s = await startTestApiServer();
  const dir = await Deno.makeTempDir({ prefix: "tower-member-config-" });
  clearExecCredentialCache();
  try {
    const shapes = Object.fromEntries(
      (await writeShapes(s, dir)).map((sh) => [sh.user, sh.path]),
    );
    const cfg = async (user: string) => await buildAgentConfig(input(shapes[user]));
    const admin = await cfg("kubernetes-admin");
    nodeAssert.equal(admin.KubernetesSvcHost, `127.0.0.1:${s.port}`);
    nodeAssert.equal(admin.KubeSphereSvcHost, "ks-apiserver.kubesphere-system.svc:80");
    nodeAssert.equal(text(admin.CAData), s.caPem);
    nodeAssert.equal(text(admin.CertData), s.tls.adminCertPem);
    nodeAssert.equal(text(admin.KeyData), s.tls.adminKeyPem);
    nodeAssert.equal(admin.BearerToken, undefined);

    const files = await cfg("files-user");
    nodeAssert.equal(text(files.CAData), s.caPem);
    nodeAssert.equal(text(files.CertData), await Deno.readTextFile(`${dir}/pki/user.crt`));
    nodeAssert.equal(text(files.KeyData), await Deno.readTextFile(`${dir}/pki/user.key`));

    for (const user of ["token-user", "token-file-user", "exec-token-user"]) {
      const c = await cfg(user);
      nodeAssert.equal(c.CertData, undefined, user);
      nodeAssert.match(text(c.BearerToken) ?? "", /^[0-9a-f]{48}$/, user);
      nodeAssert.equal(text(c.CAData), s.caPem, user);
    }
    const execCert = await cfg("exec-cert-user");
    nodeAssert.match(text(execCert.CertData) ?? "", /BEGIN CERTIFICATE/);
    nodeAssert.match(text(execCert.KeyData) ?? "", /PRIVATE KEY/);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await s.close();
  }
});

Deno.test("agent config: an exec plugin runs again before a connection only once expired", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tower-member-config-" });
  clearExecCredentialCache();
  try {
    const kubeconfigFor = async (name: string, expirationTimestamp: string) => {
      const plugin = await writeExecPlugin(
        dir,
        name,
        execCredential({ token: `${name}-token`, expirationTimestamp }),
      );
      const path = `${dir}/${name}.yaml`;
      await Deno.writeTextFile(
        path,
        kubeconfigYaml("https://10.0.0.1:6443", execUser(plugin.command), {}),
      );
      return { path, plugin };
    };
    const expired = await kubeconfigFor("expired", "2001-01-01T00:00:00Z");
    const valid = await kubeconfigFor("valid", "2999-01-01T00:00:00Z");
    for (let i = 1; i <= 3; i++) {
      const a = await buildAgentConfig(input(expired.path));
      nodeAssert.equal(text(a.BearerToken), "expired-token");
      nodeAssert.equal(a.KubernetesSvcHost, "10.0.0.1:6443");
      nodeAssert.equal(await expired.plugin.runs(), i);
      const b = await buildAgentConfig(input(valid.path));
      nodeAssert.equal(text(b.BearerToken), "valid-token");
      nodeAssert.equal(await valid.plugin.runs(), 1);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("agent config: in-cluster service account", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tower-member-config-" });
  try {
    await Deno.writeTextFile(`${dir}/ca.crt`, "CA");
    await Deno.writeTextFile(`${dir}/token`, "sa-token\n");
    const vars: Record<string, string> = {
      KUBERNETES_SERVICE_HOST: "10.96.0.1",
      KUBERNETES_SERVICE_PORT: "443",
    };
    const c = await buildAgentConfig({
      ...input(""),
      serviceAccountDir: dir,
      env: (n) => vars[n],
    });
    nodeAssert.equal(c.KubernetesSvcHost, "10.96.0.1:443");
    nodeAssert.equal(text(c.BearerToken), "sa-token");
    nodeAssert.equal(text(c.CAData), "CA");
    const noEnv = await buildAgentConfig({ ...input(""), serviceAccountDir: dir, env: () => "" });
    nodeAssert.equal(noEnv.KubernetesSvcHost, "kubernetes.default.svc:443");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
