/**
 * Test fixtures for the HTTP proxy: a dialer over 127.0.0.1 TCP that counts
 * dials and open streams (optionally wrapping each socket in a plain
 * `Duplex`, as an SSH channel is), an {@link HttpProxy} behind a plain TCP
 * listener, origin servers, and a raw HTTP/1.1 client that reads responses
 * byte-exactly.
 * @module
 */

import { Buffer } from "node:buffer";
import * as net from "node:net";
import { Duplex } from "node:stream";
import { HttpProxy, type HttpProxyOptions } from "../../../lib/proxy/http/forward.ts";
import {
  type DialedStream,
  NoAgentError,
  type UpstreamAuth,
  type UpstreamDialer,
} from "../../../lib/proxy/http/upstream.ts";

/** A `Duplex` that is not a socket, forwarding to `sock` (like an ssh2 channel would). */
export class WrappedStream extends Duplex {
  readonly #sock: net.Socket;

  constructor(sock: net.Socket) {
    super({ allowHalfOpen: true });
    this.#sock = sock;
    sock.on("data", (d: Buffer) => {
      if (!this.push(d)) sock.pause();
    });
    sock.on("end", () => this.push(null));
    sock.on("error", () => {});
    sock.on("close", () => this.destroy());
  }

  override _read(): void {
    this.#sock.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#sock.write(chunk, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#sock.end(cb);
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.#sock.destroy();
    cb(err);
  }
}

/** A dialer to 127.0.0.1:`port` that counts what it does. */
export class TestDialer implements UpstreamDialer {
  /** Successful dials. */
  dials = 0;
  /** Streams dialled and not yet closed. */
  open = 0;
  /** "noagent": reject with NoAgentError; "fail": reject with a dial error. */
  mode: "ok" | "noagent" | "fail" = "ok";
  key = "session-1";
  /** Credentials of the "session" streams are dialled on (change with `key` for another one). */
  auth: UpstreamAuth;
  wrap: boolean;
  /** Set to make the pool check sessions. */
  isLive?: (key: string) => boolean;
  #waiters: (() => void)[] = [];
  #socks = new Set<net.Socket>();

  constructor(public port: number, opts: { wrap?: boolean; auth?: UpstreamAuth } = {}) {
    this.wrap = opts.wrap ?? false;
    this.auth = opts.auth ?? {};
  }

  async dial(signal?: AbortSignal): Promise<DialedStream> {
    if (this.mode === "noagent") throw new NoAgentError();
    if (this.mode === "fail") {
      throw new Error("dial tcp 10.96.0.1:443: connect: connection refused");
    }
    const sock = net.connect(this.port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      sock.once("connect", () => resolve());
      sock.once("error", reject);
    });
    if (signal?.aborted) {
      sock.destroy();
      throw new Error("aborted");
    }
    this.dials++;
    this.open++;
    this.#socks.add(sock);
    sock.once("close", () => {
      this.#socks.delete(sock);
      this.open--;
      for (const w of this.#waiters.splice(0)) w();
    });
    return { stream: this.wrap ? new WrappedStream(sock) : sock, key: this.key, auth: this.auth };
  }

  /** Destroy every open stream (as losing the agent's session does). */
  killAll(): void {
    for (const s of this.#socks) s.destroy();
  }

  /** Resolves once `open === n` (rejects after `ms`, a safety net). */
  waitOpen(n: number, ms = 5_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`open streams ${this.open}, want ${n}`)), ms);
      const check = () => {
        if (this.open === n) {
          clearTimeout(timer);
          resolve();
        } else this.#waiters.push(check);
      };
      check();
    });
  }
}

/** A listener on 127.0.0.1 and a way to close it and its connections. */
export interface TestServer {
  port: number;
  close(): Promise<void>;
}

