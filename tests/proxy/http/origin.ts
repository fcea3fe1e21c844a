/**
 * Origin servers for proxy tests: a `node:http` server with echo, big-body,
 * streaming and watch routes, and a raw TCP server that answers upgrades
 * with 101 and then echoes bytes.
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import * as http from "node:http";
import * as net from "node:net";
import { listenLocal, type TestServer } from "./helpers.ts";

/** A deterministic 1 MiB block; big bodies repeat it. */
export const BLOCK: Buffer = (() => {
  const b = Buffer.alloc(1 << 20);
  let x = 0x12345678;
  for (let i = 0; i < b.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeInt32LE(x | 0, i);
  }
  return b;
})();

/** SHA-256 (hex) of `BLOCK` repeated `mib` times. */
export function blockHash(mib: number): string {
  const h = createHash("sha256");
  for (let i = 0; i < mib; i++) h.update(BLOCK);
  return h.digest("hex");
}

/** What the echo route saw. */
export interface Echo {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
  bodyBytes: number;
  sha256: string;
}

/** The HTTP origin and hooks into its streaming routes. */
export interface HttpOrigin extends TestServer {
  /** Release the second half of `/chunks`. */
  releaseChunks(): void;
  /** Resolves when a `/watch` request's connection closed. */
  watchClosed: Promise<void>;
  /** Bytes the `/offer` route has managed to write so far. */
  offered: { bytes: number; done: boolean };
}

/**
 * Routes: `/echo` (JSON {@link Echo} of the request, body hashed), `/big?mib=N` (N MiB of
 * {@link BLOCK}, Content-Length), `/bigchunked?mib=N` (same, chunked), `/chunks` ("first\n", then
 * "second\n" once released), `/watch` (one event line, then held open), `/offer?mib=N` (writes with
 * backpressure, counting), `/status/N` (empty answer with status N), `/hop` (hop-by-hop headers
 * in the answer), `/close` (closes after answering).
 */
export async function startHttpOrigin(): Promise<HttpOrigin> {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let watchClosed!: () => void;
  const watchClosedP = new Promise<void>((r) => (watchClosed = r));
  const offered = { bytes: 0, done: false };
  const server = http.createServer((req, res) => {
    route(req, res).catch(() => res.destroy()); // aborted requests reject the body iterator
  });
  const route = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://x");
    const mib = Number(url.searchParams.get("mib") ?? "1");
    switch (url.pathname) {
      case "/echo": {
        const h = createHash("sha256");
        let n = 0;
        for await (const chunk of req) {
          h.update(chunk as Buffer);
          n += (chunk as Buffer).length;
        }
        const echo: Echo = {
          method: req.method ?? "",
          url: req.url ?? "",
          headers: req.headers,
          rawHeaders: req.rawHeaders,
          bodyBytes: n,
          sha256: h.digest("hex"),
        };
        res.setHeader("Content-Type", "application/json");
        res.end(JSON.stringify(echo));
        return;
      }
      case "/big":
      case "/bigchunked":
      case "/offer": {
        if (url.pathname !== "/bigchunked") res.setHeader("Content-Length", String(mib << 20));
        res.writeHead(200, { "Content-Type": "application/octet-stream" });
        for (let i = 0; i < mib; i++) {
          for (let off = 0; off < BLOCK.length; off += 64 * 1024) {
            const piece = BLOCK.subarray(off, off + 64 * 1024);
            const ok = res.write(piece);
            offered.bytes += piece.length;
            if (!ok) await new Promise((r) => res.once("drain", r));
            if (res.destroyed) return;
          }
        }
        offered.done = true;
        res.end();
        return;
      }
      case "/chunks":
        res.writeHead(200, { "Content-Type": "text/plain" });
        res.write("first\n");
        await released;
        res.end("second\n");
        return;
      case "/watch":
        res.writeHead(200, { "Content-Type": "application/json" });
        res.write('{"type":"ADDED"}\n');
        res.once("close", () => watchClosed());
        return;
      case "/hop":
        res.writeHead(200, {
          "Connection": "X-Hop-Resp",
          "X-Hop-Resp": "1",
          "Keep-Alive": "timeout=5",
          "Proxy-Authenticate": "Basic",
          "X-End-To-End": "yes",
          "Content-Length": "2",
        });
        res.end("ok");
        return;
      case "/close":
        res.writeHead(200, { "Connection": "close", "Content-Length": "3" });
        res.end("bye");
        return;
      default: {
        const m = /^\/status\/(\d+)$/.exec(url.pathname);
        if (m) {
          res.writeHead(Number(m[1]), { "X-Status": m[1] });
          res.end();
          return;
        }
        res.writeHead(404);
        res.end("not found");
      }
    }
  };
  const s = await listenLocal(server);
  return {
    ...s,
    releaseChunks: release,
    watchClosed: watchClosedP,
    offered,
  };
}

/**
 * A raw origin: answers every request by `answer(head, n)` (`n`: index of the request on its
 * connection); `response: null` drops the connection instead. After a 101 it echoes bytes.
 */
export async function startRawOrigin(
  answer: (head: string, n: number) => { response: string | null; upgrade: boolean },
): Promise<TestServer & { heads: string[] }> {
  const heads: string[] = [];
  const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    let upgraded = false;
    let n = 0;
    sock.on("error", () => {});
    sock.on("data", (d: Buffer) => {
      if (upgraded) {
        sock.write(d);
        return;
      }
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const i = buf.indexOf("\r\n\r\n");
        if (i < 0) return;
        const head = buf.subarray(0, i).toString("latin1");
        buf = buf.subarray(i + 4);
        heads.push(head);
        const a = answer(head, n++);
        if (a.response === null) {
          sock.destroy();
          return;
        }
        sock.write(Buffer.from(a.response, "latin1"));
        if (a.upgrade) {
          upgraded = true;
          if (buf.length) sock.write(buf);
          return;
        }
      }
    });
    sock.on("end", () => sock.end());
  });
  const s = await listenLocal(server);
  return { ...s, heads };
}
