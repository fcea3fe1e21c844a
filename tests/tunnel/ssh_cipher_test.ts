/**
 * The fast chacha20-poly1305@openssh.com against ssh2's own implementation: identical bytes
 * on the wire for the same packet, each side opens what the other sealed whatever the read
 * chunking, and tampering or a bad length is refused.
 */

import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import fc from "fast-check";
import cryptoModule from "ssh2/lib/protocol/crypto.js";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  acceptsLargePackets,
  CHACHA_POLY,
  checkChaChaPoly,
  installFastChaChaPoly,
  LARGE_PACKET_SIZE,
} from "../../lib/tunnel/ssh_cipher.ts";

// deno-lint-ignore no-explicit-any
type AnyFn = (this: any, ...args: any[]) => any;

const ssh2 = cryptoModule as unknown as {
  CIPHER_INFO: Record<string, unknown>;
  createCipher(c: unknown): Record<string, AnyFn>;
  createDecipher(c: unknown): Record<string, AnyFn>;
};

// ssh2's own methods, taken before the fast ones replace them.
const { cipherProto, decipherProto } = checkChaChaPoly();
const orig = {
  allocPacket: cipherProto.allocPacket as AnyFn,
  encrypt: cipherProto.encrypt as AnyFn,
  decrypt: decipherProto.decrypt as AnyFn,
};
await installFastChaChaPoly();
assert(cipherProto.encrypt !== orig.encrypt, "installed");

const info = ssh2.CIPHER_INFO[CHACHA_POLY];

function cipher(key: Buffer, seqno: number, out: Buffer[]) {
  return ssh2.createCipher({
    outbound: {
      seqno,
      onWrite: (b: Buffer) => out.push(Buffer.from(b)),
      cipherInfo: info,
      cipherKey: key,
    },
  });
}

function decipher(key: Buffer, seqno: number, out: Buffer[]) {
  return ssh2.createDecipher({
    inbound: {
      seqno,
      onPayload: (b: Buffer) => void out.push(Buffer.from(b)),
      decipherInfo: info,
      decipherKey: key,
    },
  });
}

/** Seal `payload` with both implementations using the same padding bytes. */
function sealBoth(
  key: Buffer,
  seqno: number,
  payload: Uint8Array,
): { ours: Buffer; theirs: Buffer } {
  const oursOut: Buffer[] = [];
  const theirsOut: Buffer[] = [];
  const a = cipher(key, seqno, oursOut);
  const b = cipher(key, seqno, theirsOut);
  const pa = a.allocPacket(payload.length) as Buffer;
  const pb = orig.allocPacket.call(b, payload.length) as Buffer;
  assertEquals(pa.length, pb.length + 16, "room for the MAC");
  pb.set(payload, 5);
  pa.set(pb, 0); // same header and padding
  a.encrypt(pa);
  orig.encrypt.call(b, pb);
  assertEquals(oursOut.length, 1, "one write per packet");
  return { ours: oursOut[0], theirs: Buffer.concat(theirsOut) };
}

/** Feed `wire` to `decrypt` in pieces cut at `cuts` (offsets). */
function feed(d: Record<string, AnyFn>, fn: AnyFn, wire: Buffer, cuts: number[]): void {
  const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((x, y) => x - y);
  let at = 0;
  for (const c of [...points, wire.length]) {
    if (c <= at) continue;
    const chunk = Buffer.from(wire.subarray(at, c)); // a fresh buffer, as a socket read is
    fn.call(d, chunk, 0, chunk.length);
    at = c;
  }
}

Deno.test("ssh_cipher: same bytes as ssh2 for the same packet; both open each other's", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 64, maxLength: 64 }),
      fc.oneof(fc.nat(1000), fc.constantFrom(0xffffffff, 0xfffffffe, 0x7fffffff)),
      fc.oneof(
        fc.uint8Array({ maxLength: 300 }),
        // Around 2 KiB the body moves from the TypeScript keystream to node:crypto's.
        fc.integer({ min: 2030, max: 2070 }).map((n) => new Uint8Array(randomBytes(n))),
        fc.integer({ min: 1000, max: 32768 + 9 }).map((n) => new Uint8Array(randomBytes(n))),
      ),
      fc.array(fc.nat(40_000), { maxLength: 6 }),
      (keyBytes, seqno, payload, cuts) => {
        const key = Buffer.from(keyBytes);
        const { ours, theirs } = sealBoth(key, seqno, payload);
        assertEquals(ours.toString("hex"), theirs.toString("hex"));

        const byOrig: Buffer[] = [];
        feed(decipher(key, seqno, byOrig), orig.decrypt, ours, cuts);
        const byFast: Buffer[] = [];
        const d = decipher(key, seqno, byFast);
        feed(d, d.decrypt, theirs, cuts);
        assertEquals(byOrig.length, 1);
        assertEquals(byFast.length, 1);
        assertEquals(byOrig[0].toString("hex"), Buffer.from(payload).toString("hex"));
        assertEquals(byFast[0].toString("hex"), Buffer.from(payload).toString("hex"));
      },
    ),
    { numRuns: 150 },
  );
});

