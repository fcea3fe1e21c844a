/**
 * The real kubectl through the tunnel prints what it prints straight to the member: the same
 * script of everyday commands runs against a fresh test API server directly (the baseline) and
 * through each tunnel — our proxy with our agent, our proxy with the Go agent (rendition), the Go
 * proxy (rendition) with our agent — each on a fresh member of its own, and every step's exit
 * code, stdout and stderr must be equal after {@link normalise}.
 *
 * Each run has its own member server, so that every run starts from the same state and the same
 * resourceVersions come out; what must still differ is normalised, and only that (see
 * {@link normalise}).
 * @module
 */

import { parse } from "yaml";
import { requireTools } from "../helpers/tools.ts";
import { assertEquals } from "../helpers/assert.ts";
import { denoRun, Proc, tempDir } from "../helpers/proc.ts";
import { startStandaloneStack } from "../helpers/stack.ts";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { kubectl } from "../apiserver/testing.ts";
import { userKubeconfig } from "../apiserver/tls.ts";
import { issueClientCert } from "../../lib/pki/mod.ts";
import { buildGoTower, goMissing, goTower, INSTALL_HINT, startGoProxy } from "./go_build.ts";
import { deadline } from "../helpers/deadline.ts";

const TOKEN = "5e".repeat(32);
/** Every member enforces RBAC, so that impersonation (`--as`) changes answers. */
const MEMBER = { rbac: true };
/** Skipped with a message where Go is missing; under TOWER_CI=1 failed instead. */
const GO = await requireTools("kubectl via Go tower", goMissing, INSTALL_HINT);

/** One kubectl invocation of the script. */
interface Step {
  name: string;
  args: string[];
  /** Standard input, or a function of earlier steps' raw stdout in the same run. */
  stdin?: string | ((out: Map<string, string>) => string);
  /** Compare only the size of stdout (big documents), with exit code and stderr. */
  bytes?: boolean;
  /** Run with `-v=6` and compare the HTTP status lines of failed requests too. */
  status?: boolean;
}

const cm = (name: string, labels: Record<string, string>, data: Record<string, string> = {}) =>
  JSON.stringify({
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name, namespace: "default", labels },
    data: { k: "v", ...data },
  });

/**
 * Typed `kubectl create <kind>` commands: kubectl 1.32 sends their bodies in protobuf (and asks
 * for protobuf answers), as it does against a real kube-apiserver; the tunnel must carry them
 * byte for byte. A second create of the same name is the AlreadyExists error path.
 */
const TYPED_CREATES: Step[] = [
  { name: "create namespace", args: ["create", "namespace", "typed"] },
  { name: "create namespace again", args: ["create", "namespace", "typed"], status: true },
  { name: "create configmap", args: ["create", "configmap", "typed", "--from-literal=k=v"] },
  {
    name: "create secret",
    args: ["create", "secret", "generic", "typed", "--from-literal=k=v"],
  },
  {
    name: "create service clusterip",
    args: ["create", "service", "clusterip", "typed", "--tcp=80:8080"],
  },
  {
    name: "create service loadbalancer",
    args: ["create", "service", "loadbalancer", "lb", "--tcp=80:8080"],
  },
  { name: "create serviceaccount", args: ["create", "serviceaccount", "typed"] },
  { name: "can-i as admin", args: ["auth", "can-i", "create", "pods"] },
  {
    name: "can-i as anonymous",
    args: ["auth", "can-i", "create", "pods", "--as=system:anonymous"],
  },
  {
    name: "get as a user without rights",
    args: ["get", "configmaps", "--as=alice", "--as-group=dev"],
    status: true,
  },
  { name: "typed objects", args: ["get", "configmap,secret,service,serviceaccount", "-o", "json"] },
];

