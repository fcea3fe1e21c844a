/**
 * `deno task test-apiserver [--port N] [--dir D] [--token T]… [--namespace NS]… [--rbac]
 * [--allow-loopback-endpoints]`:
 * run the test API server standalone (debugging, demo, subprocess tests).
 * The first two stdout lines are `kubeconfig=<path>` and `url=<url>`; it runs
 * until SIGINT/SIGTERM.
 * @module
 */

import { FlagError, type FlagSpecs, helpText, parseFlags } from "../../lib/cli.ts";
import { setupLogging } from "../../lib/log.ts";
import { startTestApiServer } from "./server.ts";

const FLAGS: FlagSpecs = {
  port: { kind: "port", default: 0, help: "port on 127.0.0.1 (0: any free port)", min: 0 },
  dir: { kind: "string", default: "", help: "directory for the kubeconfig and PEM files" },
  token: { kind: "string", multiple: true, help: "a bearer token that authenticates (repeatable)" },
  namespace: { kind: "string", multiple: true, help: "an extra namespace to create (repeatable)" },
  rbac: {
    kind: "bool",
    default: false,
    help: "enforce RBAC for callers outside system:masters",
  },
  "allow-loopback-endpoints": {
    kind: "bool",
    default: false,
    help: "accept 127.0.0.0/8 and ::1 in EndpointSlices (the real server refuses them)",
  },
  v: { kind: "int", default: 0, help: "log verbosity (4: every request)" },
};

async function main(): Promise<number> {
  let flags;
  try {
    flags = parseFlags(Deno.args, FLAGS);
  } catch (err) {
    if (err instanceof FlagError) {
      console.error(`test-apiserver: ${err.message}`);
      return 2;
    }
    throw err;
  }
  if (flags.help) {
    console.log(helpText("Usage: deno task test-apiserver [flags]", FLAGS));
    return 0;
  }
  setupLogging({ verbosity: Number(flags.values.v ?? 0) });
  const server = await startTestApiServer({
    port: Number(flags.values.port ?? 0),
    dir: String(flags.values.dir ?? "") || undefined,
    tokens: (flags.values.token as string[] | undefined) ?? [],
    namespaces: (flags.values.namespace as string[] | undefined) ?? [],
    rbac: flags.values.rbac === true,
    allowLoopbackEndpoints: flags.values["allow-loopback-endpoints"] === true,
  });
  console.log(`kubeconfig=${server.kubeconfigPath}`);
  console.log(`url=${server.url}`);
  const stop = Promise.withResolvers<void>();
  const onSignal = () => stop.resolve();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  await stop.promise;
  await server.close();
  return 0;
}

if (import.meta.main) Deno.exit(await main());
