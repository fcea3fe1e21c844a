/**
 * Generated HTTP/1.1 request streams for the differential test
 * (`llhttp_diff_test.ts`): requests built from ordinary parts or, in an
 * adversarial request, from the parts parsers disagree on (Content-Length
 * and Transfer-Encoding variants, line ends, field names and separators,
 * control bytes, versions, targets, chunk sizes, extensions, trailers), a
 * second request behind the first, and random byte mutations.
 * @module
 */

import { Buffer } from "node:buffer";
import fc from "fast-check";

/** `clean` always; in an adversarial request, `dirty` one time in `odds`. */
function knob<T>(bad: boolean, clean: fc.Arbitrary<T>, dirty: fc.Arbitrary<T>, odds = 4) {
  if (!bad) return clean;
  return fc.oneof({ weight: odds - 1, arbitrary: clean }, { weight: 1, arbitrary: dirty });
}

const CRLF = fc.constant("\r\n");
const BAD_EOL = fc.constantFrom("\n", "\r", "\r\r\n", "\n\r", " \r\n");

const METHOD = fc.constantFrom("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS");
const TARGET = fc.constantFrom("/", "/api/v1/pods?watch=true", "/a/b%20c", "http://a/b", "*");
const BAD_TARGET = fc.oneof(
  fc.constantFrom("https://a:1/?q", "HTTP://[::1]/", "a", "//x", "http://", "/\xe9", "*x"),
  fc.string({ unit: fc.integer({ min: 0x21, max: 0x7f }).map((c) => String.fromCharCode(c)) })
    .map((s) => "/" + s),
);
const VERSION = fc.constantFrom("HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0");
const BAD_VERSION = fc.constantFrom("HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.1 ");

const VALUE = fc.constantFrom("a", "x y", "1", "", "caf\xe9", "a\tb", "q=0.5, *", " a ");
const BAD_VALUE = fc.string({
  unit: fc.constantFrom("a", " ", "\t", "\0", "\r", "\n", "\x7f", "\x80", "\x01", ",", '"'),
  maxLength: 4,
});
const NAME = fc.constantFrom("X-A", "Accept", "User-Agent", "Connection", "Expect");
const BAD_NAME = fc.constantFrom("X A", "X\0", "", "X\xe9", "(X)", " X", "X\t", "\tX", "Host");
const SEP = fc.constantFrom(": ", ":", ":\t");
const BAD_SEP = fc.constantFrom(" : ", " :", "\t:");

const CL_VALUE = fc.constantFrom("", "", "", " LEN", "0LEN"); // LEN: the real length
const BAD_CL_VALUE = fc.constantFrom(
  "TWICE", // two Content-Length fields of the real length
  "LEN, LEN",
  "+LEN",
  "-1",
  "LEN LEN",
  "EMPTY",
  "0x3",
  "1e1",
  "LEN\t",
  "99999999999999999999",
  "18446744073709551616",
);
const TE_VALUE = fc.constantFrom("chunked", "Chunked", " chunked");
const BAD_TE_VALUE = fc.constantFrom(
  "gzip, chunked",
  "chunked, gzip",
  "identity",
  "chunked, chunked",
  "EMPTY",
  "chunked;q=1",
  "xchunked",
  "chunked\x0b",
  "chunked\t",
);

const EXT = fc.constantFrom("", "", "", "", ";a", ";a=b", ';a="b c"', ';a="\\""', ";a=b;c");
const BAD_EXT = fc.constantFrom(
  " ;a",
  "; a",
  ";a =b",
  ";",
  ";a=",
  ';a="x"y',
  ";a=\x01",
  " ",
  "\t",
  ";a\xe9",
  ';a="\r"',
);
const TRAILERS = fc.constantFrom("", "", "", "X: y\r\n", "X: y\r\nZ:\r\n", "X: \xe9\r\n");
const BAD_TRAILERS = fc.constantFrom(
  "X : y\r\n",
  "X: y\r\n z\r\n",
  "X: y\n",
  "X: \0\r\n",
  "Xy\r\n",
  ":x\r\n",
  "X: a\rb\r\n",
  "X: y\r\n\n",
);
const SIZE_FORM = fc.constantFrom("lower", "upper", "zeros");
const BAD_SIZE_FORM = fc.constantFrom("space", "huge", "tab", "plus");

type SizeForm = "lower" | "upper" | "zeros" | "space" | "huge" | "tab" | "plus";

function chunkSize(n: number, form: SizeForm): string {
  const hex = n.toString(16);
  switch (form) {
    case "upper":
      return hex.toUpperCase();
    case "zeros":
      return "000" + hex;
    case "space":
      return hex + " ";
    case "tab":
      return hex + "\t";
    case "plus":
      return "+" + hex;
    case "huge":
      return "1" + "0".repeat(16) + hex;
    default:
      return hex;
  }
}

