/**
 * Tests for lib/pki/issue.ts and lib/pki/verify.ts: issued certificates pass
 * openssl and node:crypto checks, carry the right extensions, work in a real
 * node:tls mutual-TLS handshake, and verifyClientCert accepts exactly what the
 * CA issued for client use.
 * @module
 */

import nodeAssert from "node:assert/strict";
import { X509Certificate as NodeX509 } from "node:crypto";
import tls from "node:tls";
import { Buffer } from "node:buffer";
import {
  bindingUri,
  type CA,
  credentialEpoch,
  decodePem,
  findBinding,
  generateCA,
  issueClientCert,
  issueServingCert,
  loadCA,
  sha256Fingerprint,
  verifyClientCert,
} from "../../lib/pki/mod.ts";

async function openssl(dir: string, args: string[]): Promise<string> {
  const out = await new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
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

const cas: Promise<CA>[] = [generateCA({ algorithm: "ECDSA" }), generateCA({ algorithm: "RSA" })];

Deno.test("issueServingCert: openssl verifies it, SANs/EKU/keyUsage/AKI present", async () => {
  for (const caP of cas) {
    const ca = await caP;
    const kp = await issueServingCert(ca, {
      commonName: "mc-alpha.kubesphere-system.svc",
      dnsNames: ["mc-alpha", "mc-alpha.kubesphere-system.svc", "10.0.0.9", "mc-alpha"],
      ipAddresses: ["127.0.0.1", "::1"],
      validDays: 30,
    });
    nodeAssert.match(kp.keyPem, /^-----BEGIN PRIVATE KEY-----/);
    const n = new NodeX509(kp.certPem);
    nodeAssert.equal(n.ca, false);
    nodeAssert.ok(n.checkIssued(new NodeX509(ca.certPem)));
    nodeAssert.ok(n.verify(new NodeX509(ca.certPem).publicKey));
    nodeAssert.equal(
      n.subjectAltName,
      "DNS:mc-alpha, DNS:mc-alpha.kubesphere-system.svc, IP Address:10.0.0.9, IP Address:127.0.0.1, IP Address:::1",
    );
    nodeAssert.ok(n.checkHost("mc-alpha"));
    nodeAssert.ok(n.checkIP("127.0.0.1"));
    nodeAssert.ok(n.checkIP("10.0.0.9"));
    nodeAssert.deepEqual(n.keyUsage, ["DigitalSignature"]);
    nodeAssert.equal(n.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
    nodeAssert.ok(n.serialNumber.length >= 31, n.serialNumber);
    nodeAssert.ok(Date.parse(n.validTo) - Date.now() <= 30 * 86400000);
    await withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/ca.crt`, ca.certPem);
      await Deno.writeTextFile(`${dir}/s.crt`, kp.certPem);
      await Deno.writeTextFile(`${dir}/s.key`, kp.keyPem);
      const v = await openssl(dir, [
        "verify",
        "-CAfile",
        "ca.crt",
        "-purpose",
        "sslserver",
        "s.crt",
      ]);
      nodeAssert.match(v, /s\.crt: OK/);
      const text = await openssl(dir, ["x509", "-in", "s.crt", "-noout", "-text"]);
      nodeAssert.match(text, /TLS Web Server Authentication/);
      nodeAssert.doesNotMatch(text, /TLS Web Client Authentication/);
      nodeAssert.match(text, /Digital Signature/);
      nodeAssert.match(text, /X509v3 Authority Key Identifier/);
      nodeAssert.match(text, /CA:FALSE/);
      // Key matches certificate.
      const a = await openssl(dir, ["pkey", "-in", "s.key", "-pubout"]);
      const b = await openssl(dir, ["x509", "-in", "s.crt", "-noout", "-pubkey"]);
      nodeAssert.equal(a, b);
    });
  }
});

Deno.test("issueClientCert: CN/O, clientAuth, verified by openssl and verifyClientCert", async () => {
  for (const caP of cas) {
    const ca = await caP;
    const kp = await issueClientCert(ca, {
      commonName: "kubernetes-admin",
      organizations: ["system:masters", "b"],
    });
    const n = new NodeX509(kp.certPem);
    nodeAssert.equal(n.subject, "CN=kubernetes-admin\nO=system:masters\nO=b");
    nodeAssert.deepEqual(n.keyUsage, ["DigitalSignature"]);
    await withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/ca.crt`, ca.certPem);
      await Deno.writeTextFile(`${dir}/c.crt`, kp.certPem);
      nodeAssert.match(
        await openssl(dir, ["verify", "-CAfile", "ca.crt", "-purpose", "sslclient", "c.crt"]),
        /c\.crt: OK/,
      );
      const text = await openssl(dir, ["x509", "-in", "c.crt", "-noout", "-text"]);
      nodeAssert.match(text, /TLS Web Client Authentication/);
      nodeAssert.doesNotMatch(text, /TLS Web Server Authentication/);
    });
    const der = decodePem(kp.certPem)[0].der;
    for (const input of [der, kp.certPem]) {
      const v = await verifyClientCert(ca, input);
      nodeAssert.ok(v.ok);
      nodeAssert.deepEqual(
        { commonName: v.commonName, organizations: v.organizations, uris: v.uris },
        { commonName: "kubernetes-admin", organizations: ["system:masters", "b"], uris: [] },
      );
      nodeAssert.equal(v.notAfter.getTime(), new Date(n.validTo).getTime());
    }
    nodeAssert.equal((await verifyClientCert(ca.cert, der)).ok, true);
  }
});