/** The script: reads, writes, selectors, patches, conflicts, errors, discovery documents. */
const STEPS: Step[] = [
  { name: "version", args: ["version", "-o", "json"] },
  { name: "api-versions", args: ["api-versions"] },
  { name: "namespaces table", args: ["get", "namespaces"] },
  { name: "nodes wide", args: ["get", "nodes", "-o", "wide"] },
  { name: "pods json", args: ["get", "pods", "-n", "default", "-o", "json"] },
  {
    name: "field selector, all namespaces",
    args: ["get", "pods", "-A", "--field-selector", "status.phase=Running"],
  },
  { name: "apply create", args: ["apply", "-f", "-"], stdin: cm("cm-a", { app: "cmp" }) },
  {
    name: "apply create 2",
    args: ["apply", "-f", "-"],
    stdin: cm("cm-b", { app: "cmp", tier: "x" }),
  },
  {
    name: "apply client dry run",
    args: ["apply", "-f", "-", "--dry-run=client"],
    stdin: cm("cm-c", { app: "cmp" }),
  },
  {
    name: "apply server dry run",
    args: ["apply", "-f", "-", "--dry-run=server", "-o", "json"],
    stdin: cm("cm-c", { app: "cmp" }),
  },
  {
    name: "server-side apply dry run",
    args: ["apply", "--server-side", "-f", "-", "--dry-run=server"],
    stdin: cm("cm-d", { app: "cmp" }),
  },
  {
    name: "server-side apply",
    args: ["apply", "--server-side", "-f", "-"],
    stdin: cm("cm-d", { app: "cmp" }),
  },
  { name: "label selector table", args: ["get", "configmaps", "-l", "app=cmp", "--show-labels"] },
  {
    name: "set-based label selector",
    args: ["get", "configmaps", "-l", "app in (cmp),tier!=x", "-o", "name"],
  },
  {
    name: "field selector json",
    args: ["get", "configmaps", "--field-selector", "metadata.name=cm-a", "-o", "json"],
  },
  { name: "read before patches", args: ["get", "configmap", "cm-a", "-o", "json"] },
  {
    name: "merge patch",
    args: ["patch", "configmap", "cm-a", "--type", "merge", "-p", '{"data":{"k":"merged"}}'],
  },
  {
    name: "json patch",
    args: [
      "patch",
      "configmap",
      "cm-a",
      "--type",
      "json",
      "-p",
      '[{"op":"add","path":"/data/j","value":"json"}]',
    ],
  },
  { name: "label", args: ["label", "configmap", "cm-a", "extra=yes"] },
  { name: "yaml after patches", args: ["get", "configmap", "cm-a", "-o", "yaml"] },
  {
    name: "stale replace",
    args: ["replace", "-f", "-"],
    stdin: (out) => {
      const stale = JSON.parse(out.get("read before patches")!);
      stale.data.k = "stale";
      return JSON.stringify(stale);
    },
    status: true,
  },
  {
    name: "create existing",
    args: ["create", "-f", "-"],
    stdin: cm("cm-a", { app: "cmp" }),
    status: true,
  },
  { name: "invalid name", args: ["create", "-f", "-"], stdin: cm("Bad_Name", {}), status: true },
  { name: "not found", args: ["get", "configmap", "missing"], status: true },
  {
    name: "unsupported field selector",
    args: ["get", "configmaps", "--field-selector", "spec.foo=bar"],
    status: true,
  },
  { name: "can-i", args: ["auth", "can-i", "list", "pods"] },
  { name: "delete", args: ["delete", "configmap", "cm-b"] },
  { name: "delete again", args: ["delete", "configmap", "cm-b"], status: true },
  { name: "openapi v2", args: ["get", "--raw", "/openapi/v2"], bytes: true, status: true },
  { name: "openapi v3 index", args: ["get", "--raw", "/openapi/v3"], bytes: true },
  { name: "openapi v3 core", args: ["get", "--raw", "/openapi/v3/api/v1"], bytes: true },
  ...TYPED_CREATES,
];

/** What one step printed, normalised. */
interface Outcome {
  step: string;
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * What must differ between runs, and only that:
 * - `uid`s: each run has its own member server, which makes random ones;
 * - RFC 3339 times: each member server and its objects were created at another moment;
 * - the `AGE` column: kubectl computes it from those times and the clock;
 * - the server address and request durations in `-v=6` status lines: another endpoint, another
 *   moment.
 * resourceVersions, cluster IPs and everything else come out the same.
 */
function normalise(text: string): string {
  return ageColumn(
    text
      .replace(/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/g, "<uid>")
      .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z/g, "<time>"),
  );
}