Deno.test("ssh_cipher: a stream of packets, sequence numbers advancing, opened in one read", () => {
  const key = randomBytes(64);
  const wire: Buffer[] = [];
  const c = cipher(key, 0xfffffffe, wire); // wraps to 0 on the way
  const sent: string[] = [];
  for (let i = 0; i < 20; i++) {
    const payload = randomBytes(i * 997 % 5000);
    sent.push(payload.toString("hex"));
    const p = c.allocPacket(payload.length) as Buffer;
    p.set(payload, 5);
    c.encrypt(p);
  }
  const got: Buffer[] = [];
  const d = decipher(key, 0xfffffffe, got);
  const all = Buffer.concat(wire);
  d.decrypt(all, 0, all.length);
  assertEquals(got.map((b) => b.toString("hex")), sent);
});

Deno.test("ssh_cipher: tampered bytes, a wrong sequence number and a bad length are refused", () => {
  // A fixed key: with the wrong sequence number the length field decrypts to the same garbage
  // every run (a random key could, once in ~10^5 runs, yield a plausible length and no error).
  const key = Buffer.alloc(64, 0x5a);
  const { ours } = sealBoth(key, 7, randomBytes(500));
  for (const at of [0, 4, 100, ours.length - 16, ours.length - 1]) {
    const bad = Buffer.from(ours);
    bad[at] ^= 1;
    const d = decipher(key, 7, []);
    assertThrows(
      () => d.decrypt(bad, 0, bad.length),
      Error,
      at === 0 ? undefined : "Invalid MAC",
    );
  }
  const wrongSeq = decipher(key, 8, []);
  assertThrows(() => wrongSeq.decrypt(ours, 0, ours.length), Error, "Bad packet length");
  // A correctly sealed packet whose length field claims 4 GiB.
  const lenEnc: Buffer[] = [];
  const c = cipher(key, 9, lenEnc);
  const p = c.allocPacket(3) as Buffer;
  p.writeUInt32BE(0xfffffff0, 0);
  c.encrypt(p);
  const d = decipher(key, 9, []);
  assertThrows(() => d.decrypt(lenEnc[0], 0, lenEnc[0].length), Error, "Bad packet length");
});

Deno.test("ssh_cipher: 256 KiB payloads are sealed like ssh2 and opened; larger lengths refused", () => {
  const key = randomBytes(64);
  const payload = randomBytes(LARGE_PACKET_SIZE + 9); // CHANNEL_DATA header + 256 KiB of data
  const { ours, theirs } = sealBoth(key, 3, payload);
  assertEquals(ours.toString("hex"), theirs.toString("hex"));
  const got: Buffer[] = [];
  const d = decipher(key, 3, got);
  feed(d, d.decrypt, ours, [1000, 70_000, 200_000]);
  assertEquals(got.length, 1);
  assert(got[0].equals(payload));
  // ssh2's own decipher refuses what it never announces.
  assertThrows(
    () => orig.decrypt.call(decipher(key, 3, []), ours, 0, ours.length),
    Error,
    "Bad packet length",
  );

  const big: Buffer[] = [];
  const c = cipher(key, 4, big);
  const p = c.allocPacket(LARGE_PACKET_SIZE + 2048) as Buffer;
  c.encrypt(p);
  const d2 = decipher(key, 4, []);
  assertThrows(() => d2.decrypt(big[0], 0, big[0].length), Error, "Bad packet length");
});

Deno.test("ssh_cipher: large packets are announced only for inbound packets this module opens", () => {
  const key = randomBytes(64);
  assert(acceptsLargePackets(decipher(key, 0, [])));
  const gcm = ssh2.createDecipher({
    inbound: {
      seqno: 0,
      onPayload() {},
      decipherInfo: ssh2.CIPHER_INFO["aes128-gcm@openssh.com"],
      decipherKey: randomBytes(16),
      decipherIV: randomBytes(12),
    },
  });
  assert(!acceptsLargePackets(gcm));
  assert(!acceptsLargePackets(undefined));
});
