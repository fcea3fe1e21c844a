import { Buffer } from "node:buffer";
import fc from "fast-check";
import { ChunkedError, ChunkedScanner } from "../../../lib/proxy/http/chunked.ts";
import { assert, assertEquals, assertThrows } from "../../helpers/assert.ts";

function encode(parts: Uint8Array[], trailers = "", ext = ""): Buffer {
  const out: Buffer[] = [];
  for (const p of parts) {
    if (p.length === 0) continue;
    out.push(
      Buffer.from(`${p.length.toString(16)}${ext}\r\n`),
      Buffer.from(p),
      Buffer.from("\r\n"),
    );
  }
  out.push(Buffer.from(`0${ext}\r\n${trailers}\r\n`));
  return Buffer.concat(out);
}

/** Feed `wire` split at `cuts`; returns where the body ended (absolute) and the data. */
function scanSplit(wire: Buffer, cuts: number[]): { end: number; data: Buffer } {
  const s = new ChunkedScanner();
  const data: Buffer[] = [];
  const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b);
  let from = 0;
  for (const to of [...points, wire.length]) {
    if (to <= from) continue;
    const piece = wire.subarray(from, to);
    const end = s.scan(piece, 0, (b, x, y) => data.push(Buffer.from(b.subarray(x, y))));
    if (s.done) return { end: from + end, data: Buffer.concat(data) };
    assertEquals(end, piece.length);
    from = to;
  }
  return { end: -1, data: Buffer.concat(data) };
}

Deno.test("chunked scanner: any split of any body finds the exact end and the data", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }),
      fc.array(fc.nat(4000), { maxLength: 12 }),
      fc.constantFrom("", "X-Checksum: abc\r\n", "A: 1\r\nB: 2\r\n"),
      fc.constantFrom("", ";name=value", ';a;b="q"'),
      fc.uint8Array({ maxLength: 40 }),
      (parts, cuts, trailers, ext, after) => {
        const body = encode(parts, trailers, ext);
        const wire = Buffer.concat([body, Buffer.from(after)]);
        const { end, data } = scanSplit(wire, cuts);
        assertEquals(end, body.length);
        assertEquals(data, Buffer.concat(parts.map((p) => Buffer.from(p))));
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("chunked scanner: bare LF line endings and upper-case hex are accepted", () => {
  const s = new ChunkedScanner();
  const wire = Buffer.from("A\nabcdefghij\n0\n\nrest");
  assertEquals(s.scan(wire), wire.length - 4);
  assert(s.done);
});

Deno.test("chunked scanner: malformed framing is refused", () => {
  for (const bad of ["zz\r\n", "\r\n", "5\r\nabcdeXX", "1" + "0".repeat(14) + "\r\n", "5\rX"]) {
    assertThrows(() => new ChunkedScanner().scan(Buffer.from(bad)), ChunkedError, undefined);
  }
  const longExt = Buffer.from(`1;${"x".repeat(5000)}\r\n`);
  assertThrows(() => new ChunkedScanner().scan(longExt), ChunkedError);
  const s = new ChunkedScanner();
  s.scan(Buffer.from("0\r\n"));
  assertThrows(() => s.scan(Buffer.from(`X: ${"y".repeat(5000)}\r\n`)), ChunkedError);
});
