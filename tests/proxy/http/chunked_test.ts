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

Deno.test("chunked scanner: upper-case hex and leading zeros are read", () => {
  const s = new ChunkedScanner();
  const wire = Buffer.from("A\r\nabcdefghij\r\n00\r\n\r\nrest");
  assertEquals(s.scan(wire), wire.length - 4);
  assert(s.done);
});

/** Whether `text`, scanned whole, is refused. */
function refused(text: string): boolean {
  try {
    new ChunkedScanner().scan(Buffer.from(text, "latin1"));
    return false;
  } catch (err) {
    assert(err instanceof ChunkedError);
    return true;
  }
}

Deno.test("chunked scanner: a bare LF anywhere in the framing is refused (as Go and llhttp do)", () => {
  for (
    const bad of [
      "3\nabc\r\n0\r\n\r\n", // after the size
      "3;a=b\nabc\r\n0\r\n\r\n", // after an extension
      "3\r\nabc\n0\r\n\r\n", // after the data
      "3\r\nabc\r\n0\n\r\n", // after the last chunk
      "3\r\nabc\r\n0\r\n\n", // the final line
      "3\r\nabc\r\n0\r\nX: y\n\r\n", // after a trailer
      "3\r\nabc\r\n0\r\n\r\r\n", // a CR too many
    ]
  ) assert(refused(bad), JSON.stringify(bad));
  assert(!refused("3\r\nabc\r\n0\r\nX: y\r\n\r\n"));
});

Deno.test("chunked scanner: chunk extensions must follow the grammar", () => {
  for (const ok of [";a", ";a=b", ';a="b c"', ';a="\\"\xe9"', ";a=b;c", ';a="";b=c']) {
    assert(!refused(`1${ok}\r\nx\r\n0${ok}\r\n\r\n`), JSON.stringify(ok));
  }
  for (
    const bad of [
      " ",
      "\t",
      " ;a",
      "; a",
      ";a =b",
      ";a= b",
      ";",
      ";;a",
      ";a=",
      ';a="x"y',
      ";a=\x01",
    ]
  ) assert(refused(`1${bad}\r\nx\r\n0\r\n\r\n`), JSON.stringify(bad));
  assert(refused('1;a="x\ry"\r\nx\r\n0\r\n\r\n'));
});

Deno.test("chunked scanner: trailer lines must be header fields", () => {
  for (const ok of ["X: y\r\n", "X:\r\n", "X: a\tb \xe9\r\n", "A: 1\r\nB: 2\r\n"]) {
    assert(!refused(`0\r\n${ok}\r\n`), JSON.stringify(ok));
  }
  for (
    const bad of [
      "X : y\r\n",
      "X: y\r\n z\r\n",
      " X: y\r\n",
      "Xy\r\n",
      ":x\r\n",
      "X: \0\r\n",
      "X: a\rb\r\n",
    ]
  ) assert(refused(`0\r\n${bad}\r\n`), JSON.stringify(bad));
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
