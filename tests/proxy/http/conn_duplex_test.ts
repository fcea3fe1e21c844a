/**
 * Deno TCP connections as the Duplex the HTTP engine serves, over real sockets on 127.0.0.1:
 * bytes both ways with backpressure, the peer's half-close, destroy, the peer address, and the
 * listener's bind errors and close. Deno's resource sanitizer checks that nothing leaks.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";
import { assert, assertEquals, assertRejects, assertThrows } from "../../helpers/assert.ts";
import { type ConnDuplex, listenConns } from "../../../lib/proxy/http/conn_duplex.ts";

/** Read `conn` to EOF. */
async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
  }
  return Buffer.concat(parts);
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

function serve(onConn: (sock: ConnDuplex) => void) {
  const errors: Error[] = [];
  const socks: Duplex[] = [];
  const l = listenConns("127.0.0.1", 0, (s) => {
    socks.push(s);
    onConn(s);
  }, (e) => errors.push(e));
  return {
    port: l.port,
    errors,
    async close() {
      l.close();
      await Promise.all(socks.map((s) =>
        s.destroyed && s.closed ? undefined : new Promise((r) => {
          s.once("close", r);
          s.destroy();
        })
      ));
    },
  };
}

Deno.test("conn_duplex: 16 MiB echoed through pipe() with backpressure; EOF ends our side too", async () => {
  const srv = serve((sock) => sock.pipe(sock));
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
    const data = new Uint8Array(16 << 20);
    for (let i = 0; i < data.length; i += 4096) data[i] = (i >> 12) & 0xff;
    const back = readAll(conn);
    await writeAll(conn, data);
    await conn.closeWrite(); // the server ends its side once everything is echoed
    const got = await back;
    conn.close();
    assertEquals(got.length, data.length);
    assertEquals(
      createHash("sha256").update(got).digest("hex"),
      createHash("sha256").update(data).digest("hex"),
    );
    assertEquals(srv.errors, []);
  } finally {
    await srv.close();
  }
});

Deno.test("conn_duplex: a reply written when the peer half-closes still goes out; remoteAddress", async () => {
  let remote = "";
  const srv = serve((sock) => {
    remote = sock.remoteAddress;
    const got: Buffer[] = [];
    sock.on("data", (c: Buffer) => got.push(c));
    sock.on("end", () => sock.write(`got ${Buffer.concat(got).length} bytes`));
  });
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
    await writeAll(conn, new Uint8Array(1000));
    await conn.closeWrite();
    const reply = new TextDecoder().decode(await readAll(conn));
    conn.close();
    assertEquals(reply, "got 1000 bytes");
    assertEquals(remote, "127.0.0.1");
  } finally {
    await srv.close();
  }
});

Deno.test("conn_duplex: destroy() closes the connection, the peer sees it end", async () => {
  const destroyed = Promise.withResolvers<void>();
  const srv = serve((sock) => {
    sock.once("data", () => {
      sock.destroy();
      sock.once("close", () => destroyed.resolve());
    });
  });
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
    await writeAll(conn, new TextEncoder().encode("x"));
    await destroyed.promise;
    // EOF or a reset: either way the read finishes instead of hanging.
    const n = await conn.read(new Uint8Array(16)).catch(() => null);
    assertEquals(n, null);
    conn.close();
  } finally {
    await srv.close();
  }
});

Deno.test("conn_duplex: a busy port is refused; after close() nothing accepts", async () => {
  const srv = serve(() => {});
  const port = srv.port;
  try {
    assertThrows(() => listenConns("127.0.0.1", port, () => {}, () => {}), Deno.errors.AddrInUse);
  } finally {
    await srv.close();
  }
  await assertRejects(() => Deno.connect({ hostname: "127.0.0.1", port }));
  assert(srv.errors.length === 0, srv.errors.map((e) => e.message).join("; "));
});