/** A request; `bad`: some of its parts are the things parsers disagree on. */
function request(bad: boolean): fc.Arbitrary<string> {
  const eol = knob(bad, CRLF, BAD_EOL, 12);
  const field = fc.tuple(
    knob(bad, NAME, BAD_NAME, 12),
    knob(bad, SEP, BAD_SEP, 12),
    knob(bad, VALUE, BAD_VALUE, 8),
    eol,
  );
  return fc.record({
    method: METHOD,
    target: knob(bad, TARGET, BAD_TARGET, 10),
    version: knob(bad, VERSION, BAD_VERSION, 10),
    host: knob(bad, fc.constant(1), fc.constantFrom(0, 2), 8),
    fields: fc.array(field, { maxLength: 3 }),
    headEol: eol,
    framing: fc.constantFrom("none", "length", "chunked", "chunked", "both"),
    cl: knob(bad, CL_VALUE, BAD_CL_VALUE, 6),
    te: knob(bad, TE_VALUE, BAD_TE_VALUE, 6),
    data: fc.array(fc.string({ maxLength: 20, unit: "binary-ascii" }), { maxLength: 3 }),
    ext: knob(bad, EXT, BAD_EXT, 6),
    sizeForm: knob<SizeForm>(bad, SIZE_FORM, BAD_SIZE_FORM, 10),
    trailers: knob(bad, TRAILERS, BAD_TRAILERS, 6),
    // Line ends after chunk sizes, after chunk data, and of the last two lines.
    chunkEols: fc.tuple(
      knob(bad, CRLF, BAD_EOL, 12),
      knob(bad, CRLF, BAD_EOL, 12),
      knob(bad, CRLF, BAD_EOL, 12),
    ),
  }).map((r) => {
    let body = "";
    // HTTP/1.0 with Transfer-Encoding is one of the adversarial cases.
    const chunked = (r.framing === "chunked" || r.framing === "both") &&
      (bad || r.version !== "HTTP/1.0");
    if (chunked) {
      const [size, data, last] = r.chunkEols;
      for (const d of r.data) {
        if (d.length > 0) body += `${chunkSize(d.length, r.sizeForm)}${r.ext}${size}${d}${data}`;
      }
      body += `0${r.ext}${last}${r.trailers}${last}`;
    } else if (r.framing === "length") body = r.data.join("");
    const fill = (v: string) => v === "EMPTY" ? "" : v.replaceAll("LEN", String(body.length));
    const lines: string[] = [];
    if (r.host >= 1) lines.push(`Host: a${r.headEol}`);
    for (const [n, s, v, e] of r.fields) {
      // Values of Connection are read as tokens: keep them meaningful.
      lines.push(`${n}${s}${n === "Connection" ? (v === "a" ? "close" : "keep-alive") : v}${e}`);
    }
    if (chunked) lines.push(`Transfer-Encoding: ${fill(r.te)}${r.headEol}`);
    if (r.framing === "length" || r.framing === "both" || (r.framing === "none" && r.cl !== "")) {
      const cl = `Content-Length: ${fill(r.cl === "" || r.cl === "TWICE" ? "LEN" : r.cl)}`;
      lines.push(cl + r.headEol);
      if (r.cl === "TWICE") lines.push(cl + r.headEol);
    }
    if (r.host === 2) lines.push(`Host: b${r.headEol}`);
    return `${r.method} ${r.target} ${r.version}${r.headEol}${lines.join("")}${r.headEol}${body}`;
  });
}

/** A byte stream: one request, maybe a second behind it, maybe mutated. */
export const STREAM = fc.record({
  bad: fc.boolean(),
  second: fc.option(request(false), { freq: 3 }),
  // One stream in four gets one or two bytes inserted, replaced or deleted anywhere.
  mutations: fc.oneof(
    { weight: 3, arbitrary: fc.constant([]) },
    {
      weight: 1,
      arbitrary: fc.array(
        fc.tuple(
          fc.nat(),
          fc.constantFrom("insert", "replace", "delete"),
          fc.constantFrom(
            "\r",
            "\n",
            " ",
            "\t",
            ":",
            ";",
            "\0",
            '"',
            ",",
            "a",
            "0",
            "\x80",
            "\x7f",
          ),
        ),
        { minLength: 1, maxLength: 2 },
      ),
    },
  ),
}).chain(({ bad, second, mutations }) =>
  request(bad).map((first) => {
    let s = first + (second ?? "");
    for (const [pos, op, ch] of mutations) {
      const p = pos % (s.length + 1);
      if (op === "insert") s = s.slice(0, p) + ch + s.slice(p);
      else if (op === "replace") s = s.slice(0, p) + ch + s.slice(p + 1);
      else s = s.slice(0, p) + s.slice(p + 1);
    }
    return Buffer.from(s, "latin1");
  })
);
