/**
 * Tests for lib/pki/ca.ts: generated CAs are accepted by openssl and
 * node:crypto; loadCA accepts openssl-made keys in every PEM form and refuses
 * expired, not-yet-valid, non-CA and mismatched material.
 * @module
 */

import nodeAssert from "node:assert/strict";
import { X509Certificate as NodeX509 } from "node:crypto";
import { generateCA, loadCA } from "../../lib/pki/mod.ts";

async function openssl(dir: string, args: string[], stdin?: string): Promise<string> {
  const child = new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`openssl ${args.join(" ")}: ${text}`);
  return text;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tower-pki-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const read = (dir: string, f: string) => Deno.readTextFile(`${dir}/${f}`);

Deno.test("generateCA: ECDSA and RSA CAs are valid self-signed CAs for openssl and node", async () => {
  for (const algorithm of ["ECDSA", "RSA"] as const) {
    const ca = await generateCA({ commonName: "test-ca", algorithm, validDays: 10 });
    nodeAssert.equal(ca.algorithm, algorithm);
    nodeAssert.match(ca.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    const n = new NodeX509(ca.certPem);
    nodeAssert.equal(n.ca, true);
    nodeAssert.equal(n.subject, "CN=test-ca");
    nodeAssert.ok(n.verify(n.publicKey));
    const days = (Date.parse(n.validTo) - Date.now()) / 86400000;
    nodeAssert.ok(days > 9.9 && days <= 10, `validity ${days}`);
    await withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/ca.crt`, ca.certPem);
      const text = await openssl(dir, ["x509", "-in", "ca.crt", "-noout", "-text"]);
      nodeAssert.match(text, /CA:TRUE/);
      nodeAssert.match(text, /Certificate Sign/);
      await openssl(dir, ["verify", "-CAfile", "ca.crt", "ca.crt"]);
      // The key PEM is usable by openssl and matches the cert.
      await Deno.writeTextFile(`${dir}/ca.key`, ca.keyPem);
      const a = await openssl(dir, ["pkey", "-in", "ca.key", "-pubout"]);
      const b = await openssl(dir, ["x509", "-in", "ca.crt", "-noout", "-pubkey"]);
      nodeAssert.equal(a, b);
    });
    // A generated CA loads back.
    const again = await loadCA(ca.certPem, ca.keyPem);
    nodeAssert.equal(again.cert.serialNumber, ca.cert.serialNumber);
  }
});

Deno.test("loadCA: accepts openssl RSA (PKCS#1, PKCS#8) and EC P-256/P-384 (SEC1, PKCS#8) keys", async () => {
  await withDir(async (dir) => {
    const cases: { name: string; gen: string[]; label: RegExp; algorithm: "RSA" | "ECDSA" }[] = [
      {
        name: "rsa",
        gen: ["genrsa", "-traditional", "-out", "k.key", "2048"],
        label: /RSA PRIVATE KEY/,
        algorithm: "RSA",
      },
      {
        name: "ec256",
        gen: ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "k.key"],
        label: /EC PRIVATE KEY/,
        algorithm: "ECDSA",
      },
      {
        name: "ec384",
        gen: ["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", "k.key"],
        label: /EC PRIVATE KEY/,
        algorithm: "ECDSA",
      },
    ];
    for (const c of cases) {
      await openssl(dir, c.gen);
      const keyPem = await read(dir, "k.key");
      nodeAssert.match(keyPem, c.label, c.name);
      await openssl(dir, [
        "req",
        "-x509",
        "-new",
        "-key",
        "k.key",
        "-subj",
        `/CN=${c.name}-ca`,
        "-days",
        "2",
        "-out",
        "c.crt",
      ]);
      const certPem = await read(dir, "c.crt");
      const ca = await loadCA(certPem, keyPem);
      nodeAssert.equal(ca.algorithm, c.algorithm, c.name);
      nodeAssert.match(ca.keyPem, /BEGIN PRIVATE KEY/);
      // PKCS#8 form of the same key.
      await openssl(dir, ["pkcs8", "-topk8", "-nocrypt", "-in", "k.key", "-out", "k8.key"]);
      const ca8 = await loadCA(certPem, await read(dir, "k8.key"));
      nodeAssert.equal(ca8.algorithm, c.algorithm);
    }
  });
});

Deno.test("loadCA: refuses expired, not-yet-valid, non-CA, mismatched and garbage input", async () => {
  const ca = await generateCA({ validDays: 1 });
  const other = await generateCA();
  await nodeAssert.rejects(
    loadCA(ca.certPem, ca.keyPem, new Date(Date.now() + 3 * 86400000)),
    /expired/,
  );
  await nodeAssert.rejects(
    loadCA(ca.certPem, ca.keyPem, new Date(Date.now() - 3 * 86400000)),
    /not yet valid/,
  );
  await nodeAssert.rejects(loadCA(ca.certPem, other.keyPem), /does not match/);
  await nodeAssert.rejects(loadCA("hello", ca.keyPem), /expected PEM CERTIFICATE/);
  await nodeAssert.rejects(loadCA(ca.certPem, "nope"), /CA key: .*expected PEM/);
  const broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  await nodeAssert.rejects(loadCA(broken, ca.keyPem), /unparsable/);
  await withDir(async (dir) => {
    await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "k.key"]);
    await openssl(dir, [
      "req",
      "-x509",
      "-new",
      "-key",
      "k.key",
      "-subj",
      "/CN=leaf",
      "-days",
      "2",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-out",
      "c.crt",
    ]);
    await nodeAssert.rejects(
      loadCA(await read(dir, "c.crt"), await read(dir, "k.key")),
      /not a CA/,
    );
    // Encrypted keys are refused with a clear message.
    await openssl(dir, [
      "pkcs8",
      "-topk8",
      "-in",
      "k.key",
      "-passout",
      "pass:x",
      "-out",
      "enc.key",
    ]);
    await nodeAssert.rejects(
      loadCA(ca.certPem, await read(dir, "enc.key")),
      /CA key: private key: encrypted private keys are not supported/,
    );
  });
});