Deno.test("verifyClientCert: refuses other CA, forged issuer, expired, serving-only, CA, garbage", async () => {
  const ca = await cas[0];
  const other = await generateCA({ commonName: "other" });
  const sameName = await generateCA(); // same subject "tower-ca", different key
  const client = await issueClientCert(ca, { commonName: "u", validDays: 1 });
  const reason = async (c: Uint8Array | string, now?: Date, by: CA = ca) => {
    const v = await verifyClientCert(by, c, now);
    nodeAssert.equal(v.ok, false);
    return v.ok ? "" : v.reason;
  };
  nodeAssert.match(await reason(client.certPem, undefined, other), /is not the CA/);
  nodeAssert.match(await reason(client.certPem, undefined, sameName), /signature/);
  nodeAssert.match(await reason(client.certPem, new Date(Date.now() + 2 * 86400000)), /expired/);
  nodeAssert.match(await reason(client.certPem, new Date(Date.now() - 86400000)), /not yet valid/);
  const serving = await issueServingCert(ca, { commonName: "s" });
  nodeAssert.match(await reason(serving.certPem), /lacks clientAuth/);
  nodeAssert.match(await reason(ca.certPem), /is a CA/);
  nodeAssert.match(await reason(new Uint8Array([1, 2, 3])), /unparsable/);
  nodeAssert.match(await reason("junk"), /unparsable/);
});

Deno.test("issued certs survive a CA reload and work in a node:tls mutual-TLS handshake", async () => {
  const ca = await loadCA((await cas[1]).certPem, (await cas[1]).keyPem);
  const serving = await issueServingCert(ca, {
    commonName: "localhost",
    ipAddresses: ["127.0.0.1"],
  });
  const client = await issueClientCert(ca, { commonName: "alice", organizations: ["devs"] });

  const peer = Promise.withResolvers<Uint8Array>();
  const server = tls.createServer({
    cert: serving.certPem,
    key: serving.keyPem,
    requestCert: true,
    rejectUnauthorized: false,
  }, (sock) => {
    const raw = sock.getPeerCertificate(true).raw;
    peer.resolve(new Uint8Array(raw ?? []));
    sock.end("hello");
  });
  const listening = Promise.withResolvers<void>();
  server.listen(0, "127.0.0.1", () => listening.resolve());
  await listening.promise;
  const port = (server.address() as { port: number }).port;
  try {
    const got = Promise.withResolvers<{ authorized: boolean; data: string }>();
    const sock = tls.connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ca: ca.certPem,
      cert: client.certPem,
      key: client.keyPem,
    }, () => {
      let data = "";
      sock.on("data", (d: Buffer) => data += d.toString());
      sock.on("end", () => {
        got.resolve({ authorized: sock.authorized, data });
        sock.end();
      });
    });
    sock.on("error", (e: Error) => got.reject(e));
    const res = await got.promise;
    nodeAssert.equal(res.authorized, true);
    nodeAssert.equal(res.data, "hello");
    const der = await peer.promise;
    nodeAssert.equal(sha256Fingerprint(der), sha256Fingerprint(decodePem(client.certPem)[0].der));
    const v = await verifyClientCert(ca, der);
    nodeAssert.ok(v.ok);
    nodeAssert.deepEqual([v.commonName, v.organizations], ["alice", ["devs"]]);
    sock.destroy();
  } finally {
    const closed = Promise.withResolvers<void>();
    server.close(() => closed.resolve());
    await closed.promise;
  }
});

Deno.test("sha256Fingerprint: hex SHA-256", () => {
  nodeAssert.equal(
    sha256Fingerprint(new TextEncoder().encode("abc")),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
});

Deno.test("issued certificates name their CA's key: authority key id = the CA's subject key id", async () => {
  const { AuthorityKeyIdentifierExtension, SubjectKeyIdentifierExtension, X509Certificate } =
    await import("@peculiar/x509");
  const [a, b] = await Promise.all([
    generateCA({ commonName: "a" }),
    generateCA({ commonName: "b" }),
  ]);
  const keyIdOf = (ca: CA) => ca.cert.getExtension(SubjectKeyIdentifierExtension)!.keyId;
  for (const ca of [a, b, a]) {
    for (
      const issued of [
        await issueServingCert(ca, { commonName: "s", dnsNames: ["x.example"] }),
        await issueClientCert(ca, { commonName: "c" }),
      ]
    ) {
      const aki = new X509Certificate(issued.certPem).getExtension(AuthorityKeyIdentifierExtension);
      nodeAssert.equal(aki?.keyId, keyIdOf(ca));
    }
  }
  nodeAssert.notEqual(keyIdOf(a), keyIdOf(b));
});

Deno.test("issueClientCert: URI SANs (cluster bindings) and a validity in milliseconds", async () => {
  const ca = await cas[0];
  const uri = bindingUri({
    cluster: "alpha",
    epoch: credentialEpoch(ca, { cluster: "alpha", token: "t", generation: "" }),
    role: "user",
  });
  const before = Date.now();
  const kp = await issueClientCert(ca, { commonName: "alice", uris: [uri], validMs: 90_000 });
  const after = Date.now();
  await withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/c.crt`, kp.certPem);
    const text = await openssl(dir, ["x509", "-in", "c.crt", "-noout", "-text"]);
    nodeAssert.match(text, new RegExp(`URI:${uri}`));
  });
  const v = await verifyClientCert(ca, kp.certPem);
  nodeAssert.ok(v.ok);
  nodeAssert.deepEqual(v.uris, [uri]);
  nodeAssert.deepEqual(findBinding(v.uris), {
    cluster: "alpha",
    epoch: uri.split(":")[4],
    role: "user",
  });
  // 90 s from issuance (certificates carry whole seconds).
  const t = v.notAfter.getTime();
  nodeAssert.ok(t >= before + 89_000 && t <= after + 90_000, `${t - before} ms`);
});
