/**
 * Regenerates `kubectl_bodies.json`: the protobuf request bodies the real
 * kubectl (Go, k8s.io/api generated marshalers) sends for typed `create`
 * commands, read from its `-v=8` "Request Body" hex dumps while it talks to
 * the test API server. They are the independent encoder the codec tests
 * decode, each with kubectl's own JSON rendering of the same object
 * (`--dry-run=client -o json`, for the `create` commands) to compare with.
 * Run: `deno run -A tests/apiserver/protobuf/testdata/capture_kubectl.ts`.
 * @module
 */

import { startTestApiServer } from "../../server.ts";
import { kubectl } from "../../testing.ts";

/** The bytes of the first binary "Request Body" dump in kubectl's -v=8 log. */
function requestBody(log: string): string {
  const lines = log.split("\n");
  const start = lines.findIndex((l) => l.includes('"Request Body" body=<'));
  if (start < 0) throw new Error("no request body in kubectl's log");
  const hex: string[] = [];
  for (const l of lines.slice(start + 1)) {
    const m = /^\s*[0-9a-f]{8}\s+((?:[0-9a-f]{2}\s+)+)\|/.exec(l);
    if (!m) break;
    hex.push(...m[1].trim().split(/\s+/));
  }
  return hex.join("");
}

const binary = await Deno.makeTempFile();
await Deno.writeFile(binary, new Uint8Array([0x00, 0xff, 0x10, 0x80]));
const commands: Record<string, string[]> = {
  namespace: ["create", "namespace", "pb-ns"],
  configmap: [
    "create",
    "configmap",
    "pb-cm",
    "-n",
    "pb-ns",
    "--from-literal=greeting=hello",
    `--from-file=blob=${binary}`,
  ],
  secret: [
    "create",
    "secret",
    "generic",
    "pb-secret",
    "-n",
    "pb-ns",
    "--from-literal=password=s3cr3t",
    "--type=example.com/token",
  ],
  serviceClusterIP: ["create", "service", "clusterip", "pb-web", "-n", "pb-ns", "--tcp=80:http"],
  serviceLoadBalancer: [
    "create",
    "service",
    "loadbalancer",
    "pb-lb",
    "-n",
    "pb-ns",
    "--tcp=443:8443",
  ],
  serviceAccount: ["create", "serviceaccount", "pb-sa", "-n", "pb-ns"],
  selfSubjectAccessReview: ["auth", "can-i", "get", "secrets", "-n", "pb-ns"],
};
const s = await startTestApiServer();
const out: Record<string, { args: string[]; hex: string; json?: unknown }> = {};
try {
  for (const [name, args] of Object.entries(commands)) {
    const r = await kubectl(s, [...args, "-v=8"]);
    if (r.code !== 0) throw new Error(`${args.join(" ")}: ${r.stderr}`);
    const shown = args.map((a) => a.replace(binary, "<file of bytes 00 ff 10 80>"));
    out[name] = { args: shown, hex: requestBody(r.stderr) };
    if (args[0] !== "create") continue;
    const dry = await kubectl(s, [...args, "--dry-run=client", "-o", "json"]);
    if (dry.code !== 0) throw new Error(`${args.join(" ")} --dry-run=client: ${dry.stderr}`);
    out[name].json = JSON.parse(dry.stdout);
  }
} finally {
  await s.close();
  await Deno.remove(binary);
}
const version = await new Deno.Command("kubectl", { args: ["version", "--client", "-o", "json"] })
  .output();
const client = JSON.parse(new TextDecoder().decode(version.stdout)).clientVersion.gitVersion;
await Deno.writeTextFile(
  new URL("./kubectl_bodies.json", import.meta.url),
  JSON.stringify({ kubectl: client, bodies: out }, null, 2) + "\n",
);
