/**
 * A small HTTP/1.1 client for the benchmark, over any byte connection (TCP,
 * TLS, or a tunnelled stream). It keeps the connection alive between requests,
 * reads bodies framed by Content-Length, chunked encoding or EOF, and counts
 * body bytes instead of keeping them, so that the client costs the same on
 * every path and as little as possible.
 * @module
 */

/** The byte-stream operations the client needs (`Deno.Conn` has them). */
export interface ByteConn {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/** A response: status, selected headers, and the number of body bytes read. */
export interface HttpResult {
  status: number;
  /** Lower-case header names; the last value of each. */
  headers: Map<string, string>;
  bodyBytes: number;
  /** The body as text, when asked for with `keepBody`. */
  body?: string;
}

/** Options of one request. */
export interface RequestOptions {
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Send this many bytes of `bodyChunk` (repeated) as the body, with Content-Length. */
  bodySize?: number;
  /** Keep the response body (small bodies only). */
  keepBody?: boolean;
  /** Called for each piece of body received (byte count); for throughput meters. */
  onBody?: (n: number) => void;
  /** Stop reading the body when this returns true (the connection is then unusable). */
  stop?: () => boolean;
}

const CRLF2 = new Uint8Array([13, 10, 13, 10]);
const MAX_HEAD = 64 * 1024;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** 1 MiB of filler used as request bodies. */
export const bodyChunk: Uint8Array = (() => {
  const b = new Uint8Array(1 << 20);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
})();

/** A keep-alive HTTP/1.1 connection. */
export class HttpConnection {
  #conn: ByteConn;
  #host: string;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  #eof = false;
  #closed = false;
  /** A response was abandoned part-way (`stop`): the connection cannot be reused. */
  #abandoned = false;

  constructor(conn: ByteConn, host: string, bufferSize = 256 * 1024) {
    this.#conn = conn;
    this.#host = host;
    this.#buf = new Uint8Array(bufferSize);
  }

  /** Whether the server closed its side (the connection cannot be reused). */
  get closed(): boolean {
    return this.#closed || this.#eof || this.#abandoned;
  }

  /** Send one request and read its whole response. */
  async request(method: string, path: string, opts: RequestOptions = {}): Promise<HttpResult> {
    if (this.closed) throw new Error(`${method} ${path}: connection closed`);
    let head = `${method} ${path} HTTP/1.1\r\nHost: ${this.#host}\r\n`;
    for (const [k, v] of Object.entries(opts.headers ?? {})) head += `${k}: ${v}\r\n`;
    const size = opts.bodySize ?? 0;
    if (size > 0 || method === "PUT" || method === "POST") head += `Content-Length: ${size}\r\n`;
    head += "\r\n";
    await this.#writeAll(enc.encode(head));
    for (let left = size; left > 0;) {
      const n = Math.min(left, bodyChunk.length);
      await this.#writeAll(bodyChunk.subarray(0, n));
      left -= n;
    }
    return await this.#response(method, opts);
  }

  /** Close the connection. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }

  async #writeAll(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) off += await this.#conn.write(data.subarray(off));
  }

  /** Read more bytes into the buffer; false at EOF. */
  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    else if (this.#end === this.#buf.length) {
      if (this.#start === 0) throw new Error("response head too large");
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const n = await this.#conn.read(this.#buf.subarray(this.#end));
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#end += n;
    return true;
  }

  /** Index of `\r\n\r\n` (or `\r\n` when `lineOnly`) from #start, or -1. */
  #find(pat: Uint8Array): number {
    const b = this.#buf;
    outer: for (let i = this.#start; i + pat.length <= this.#end; i++) {
      for (let j = 0; j < pat.length; j++) if (b[i + j] !== pat[j]) continue outer;
      return i;
    }
    return -1;
  }

  async #readUntil(pat: Uint8Array, what: string): Promise<string> {
    for (;;) {
      const i = this.#find(pat);
      if (i >= 0) {
        const text = dec.decode(this.#buf.subarray(this.#start, i));
        this.#start = i + pat.length;
        return text;
      }
      if (this.#end - this.#start > MAX_HEAD) throw new Error(`${what} too large`);
      if (!(await this.#fill())) throw new Error(`connection closed while reading ${what}`);
    }
  }

  async #response(method: string, opts: RequestOptions): Promise<HttpResult> {
    const head = await this.#readUntil(CRLF2, "response head");
    const lines = head.split("\r\n");
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
    if (!m) throw new Error(`bad status line ${JSON.stringify(lines[0].slice(0, 80))}`);
    const status = Number(m[1]);
    const headers = new Map<string, string>();
    for (const l of lines.slice(1)) {
      const c = l.indexOf(":");
      if (c > 0) headers.set(l.slice(0, c).trim().toLowerCase(), l.slice(c + 1).trim());
    }
    if (status === 100) return this.#response(method, opts);
    const parts: Uint8Array[] = [];
    const sink = (b: Uint8Array) => {
      opts.onBody?.(b.length);
      if (opts.keepBody) parts.push(b.slice());
    };
    let bodyBytes = 0;
    if (method === "HEAD" || status === 204 || status === 304) {
      bodyBytes = 0;
    } else if ((headers.get("transfer-encoding") ?? "").toLowerCase().includes("chunked")) {
      bodyBytes = await this.#chunked(sink, opts.stop);
    } else if (headers.has("content-length")) {
      bodyBytes = await this.#consume(Number(headers.get("content-length")), sink, opts.stop);
    } else {
      bodyBytes = await this.#consume(Infinity, sink, opts.stop);
    }
    if ((headers.get("connection") ?? "").toLowerCase() === "close") this.#eof = true;
    const result: HttpResult = { status, headers, bodyBytes };
    if (opts.keepBody) {
      const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of parts) {
        all.set(p, o);
        o += p.length;
      }
      result.body = dec.decode(all);
    }
    return result;
  }

  /** Skip `n` body bytes (Infinity: until EOF); returns how many were read. */
  async #consume(
    n: number,
    sink: (b: Uint8Array) => void,
    stop?: () => boolean,
  ): Promise<number> {
    let got = 0;
    while (got < n) {
      if (this.#start === this.#end) {
        if (stop?.()) {
          this.#abandoned = true; // close() still closes it
          return got;
        }
        if (!(await this.#fill())) {
          if (n === Infinity) return got;
          throw new Error(`connection closed after ${got} of ${n} body bytes`);
        }
      }
      const take = Math.min(n - got, this.#end - this.#start);
      sink(this.#buf.subarray(this.#start, this.#start + take));
      this.#start += take;
      got += take;
    }
    return got;
  }

  async #chunked(sink: (b: Uint8Array) => void, stop?: () => boolean): Promise<number> {
    const CRLF = CRLF2.subarray(0, 2);
    let total = 0;
    for (;;) {
      const line = await this.#readUntil(CRLF, "chunk size");
      const size = parseInt(line.split(";")[0].trim(), 16);
      if (!Number.isFinite(size)) throw new Error(`bad chunk size ${JSON.stringify(line)}`);
      if (size === 0) {
        while ((await this.#readUntil(CRLF, "trailer")) !== "");
        return total;
      }
      total += await this.#consume(size, sink, stop);
      if (this.#abandoned) return total;
      await this.#readUntil(CRLF, "chunk end");
    }
  }
}
