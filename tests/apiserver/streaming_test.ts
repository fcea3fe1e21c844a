/**
 * Upgrade and streaming endpoints with raw clients: SPDY/3.1 upgrade echoing
 * raw bytes, WebSocket portforward echoing messages, WebSocket exec
 * (`v5.channel.k8s.io`) channels and status, 401/404 on upgrades, and a
 * followed log that stops when the client goes away.
 * @module
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { startTestApiServer, type TestApiServer } from "./server.ts";
import { deadline, httpClient } from "./testing.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A TLS connection with a buffered reader. */
class Raw {
  #buf = new Uint8Array(0);
  constructor(readonly conn: Deno.TlsConn) {}

  static async open(s: TestApiServer, auth = true): Promise<Raw> {
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: s.port,
      caCerts: [s.caPem],
      ...(auth ? { cert: s.tls.adminCertPem, key: s.tls.adminKeyPem } : {}),
    });
    return new Raw(conn);
  }

  async write(b: Uint8Array | string): Promise<void> {
    const bytes = typeof b === "string" ? enc.encode(b) : b;
    let off = 0;
    while (off < bytes.length) off += await this.conn.write(bytes.subarray(off));
  }

  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(16384);
    const n = await deadline(this.conn.read(chunk), 5000, "read");
    if (n === null) return false;
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  async readExactly(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) if (!await this.#fill()) throw new Error("eof");
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  async readHead(): Promise<string> {
    for (;;) {
      const i = dec.decode(this.#buf).indexOf("\r\n\r\n");
      if (i >= 0) {
        const head = dec.decode(this.#buf.slice(0, i));
        this.#buf = this.#buf.slice(i + 4);
        return head;
      }
      if (!await this.#fill()) throw new Error("eof before end of head");
    }
  }

  /** Read one (unmasked, unfragmented) WebSocket frame. */
  async readFrame(): Promise<{ opcode: number; payload: Uint8Array }> {
    const h = await this.readExactly(2);
    let len = h[1] & 0x7f;
    if (len === 126) {
      const l = await this.readExactly(2);
      len = (l[0] << 8) | l[1];
    } else if (len === 127) {
      const l = await this.readExactly(8);
      len = Number(new DataView(l.buffer).getBigUint64(0));
    }
    return { opcode: h[0] & 0x0f, payload: await this.readExactly(len) };
  }

  /** Write one masked binary frame. */
  async writeFrame(payload: Uint8Array, opcode = 2): Promise<void> {
    const mask = crypto.getRandomValues(new Uint8Array(4));
    const head = payload.length < 126
      ? [0x80 | opcode, 0x80 | payload.length]
      : [0x80 | opcode, 0x80 | 126, payload.length >> 8, payload.length & 255];
    const masked = payload.map((b, i) => b ^ mask[i & 3]);
    const frame = new Uint8Array(head.length + 4 + masked.length);
    frame.set(head);
    frame.set(mask, head.length);
    frame.set(masked, head.length + 4);
    await this.write(frame);
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }
}

function wsRequest(path: string, protocols: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
    `Sec-WebSocket-Protocol: ${protocols}\r\n\r\n`;
}

Deno.test("streaming endpoints of the test API server", async (t) => {
  const s = await startTestApiServer({ logLineIntervalMs: 20 });
  try {
    await t.step("SPDY/3.1 upgrade answers 101 and echoes raw bytes", async () => {
      const c = await Raw.open(s);
      try {
        await c.write(
          "POST /api/v1/namespaces/default/pods/web-0/portforward HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
            "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n" +
            "X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n",
        );
        const head = await c.readHead();
        assertMatch(head, /^HTTP\/1\.1 101 /);
        assertMatch(head, /X-Stream-Protocol-Version: portforward\.k8s\.io/i);
        const payload = crypto.getRandomValues(new Uint8Array(50_000));
        await c.write(payload);
        assertEquals(await c.readExactly(payload.length), payload);
        assertEquals(s.streams.spdySessions, 1);
      } finally {
        c.close();
      }
    });

    await t.step("WebSocket portforward echoes each message", async () => {
      const c = await Raw.open(s);
      try {
        await c.write(
          wsRequest(
            "/api/v1/namespaces/default/pods/web-1/portforward?ports=80",
            "SPDY/3.1+portforward.k8s.io",
          ),
        );
        const head = await c.readHead();
        assertMatch(head, /^HTTP\/1\.1 101 /);
        assertMatch(head, /Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/);
        await c.writeFrame(enc.encode("ping through portforward"));
        const f = await c.readFrame();
        assertEquals([f.opcode, dec.decode(f.payload)], [2, "ping through portforward"]);
      } finally {
        c.close();
      }
    });

    await t.step("WebSocket exec v5: stdin echoed on stdout, close → Success status", async () => {
      const c = await Raw.open(s);
      try {
        await c.write(
          wsRequest(
            "/api/v1/namespaces/default/pods/web-0/exec?command=cat&stdin=true&stdout=true",
            "v5.channel.k8s.io, v4.channel.k8s.io",
          ),
        );
        const head = await c.readHead();
        assertMatch(head, /Sec-WebSocket-Protocol: v5\.channel\.k8s\.io/);
        await c.writeFrame(new Uint8Array([0, ...enc.encode("abc")]));
        const out = await c.readFrame();
        assertEquals([out.payload[0], dec.decode(out.payload.subarray(1))], [1, "abc"]);
        await c.writeFrame(new Uint8Array([255, 0]));
        const status = await c.readFrame();
        assertEquals(status.payload[0], 3);
        assertEquals(JSON.parse(dec.decode(status.payload.subarray(1))).status, "Success");
        assertEquals((await c.readFrame()).opcode, 8, "close frame");
      } finally {
        c.close();
      }
    });

    await t.step("upgrades need authentication and an existing pod", async () => {
      const anon = await Raw.open(s, false);
      try {
        await anon.write(
          wsRequest("/api/v1/namespaces/default/pods/web-0/exec?command=cat", "v5.channel.k8s.io"),
        );
        assertMatch(await anon.readHead(), /^HTTP\/1\.1 401 /);
      } finally {
        anon.close();
      }
      const c = await Raw.open(s);
      try {
        await c.write(
          wsRequest("/api/v1/namespaces/default/pods/nope/exec?command=cat", "v5.channel.k8s.io"),
        );
        assertMatch(await c.readHead(), /^HTTP\/1\.1 404 /);
      } finally {
        c.close();
      }
    });

    await t.step("followed log streams lines until the client goes away", async () => {
      const client = httpClient(s);
      try {
        const res = await fetch(`${s.url}/api/v1/namespaces/default/pods/web-0/log?follow=true`, {
          client,
        });
        assertEquals(res.status, 200);
        const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
        let text = "";
        while (!text.includes("line 6\n")) {
          const r = await deadline(reader.read(), 5000, "log lines");
          assert(!r.done, "log ended early");
          text += r.value;
        }
        assertEquals(s.core.openLogStreams, 1);
        await reader.cancel();
        await deadline(s.core.logStreamsIdle(), 5000, "server stops streaming");
        assertEquals(s.core.openLogStreams, 0);
      } finally {
        client.close();
      }
    });
  } finally {
    await s.close();
  }
});