/** Replace the values under an `AGE` table header with `<age>`. */
function ageColumn(text: string): string {
  let at = -1;
  return text.split("\n").map((line) => {
    const header = /(^|\s)AGE(\s|$)/.exec(line);
    if (header && /^[A-Z]/.test(line)) {
      at = line.indexOf("AGE");
      return line;
    }
    if (at < 0 || line.length <= at) return line;
    const m = /^\S+/.exec(line.slice(at));
    return m ? line.slice(0, at) + "<age>" + line.slice(at + m[0].length) : line;
  }).join("\n");
}

/** The status lines of failed requests in kubectl's `-v=6` log: method, path, code. */
function failedRequests(stderr: string): string[] {
  const out: string[] = [];
  for (const line of stderr.split("\n")) {
    const m =
      /\] (GET|POST|PUT|PATCH|DELETE) https?:\/\/[^/\s]+(\S*) ([45]\d\d [^\n]*?) in \d+ milliseconds/
        .exec(line);
    if (m) out.push(`${m[1]} <server>${m[2]} ${m[3]}`);
  }
  return out;
}

/** kubectl's own messages without the `-v=6` log lines. */
function messages(stderr: string): string {
  return stderr.split("\n").filter((l) =>
    !/^[IWE]\d{4} /.test(l) && !/^\s/.test(l) &&
    !/^[}\]]/.test(l)
  ).join("\n");
}

/** Run the script with `kubeconfig` against `member`'s state; a watch of a few changes last. */
async function runScript(member: TestApiServer, kubeconfig: string): Promise<Outcome[]> {
  const raw = new Map<string, string>();
  const outcomes: Outcome[] = [];
  for (const step of STEPS) {
    const stdin = typeof step.stdin === "function" ? step.stdin(raw) : step.stdin;
    const args = step.status ? [...step.args, "-v=6"] : step.args;
    const r = await kubectl(member, args, { kubeconfig, stdin });
    raw.set(step.name, r.stdout);
    const stderr = step.status
      ? [...failedRequests(r.stderr), messages(r.stderr)].join("\n")
      : r.stderr;
    outcomes.push({
      step: step.name,
      code: r.code,
      stdout: step.bytes ? `${new TextEncoder().encode(r.stdout).length} bytes` : r.stdout,
      stderr,
    });
  }
  outcomes.push(await watchChanges(member, kubeconfig));
  const result = outcomes.map((o) => ({
    ...o,
    stdout: normalise(o.stdout),
    stderr: normalise(o.stderr),
  }));
  if (Deno.env.get("KUBECTL_COMPARE_DUMP")) console.error(JSON.stringify(result, null, 1));
  return result;
}

/**
 * `kubectl get -w --output-watch-events` of a label selection: once it printed the object that
 * was there, three changes are made; it must print them in order.
 */
async function watchChanges(member: TestApiServer, kubeconfig: string): Promise<Outcome> {
  const w = (name: string, v: string) => cm(name, { app: "w" }, { v });
  await kubectl(member, ["apply", "-f", "-"], { kubeconfig, stdin: w("w-0", "0") });
  const watch = new Proc("kubectl-watch", "kubectl", [
    `--kubeconfig=${kubeconfig}`,
    `--cache-dir=${member.dir}/kubectl-cache`,
    "get",
    "configmaps",
    "-l",
    "app=w",
    "-w",
    "--output-watch-events",
  ], { HOME: member.dir });
  try {
    await watch.waitFor(/^ADDED\s+w-0\s/, 30_000);
    await kubectl(member, ["apply", "-f", "-"], { kubeconfig, stdin: w("w-1", "1") });
    await kubectl(member, ["patch", "configmap", "w-0", "-p", '{"data":{"v":"00"}}'], {
      kubeconfig,
    });
    await kubectl(member, ["delete", "configmap", "w-1"], { kubeconfig });
    await watch.waitFor(/^DELETED\s+w-1\s/, 30_000);
  } finally {
    await watch.stop();
  }
  return { step: "watch", code: 0, stdout: watch.lines.join("\n"), stderr: "" };
}

