/**
 * Helpers for tests that use the test API server: an HTTPS `fetch` that
 * authenticates as the admin (client certificate) or anonymously, running the
 * real `kubectl` against a server with bounded time and its own cache dir,
 * and reading watch streams line by line.
 * @module
 */

import { deadline } from "../helpers/deadline.ts";
import { Proc, run } from "../helpers/proc.ts";
import type { TestApiServer } from "./server.ts";

/** Re-exported for the API server's tests (README). */
export { deadline };

/** An HTTP client trusting the server's CA, optionally with a client certificate. */
export function httpClient(
  server: TestApiServer,
  identity: "admin" | "none" | { certPem: string; keyPem: string } = "admin",
): Deno.HttpClient {
  const opts: Deno.CreateHttpClientOptions & { cert?: string; key?: string } = {
    caCerts: [server.caPem],
  };
  if (identity === "admin") {
    opts.cert = server.tls.adminCertPem;
    opts.key = server.tls.adminKeyPem;
  } else if (identity !== "none") {
    opts.cert = identity.certPem;
    opts.key = identity.keyPem;
  }
  return Deno.createHttpClient(opts);
}

/** Result of {@link kubectl}. */
export interface KubectlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Run the real `kubectl` with the server's admin kubeconfig (or
 * `opts.kubeconfig`, e.g. from `server.kubeconfigFor`), a cache dir inside the
 * server's dir and `--request-timeout`; killed after `timeoutMs`.
 */
export function kubectl(
  server: TestApiServer,
  args: string[],
  opts: { stdin?: string; timeoutMs?: number; kubeconfig?: string } = {},
): Promise<KubectlResult> {
  return run("kubectl", [
    `--kubeconfig=${opts.kubeconfig ?? server.kubeconfigPath}`,
    `--cache-dir=${server.dir}/kubectl-cache`,
    "--request-timeout=15s",
    ...args,
  ], { stdin: opts.stdin, timeoutMs: opts.timeoutMs ?? 30_000, env: { HOME: server.dir } });
}

/**
 * Start the real `kubectl` as a long-running {@link Proc} (for `-w`,
 * `logs -f`) with the server's admin kubeconfig and its own cache dir.
 */
export function kubectlProc(server: TestApiServer, name: string, args: string[]): Proc {
  return new Proc(name, "kubectl", [
    `--kubeconfig=${server.kubeconfigPath}`,
    `--cache-dir=${server.dir}/kubectl-cache`,
    ...args,
  ], { HOME: server.dir });
}

/** Read newline-delimited JSON events from a watch response body. */
export async function* watchEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<{ type: string; object: Record<string, unknown> }> {
  let buf = "";
  for await (const chunk of body.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) yield JSON.parse(line);
    }
  }
}

/** An open watch: its events one at a time, and a way to end it. */
export interface OpenWatch {
  /** The next event (rejects after `ms`, naming `what`, or when the stream ends). */
  next(what: string, ms?: number): Promise<{ type: string; object: Record<string, unknown> }>;
  /** Stop watching (aborts the request, closes its client). */
  stop(): Promise<void>;
}

/**
 * `GET path` (a `?watch=true` URL) over HTTPS as the admin, or as
 * `identity`; fails unless the answer is 200.
 */
export async function openWatch(
  server: TestApiServer,
  path: string,
  identity: Parameters<typeof httpClient>[1] = "admin",
): Promise<OpenWatch> {
  const client = httpClient(server, identity);
  const ac = new AbortController();
  const res = await fetch(`${server.url}${path}`, { client, signal: ac.signal });
  if (res.status !== 200) {
    const text = await res.text();
    client.close();
    throw new Error(`watch ${path}: ${res.status} ${text}`);
  }
  // Our own reader (not an async generator) so that stop() ends a pending read at once.
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const nextEvent = async () => {
    for (;;) {
      const i = buf.indexOf("\n");
      if (i >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) return JSON.parse(line);
        continue;
      }
      const { done, value } = await reader.read();
      if (done) return undefined;
      buf += value;
    }
  };
  let pending: Promise<{ type: string; object: Record<string, unknown> } | undefined> | undefined;
  return {
    async next(what, ms = 10_000) {
      // A read that timed out is still the one to wait for.
      pending ??= nextEvent();
      const ev = await deadline(pending, ms, what);
      pending = undefined;
      if (!ev) throw new Error(`watch ended before ${what}`);
      return ev;
    },
    async stop() {
      ac.abort();
      await reader.cancel().catch(() => {});
      client.close();
    },
  };
}

/** `r`'s stdout; throws unless kubectl exited 0. */
export function kubectlOk(r: KubectlResult, what: string): string {
  if (r.code !== 0) throw new Error(`${what}: kubectl failed (exit ${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** `r`'s stderr, trimmed; throws unless kubectl exited 1 (an error from the server). */
export function kubectlFails(r: KubectlResult, what: string): string {
  if (r.code !== 1) throw new Error(`${what}: expected exit 1, got ${r.code}: ${r.stdout}`);
  return r.stderr.trim();
}

/**
 * A JSON request over HTTPS as the admin (or `opts.identity`): the status and
 * the parsed body (`{}` when it is not JSON).
 */
export async function callJson(
  server: TestApiServer,
  method: string,
  path: string,
  body?: unknown,
  opts: { identity?: Parameters<typeof httpClient>[1]; contentType?: string } = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const client = httpClient(server, opts.identity ?? "admin");
  try {
    const r = await fetch(`${server.url}${path}`, {
      method,
      client,
      headers: {
        "content-type": opts.contentType ?? "application/json",
        accept: "application/json",
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let parsed: Record<string, unknown> = {};
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: r.status, body: parsed };
  } finally {
    client.close();
  }
}
