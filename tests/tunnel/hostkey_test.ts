import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { createPublicKey, generateKeyPairSync, verify } from "node:crypto";
import { Buffer } from "node:buffer";
import { generateHostKeyPem, parseHostKey } from "../../lib/tunnel/hostkey.ts";

Deno.test("parseHostKey: its ssh2 key signs so that the host key verifies, hash as ssh2 picks it", () => {
  const pem = generateHostKeyPem();
  const host = parseHostKey(pem);
  const key = host.sshKey;
  assertEquals(key.type, "ecdsa-sha2-nistp256");
  assert(Object.hasOwn(key, "sign"), "signs through its own KeyObject, not ssh2's PEM path");
  const data = Buffer.from("exchange hash");
  const pub = createPublicKey(pem);
  const sig = key.sign(data);
  assert(!(sig instanceof Error), String(sig));
  assert(verify("sha256", data, pub, sig as Buffer), "default hash is sha256 for P-256");
  assert(!verify("sha256", Buffer.from("other"), pub, sig as Buffer));
  // ssh2's own verify of its own key type agrees (the path a client takes).
  assert(key.verify(data, sig as Buffer) === true);
  // The public half is the one fingerprinted.
  assertEquals(new Uint8Array(key.getPublicSSH()), host.publicBlob);
});

Deno.test("parseHostKey: an RSA key keeps ssh2's per-call hash choice", () => {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = privateKey.export({ type: "pkcs1", format: "pem" }) as string;
  const key = parseHostKey(pem).sshKey;
  const data = Buffer.from("exchange hash");
  const pub = createPublicKey(pem);
  const sha1 = key.sign(data) as Buffer;
  assert(verify("sha1", data, pub, sha1), "ssh-rsa signs with sha1 by default");
  const sha512 = key.sign(data, "sha512") as Buffer;
  assert(verify("sha512", data, pub, sha512), "rsa-sha2-512 asks for sha512");
});

Deno.test("parseHostKey: an unusable key is a clear error naming where it came from", () => {
  let msg = "";
  try {
    parseHostKey("not a key", "host key /etc/tower/key");
  } catch (err) {
    msg = (err as Error).message;
  }
  assertMatch(msg, /^host key \/etc\/tower\/key: not a usable SSH private key/);
});
