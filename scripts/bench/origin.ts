/**
 * The origin HTTP server of the benchmark, standing in for a member cluster's
 * API servers. Run as its own process so that it never shares an event loop
 * with the client or the tunnel:
 *
 *     deno run -A scripts/bench/origin.ts --port 0 [--tls-port 0 --cert F --key F]
 *
 * It prints one line `origin http=<port> https=<port>` once listening.
 * Routes: `GET /small` (~1 KB JSON), `GET /bytes?n=N` (N bytes, Content-Length),
 * `PUT /sink` (reads the body, answers its length), `GET /health`.
 * @module
 */

import net from "node:net";
import tls from "node:tls";
import { parseArgs } from "node:util";

/** About 1 KB of JSON, like a small Kubernetes object. */
export const SMALL_BODY: Uint8Array<ArrayBuffer> = new TextEncoder().encode(
  JSON.stringify({
    kind: "ConfigMap",
    apiVersion: "v1",
    metadata: { name: "bench", namespace: "default", resourceVersion: "1" },
    data: { filler: "x".repeat(880) },
  }),
);

const CHUNK = (() => {
  const b = new Uint8Array(256 << 10);
  for (let i = 0; i < b.length; i++) b[i] = (i * 131 + 17) & 0xff;
  return b;
})();

function bytesBody(n: number): ReadableStream<Uint8Array> {
  let left = n;
  return new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (left <= 0) return ctl.close();
      const k = Math.min(left, CHUNK.length);
      left -= k;
      // The same bytes every time (never written to, so sharing them is safe).
      ctl.enqueue(CHUNK.subarray(0, k));
    },
  }, { highWaterMark: 2 });
}

/** The request handler (exported for tests). */
export async function handle(req: Request): Promise<Response> {
  const url = new URL(req.url);
  switch (url.pathname) {
    case "/small":
      return new Response(SMALL_BODY, { headers: { "content-type": "application/json" } });
    case "/bytes": {
      const n = Number(url.searchParams.get("n") ?? "0");
      if (!Number.isSafeInteger(n) || n < 0) return new Response("bad n\n", { status: 400 });
      return new Response(bytesBody(n), {
        headers: { "content-type": "application/octet-stream", "content-length": String(n) },
      });
    }
    case "/sink": {
      let n = 0;
      if (req.body) {
        for await (const c of req.body) n += c.length;
      }
      return new Response(`${n}\n`);
    }
    case "/health":
      return new Response("ok\n");
    default:
      return new Response("not found\n", { status: 404 });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", default: "0" },
      "tls-port": { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
    },
  });
  const onError = (err: unknown) => {
    // Clients of the fairness figure hang up mid-body: not worth a stack trace.
    return new Response(`error: ${(err as Error).message}\n`, { status: 500 });
  };
  const http = Deno.serve({
    hostname: "127.0.0.1",
    port: Number(values.port),
    onListen: () => {},
    onError,
  }, handle);
  let https: tls.Server | undefined;
  let httpsPort = 0;
  if (values["tls-port"] !== undefined) {
    // Deno.serve over TLS neither sets TCP_NODELAY nor writes a response in one piece, so
    // every keep-alive response waits out a delayed ACK (40 ms); a real kube-apiserver does
    // not. A node:tls terminator with NODELAY in front of the plain port behaves like one.
    const server = tls.createServer({
      cert: await Deno.readTextFile(values.cert!),
      key: await Deno.readTextFile(values.key!),
    }, (sock) => {
      sock.setNoDelay(true);
      const up = net.connect(http.addr.port, "127.0.0.1");
      up.setNoDelay(true);
      const fail = () => {
        sock.destroy();
        up.destroy();
      };
      sock.on("error", fail);
      up.on("error", fail);
      sock.pipe(up);
      up.pipe(sock);
    });
    https = server;
    httpsPort = await new Promise<number>((resolve) => {
      server.listen(Number(values["tls-port"]), "127.0.0.1", () => {
        resolve((server.address() as net.AddressInfo).port);
      });
    });
  }
  console.log(`origin http=${http.addr.port} https=${httpsPort}`);
  const stop = () => {
    http.shutdown();
    https?.close();
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await http.finished;
  Deno.exit(0);
}
