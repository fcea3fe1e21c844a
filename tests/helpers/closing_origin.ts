/**
 * A test origin (a member API server stand-in) that ends its side right after its last byte,
 * as a kube-apiserver ends an exec stream once the command exits, or a close-delimited answer:
 *
 * - `GET /echo/<n>` with `Upgrade`: 101, then echoes the first `n` bytes of the stream as they
 *   come (stdin → stdout), and sends FIN right after the last one. Bytes past `n` (a client's
 *   trailing frames) are read and counted, not echoed.
 * - `GET /sink/<out>[/<ms>]` with `Upgrade`: 101, then writes `out` pattern bytes (seed 1) while
 *   it reads everything until the peer's EOF (waiting `ms` after each read: a slow reader): what
 *   a target sees of a stream closed under it.
 * - `<any method> /close/<n>/<seed>`: `200` without a length (`Connection: close`), `n` pattern
 *   bytes, FIN; a request body is read (and counted) only after that: an answer before the
 *   request is complete.
 *
 * Every connection reads on after its FIN until the peer closes (a lingering close: closing with
 * unread input would reset the connection and lose the answer's tail), then records what it
 * received in {@link ClosingOrigin.seen}. Plain TCP or TLS (Deno's own, `close_notify` at FIN).
 * @module
 */

import { createHash } from "node:crypto";

/** What the origin received on one connection. */
export interface OriginSeen {
  path: string;
  /** Bytes after the request head (stdin, trailing bytes, a body). */
  bytes: number;
  /** SHA-256 (hex) of those bytes. */
  sha: string;
  /** How the peer ended: its EOF, or a failed read (reset). */
  how: "eof" | "reset";
}

/** A running origin. */
export interface ClosingOrigin {
  port: number;
  seen: OriginSeen[];
  /** Resolves with the next connection's record (in the order they finish). */
  next(): Promise<OriginSeen>;
  close(): Promise<void>;
}

/** `n` deterministic bytes for `seed` (xorshift32), the origin's answer bodies. */
export function patternBytes(seed: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Write `data` to `w` in pieces of the sizes in `sizes`, cycled (a client's chunking). */
export function writeChunked(
  w: { write(b: Uint8Array): unknown },
  data: Uint8Array,
  sizes: number[],
): void {
  for (let off = 0, i = 0; off < data.length; i++) {
    const k = Math.min(data.length - off, sizes[i % sizes.length]);
    w.write(data.subarray(off, off + k));
    off += k;
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

const enc = new TextEncoder();
const HEAD_END = enc.encode("\r\n\r\n");

function indexOfHeadEnd(buf: Uint8Array, len: number): number {
  outer: for (let i = 0; i + 4 <= len; i++) {
    for (let j = 0; j < 4; j++) if (buf[i + j] !== HEAD_END[j]) continue outer;
    return i + 4;
  }
  return -1;
}

/** Start the origin on 127.0.0.1 (TLS with `tls`). */
export function startClosingOrigin(
  opts: { tls?: { certPem: string; keyPem: string } } = {},
): ClosingOrigin {
  const listener: Deno.Listener = opts.tls
    ? Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: opts.tls.certPem,
      key: opts.tls.keyPem,
    })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const seen: OriginSeen[] = [];
  const waiting: ((s: OriginSeen) => void)[] = [];
  const ready: OriginSeen[] = [];
  const conns = new Set<Deno.Conn>();
  const record = (s: OriginSeen) => {
    seen.push(s);
    const w = waiting.shift();
    if (w) w(s);
    else ready.push(s);
  };
  const loop = (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        serve(conn, record).catch(() => {}).finally(() => {
          conns.delete(conn);
          try {
            conn.close();
          } catch {
            // closed already
          }
        });
      }
    } catch {
      // listener closed
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    seen,
    next: () => {
      const s = ready.shift();
      return s ? Promise.resolve(s) : new Promise((resolve) => waiting.push(resolve));
    },
    close: async () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // closed already
        }
      }
      await loop;
    },
  };
}

async function serve(conn: Deno.Conn, record: (s: OriginSeen) => void): Promise<void> {
  let buf = new Uint8Array(64 * 1024);
  let len = 0;
  let end = -1;
  while (end < 0) {
    if (len === buf.length) {
      const grown = new Uint8Array(buf.length * 2);
      grown.set(buf);
      buf = grown;
    }
    const n = await conn.read(buf.subarray(len));
    if (n === null) return;
    len += n;
    end = indexOfHeadEnd(buf, len);
  }
  const head = new TextDecoder().decode(buf.subarray(0, end));
  const [, target = "/"] = head.split(" ", 2);
  const parts = target.split("/");
  const upgrade = /^upgrade: *(.+)$/im.exec(head)?.[1].trim();
  const rest = buf.slice(end, len);
  const hash = createHash("sha256");
  let bytes = 0;
  let how: OriginSeen["how"] = "eof";
  const got = (b: Uint8Array) => {
    hash.update(b);
    bytes += b.length;
  };
  const readOn = async (each?: (b: Uint8Array) => Promise<void>, pauseMs = 0) => {
    const room = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await conn.read(room);
        if (n === null) return;
        const b = room.subarray(0, n);
        got(b);
        await each?.(b);
        if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      }
    } catch {
      how = "reset";
    }
  };
  if (parts[1] === "echo" && upgrade) {
    const n = Number(parts[2]);
    let echoed = 0;
    await writeAll(
      conn,
      enc.encode(
        `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n\r\n`,
      ),
    );
    const echo = async (b: Uint8Array) => {
      const take = b.subarray(0, Math.max(0, n - echoed));
      echoed += take.length;
      if (take.length > 0) await writeAll(conn, take);
      if (echoed === n && take.length > 0) await conn.closeWrite();
    };
    got(rest);
    if (n === 0) await conn.closeWrite();
    else await echo(rest);
    await readOn(echo);
  } else if (parts[1] === "sink" && upgrade) {
    await writeAll(
      conn,
      enc.encode(
        `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n\r\n`,
      ),
    );
    got(rest);
    const out = patternBytes(1, Number(parts[2]));
    const writer = writeAll(conn, out).catch(() => {});
    await readOn(undefined, Number(parts[3] ?? 0));
    await writer;
  } else if (parts[1] === "close") {
    await writeAll(conn, enc.encode("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
    await writeAll(conn, patternBytes(Number(parts[3]), Number(parts[2])));
    await conn.closeWrite();
    got(rest);
    await readOn();
  } else {
    await writeAll(conn, enc.encode("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"));
    await conn.closeWrite();
    await readOn();
  }
  record({ path: target, bytes, sha: hash.digest("hex"), how });
}