/** Listen with `server` on 127.0.0.1:0, tracking connections so close() can drop them. */
export async function listenLocal(server: net.Server): Promise<TestServer> {
  const socks = new Set<net.Socket>();
  server.on("connection", (s: net.Socket) => {
    socks.add(s);
    s.once("close", () => socks.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of socks) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** An {@link HttpProxy} served on a plain 127.0.0.1 listener. */
export interface PlainProxy extends TestServer {
  proxy: HttpProxy;
}

/** Start an {@link HttpProxy} (kubesphere kind unless overridden) behind a TCP listener. */
export async function startPlainProxy(
  dialer: UpstreamDialer,
  opts: Partial<HttpProxyOptions> = {},
): Promise<PlainProxy> {
  const proxy = new HttpProxy({
    cluster: "alpha",
    kind: "kubesphere",
    dialer,
    proto: "http",
    stripAuthorization: false,
    ...opts,
  });
  const server = net.createServer((sock) => {
    void proxy.serve(sock, { remoteAddress: sock.remoteAddress ?? "" });
  });
  const s = await listenLocal(server);
  return {
    proxy,
    port: s.port,
    close: async () => {
      proxy.close();
      await s.close();
    },
  };
}

/** A raw response read by {@link RawClient}. */
export interface RawResponse {
  status: number;
  /** Header names lowercased; repeated fields joined with ", ". */
  headers: Record<string, string>;
  /** Raw header lines as received. */
  rawHead: string;
  body: Buffer;
}

/** A raw HTTP/1.1 client on one TCP connection, reading bytes exactly. */
export class RawClient {
  readonly sock: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #ended = false;
  #closed = false;
  #wake: (() => void) | null = null;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on("data", (d: Buffer) => {
      this.#buf = this.#buf.length ? Buffer.concat([this.#buf, d]) : d;
      this.#notify();
    });
    sock.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      this.#closed = true;
      this.#notify();
    });
  }

  /** Read from an already connected socket (e.g. a `tls.TLSSocket`). */
  static of(sock: net.Socket): RawClient {
    return new RawClient(sock);
  }

  /** Connect to 127.0.0.1:`port`. */
  static async connect(port: number): Promise<RawClient> {
    const sock = net.connect(port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      sock.once("connect", () => resolve());
      sock.once("error", reject);
    });
    return new RawClient(sock);
  }

  /** Whether the server ended or closed the connection. */
  get ended(): boolean {
    return this.#ended || this.#closed;
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  #wait(): Promise<void> {
    if (this.#ended || this.#closed) return Promise.reject(new Error("connection ended"));
    return new Promise((resolve) => (this.#wake = resolve));
  }

  /** Send bytes. */
  write(data: string | Uint8Array): void {
    this.sock.write(typeof data === "string" ? Buffer.from(data, "latin1") : data);
  }

  /** Read exactly `n` bytes. */
  async readBytes(n: number): Promise<Buffer> {
    while (this.#buf.length < n) await this.#wait();
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Read whatever arrives next (at least one byte). */
  async readSome(): Promise<Buffer> {
    while (this.#buf.length === 0) await this.#wait();
    const out = this.#buf;
    this.#buf = Buffer.alloc(0);
    return out;
  }

  /** Read until the server closes. */
  async readToEnd(): Promise<Buffer> {
    while (!this.#ended && !this.#closed) await this.#wait().catch(() => {});
    const out = this.#buf;
    this.#buf = Buffer.alloc(0);
    return out;
  }

  /** Read one response head. */
  async readHead(): Promise<RawResponse> {
    let i: number;
    while ((i = this.#buf.indexOf("\r\n\r\n")) < 0) await this.#wait();
    const rawHead = this.#buf.subarray(0, i).toString("latin1");
    this.#buf = this.#buf.subarray(i + 4);
    const lines = rawHead.split("\r\n");
    const status = Number(lines[0].split(" ")[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const c = l.indexOf(":");
      const k = l.slice(0, c).toLowerCase();
      const v = l.slice(c + 1).trim();
      headers[k] = headers[k] ? `${headers[k]}, ${v}` : v;
    }
    return { status, headers, rawHead, body: Buffer.alloc(0) };
  }

  /** Read one complete response (Content-Length, chunked, or until close). */
  async readResponse(method = "GET"): Promise<RawResponse> {
    return await this.readBody(await this.readHead(), method);
  }

  /** Read the body of `res` (a head from {@link readHead}) into `res.body`. */
  async readBody(res: RawResponse, method = "GET"): Promise<RawResponse> {
    if (method === "HEAD" || res.status === 204 || res.status === 304 || res.status < 200) {
      return res;
    }
    if (res.headers["transfer-encoding"]?.includes("chunked")) {
      const parts: Buffer[] = [];
      for (;;) {
        let i: number;
        while ((i = this.#buf.indexOf("\r\n")) < 0) await this.#wait();
        const size = parseInt(this.#buf.subarray(0, i).toString("latin1"), 16);
        this.#buf = this.#buf.subarray(i + 2);
        if (size === 0) {
          while ((i = this.#buf.indexOf("\r\n")) < 0) await this.#wait();
          this.#buf = this.#buf.subarray(i + 2); // no trailers in these tests
          break;
        }
        parts.push(await this.readBytes(size));
        await this.readBytes(2);
      }
      res.body = Buffer.concat(parts);
    } else if (res.headers["content-length"] !== undefined) {
      res.body = await this.readBytes(Number(res.headers["content-length"]));
    } else {
      res.body = await this.readToEnd();
    }
    return res;
  }

  /** Destroy the connection and wait until it is closed. */
  async close(): Promise<void> {
    if (!this.#closed) {
      const closed = new Promise((r) => this.sock.once("close", r));
      this.sock.destroy();
      await closed;
    }
  }
}

/** Resolve when `emitter` emits `event` (rejects after `ms`, a safety net). */
export function once<T = unknown>(
  emitter: {
    once(ev: string, fn: (v: T) => void): unknown;
    off(ev: string, fn: (v: T) => void): unknown;
  },
  event: string,
  ms = 10_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = (v: T) => {
      clearTimeout(timer);
      resolve(v);
    };
    const timer = setTimeout(() => {
      emitter.off(event, fn);
      reject(new Error(`timed out waiting for ${event}`));
    }, ms);
    emitter.once(event, fn);
  });
}
