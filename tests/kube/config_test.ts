/**
 * Credentials from kubeconfig files and the in-cluster service account,
 * proven by authenticated calls to the test API server: client certificate
 * (embedded and file paths), bearer token, token file (in-cluster), exec
 * plugin; and clear errors for unusable configurations.
 * @module
 */

import nodeAssert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { stringify } from "yaml";
import {
  KubeApiError,
  KubeClient,
  type KubeConnection,
  loadKubeConnection,
  NAMESPACES,
} from "../../lib/kube/mod.ts";
import { startEnv } from "./helpers.ts";

const b64 = (s: string) => Buffer.from(s).toString("base64");

function kubeconfig(
  server: string,
  user: Record<string, unknown>,
  cluster: Record<string, unknown>,
) {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "c", cluster: { server, ...cluster } }],
    users: [{ name: "u", user }],
    contexts: [
      { name: "ctx", context: { cluster: "c", user: "u", namespace: "team" } },
      { name: "other", context: { cluster: "c", user: "u" } },
    ],
    "current-context": "ctx",
  });
}

async function canList(conn: KubeConnection): Promise<void> {
  try {
    const l = await new KubeClient(conn, { retries: 0 }).list(NAMESPACES);
    nodeAssert.ok(l.items.some((n) => n.metadata.name === "default"));
  } finally {
    conn.close();
  }
}

Deno.test("loadKubeConnection: every kind of user authenticates against the test API server", async (t) => {
  const env = await startEnv({ tokens: ["static-token", "exec-token", "file-token"] });
  const s = env.server;
  const dir = await Deno.makeTempDir({ prefix: "tower-kubeconfig-test-" });
  const write = async (name: string, text: string) => {
    await Deno.writeTextFile(`${dir}/${name}`, text);
    return `${dir}/${name}`;
  };
  try {
    await t.step("the server's admin kubeconfig (client certificate)", async () => {
      const conn = await loadKubeConnection(s.kubeconfigPath);
      nodeAssert.equal(conn.server, s.url);
      nodeAssert.ok(conn.httpClient);
      await canList(conn);
    });

    await t.step("certificate files relative to the kubeconfig; context namespace", async () => {
      await write("ca.crt", s.caPem);
      await write("admin.crt", s.tls.adminCertPem);
      await write("admin.key", s.tls.adminKeyPem);
      const path = await write(
        "files.yaml",
        kubeconfig(s.url, { "client-certificate": "admin.crt", "client-key": "admin.key" }, {
          "certificate-authority": "ca.crt",
        }),
      );
      const conn = await loadKubeConnection(path);
      nodeAssert.equal(conn.namespace, "team");
      await canList(conn);
      const other = await loadKubeConnection(path, { context: "other" });
      nodeAssert.equal(other.namespace, "default");
      other.close();
    });

    await t.step("bearer token; a wrong token is 401", async () => {
      const ca = { "certificate-authority-data": b64(s.caPem) };
      const conn = await loadKubeConnection(
        await write("token.yaml", kubeconfig(s.url, { token: "static-token" }, ca)),
      );
      nodeAssert.equal((await conn.headers()).Authorization, "Bearer static-token");
      await canList(conn);
      const bad = await loadKubeConnection(
        await write("bad.yaml", kubeconfig(s.url, { token: "nope" }, ca)),
      );
      const err = await new KubeClient(bad, { retries: 0 }).list(NAMESPACES).catch((e) => e);
      bad.close();
      nodeAssert.ok(err instanceof KubeApiError && err.status === 401, String(err));
    });

    await t.step("exec credential plugin", async () => {
      const plugin = await write(
        "plugin.sh",
        `#!/bin/sh\necho '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"exec-token"}}'\n`,
      );
      await Deno.chmod(plugin, 0o755);
      const conn = await loadKubeConnection(
        await write(
          "exec.yaml",
          kubeconfig(s.url, {
            exec: {
              apiVersion: "client.authentication.k8s.io/v1",
              command: plugin,
              interactiveMode: "Never",
            },
          }, { "certificate-authority-data": b64(s.caPem) }),
        ),
      );
      nodeAssert.equal((await conn.headers()).Authorization, "Bearer exec-token");
      await canList(conn);
    });

    await t.step(
      "in-cluster: service host/port env, token file and CA under the prefix",
      async () => {
        const sa = `${dir}/incluster/var/run/secrets/kubernetes.io/serviceaccount`;
        await Deno.mkdir(sa, { recursive: true });
        await Deno.writeTextFile(`${sa}/ca.crt`, s.caPem);
        await Deno.writeTextFile(`${sa}/token`, "file-token\n");
        await Deno.writeTextFile(`${sa}/namespace`, "kubesphere-system");
        const saved = ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"].map((k) =>
          [k, Deno.env.get(k)] as const
        );
        try {
          Deno.env.delete("KUBERNETES_SERVICE_HOST");
          await nodeAssert.rejects(loadKubeConnection(""), /in-cluster config: .*not set/);
          Deno.env.set("KUBERNETES_SERVICE_HOST", "127.0.0.1");
          Deno.env.set("KUBERNETES_SERVICE_PORT", String(s.port));
          const conn = await loadKubeConnection("", { inClusterPathPrefix: `${dir}/incluster` });
          nodeAssert.equal(conn.server, `https://127.0.0.1:${s.port}`);
          nodeAssert.equal((await conn.headers()).Authorization, "Bearer file-token");
          await canList(conn);
        } finally {
          for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
        }
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
    await env.close();
  }
});

Deno.test("loadKubeConnection: clear errors for unusable configurations", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tower-kubeconfig-test-" });
  try {
    await nodeAssert.rejects(loadKubeConnection(`${dir}/missing`), /kubeconfig .*missing: /);
    const insecure = `${dir}/insecure.yaml`;
    await Deno.writeTextFile(
      insecure,
      kubeconfig("https://127.0.0.1:6443", { token: "t" }, { "insecure-skip-tls-verify": true }),
    );
    await nodeAssert.rejects(
      loadKubeConnection(insecure),
      /insecure-skip-tls-verify is not supported/,
    );
    await nodeAssert.rejects(
      loadKubeConnection(insecure, { context: "nope" }),
      /kubeconfig .*insecure\.yaml: .*nope/,
    );
    const plain = `${dir}/plain.yaml`;
    await Deno.writeTextFile(
      plain,
      kubeconfig("http://127.0.0.1:8080/", { username: "a", password: "b" }, {
        "insecure-skip-tls-verify": true,
      }),
    );
    const conn = await loadKubeConnection(plain);
    nodeAssert.equal(conn.server, "http://127.0.0.1:8080");
    nodeAssert.equal(conn.httpClient, undefined);
    nodeAssert.equal((await conn.headers()).Authorization, `Basic ${b64("a:b")}`);
    conn.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
