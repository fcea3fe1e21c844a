/**
 * `proxy join` renders the same objects as `deploy/agent` (checked against the
 * real `kubectl kustomize`), with the cluster's name, token and proxy filled in.
 */

import { parseAllDocuments } from "yaml";
import { assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { run } from "../helpers/proc.ts";
import { joinCommand, joinManifest, joinObjects } from "../../lib/proxy/join.ts";

Deno.test("join objects are deploy/agent with the placeholders filled in", async () => {
  const r = await run("kubectl", ["kustomize", "deploy/agent"]);
  assertEquals(r.code, 0, r.stderr);
  const rendered = parseAllDocuments(r.stdout).map((d) => d.toJS());
  const ours = joinObjects({
    cluster: "REPLACE-WITH-THE-CLUSTER-NAME",
    token: "REPLACE-WITH-THE-CLUSTER-TOKEN",
    proxyServer: "http://REPLACE-WITH-THE-PROXY-ADDRESS:8080",
  });
  assertEquals(ours, rendered);
});

Deno.test("join manifest and command carry token, name, proxy and the pinned fingerprint", () => {
  const input = {
    cluster: "alpha",
    token: "ab".repeat(32),
    proxyServer: "https://tower.example.com",
    fingerprint: "SHA256:" + "x".repeat(43),
  };
  const docs = parseAllDocuments(joinManifest(input)).map((d) => d.toJS());
  const secret = docs.find((d) => d.kind === "Secret");
  assertEquals(secret.stringData.token, input.token);
  const args: string[] =
    docs.find((d) => d.kind === "Deployment").spec.template.spec.containers[0].args;
  assertEquals(args, [
    "--name=alpha",
    "--proxy-server=https://tower.example.com",
    "--token-file=/etc/tower/token",
    "--metrics-address=:9090",
    `--proxy-fingerprint=${input.fingerprint}`,
  ]);
  const cmd = joinCommand(input);
  assertStringIncludes(cmd, `--token=${input.token}`);
  assertStringIncludes(cmd, "--name=alpha");
  assertEquals(joinCommand({ ...input, cluster: "it's" }).includes(`--name='it'"'"'s'`), true);
});