let baseline: Promise<Outcome[]> | undefined;
/** The script straight to a fresh member, once per test process. */
function direct(): Promise<Outcome[]> {
  baseline ??= (async () => {
    const member = await startTestApiServer(MEMBER);
    try {
      return await runScript(member, member.kubeconfigPath);
    } finally {
      await member.close();
    }
  })();
  return baseline;
}

/** Every step as it came straight to the member. */
async function assertSameAsDirect(through: Outcome[]): Promise<void> {
  const want = await direct();
  assertEquals(through.map((o) => o.step), want.map((o) => o.step));
  for (let i = 0; i < want.length; i++) {
    assertEquals(through[i], want[i], `step "${want[i].step}" differs through the tunnel`);
  }
}

Deno.test("kubectl through the tunnel (our proxy, our agent) prints what it prints straight to the member", async () => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({ dir: dir.path, token: TOKEN, member: MEMBER });
  try {
    await stack.proxy.waitFor(/Listening on/, 30_000);
    await stack.startAgent("agent").waitFor(/Connected\./, 30_000);
    const { path } = await stack.kubeconfigClient();
    await assertSameAsDirect(await runScript(stack.member, path));
  } finally {
    await stack.close();
  }
});

Deno.test({
  name: "kubectl through the tunnel (our proxy, the Go agent) prints what it prints straight to " +
    "the member",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await deadline(buildGoTower(), 120_000, "go build");
    await using dir = await tempDir();
    const stack = await startStandaloneStack({ dir: dir.path, token: TOKEN, member: MEMBER });
    let go: Proc | undefined;
    try {
      await stack.proxy.waitFor(/Listening on/, 30_000);
      // The Go agent reads JSON kubeconfigs: the member's admin one, as JSON.
      const json = `${dir.path}/member.json`;
      await Deno.writeTextFile(
        json,
        JSON.stringify(parse(await Deno.readTextFile(stack.member.kubeconfigPath))),
      );
      go = goTower(bin, "go-agent", [
        "agent",
        "--name",
        "alpha",
        "--token",
        TOKEN,
        "--proxy-server",
        `http://127.0.0.1:${stack.agentPort}`,
        "--kubeconfig",
        json,
      ]);
      await go.waitFor(/^CONNECTED$/, 30_000);
      const { path } = await stack.kubeconfigClient();
      await assertSameAsDirect(await runScript(stack.member, path));
    } finally {
      await go?.stop();
      await stack.close();
    }
  },
});

Deno.test({
  name: "kubectl through the original Go proxy (rendition) with our agent prints what it prints " +
    "straight to the member",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await deadline(buildGoTower(), 120_000, "go build");
    await using dir = await tempDir();
    const member = await startTestApiServer(MEMBER);
    const procs: Proc[] = [];
    try {
      const go = await startGoProxy(bin, dir.path, "go-proxy", TOKEN);
      procs.push(go.proc);
      const agent = denoRun("agent", "agent.ts", [
        "--name",
        "alpha",
        "--token",
        TOKEN,
        "--proxy-server",
        `http://127.0.0.1:${go.port}`,
        "--kubeconfig",
        member.kubeconfigPath,
        "--kubesphere-service",
        "127.0.0.1:1",
      ]);
      procs.push(agent);
      await agent.waitFor(/Connected\./, 30_000);
      await go.proc.waitFor(/^SERVING alpha /, 20_000);
      // The Go proxy asks for a client certificate and verifies none: any will do.
      const anyone = await issueClientCert(go.ca, { commonName: "anyone" });
      const kubeconfig = `${dir.path}/via-go-proxy.kubeconfig`;
      await Deno.writeTextFile(
        kubeconfig,
        userKubeconfig(`https://127.0.0.1:${go.kubernetesPort}`, go.caPem, "anyone", anyone),
      );
      await assertSameAsDirect(await runScript(member, kubeconfig));
    } finally {
      for (const p of procs.reverse()) await p.stop();
      await member.close();
    }
  },
});
