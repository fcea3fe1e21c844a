/**
 * TLS material of the test API server: its CA, a serving certificate for
 * 127.0.0.1/localhost, the admin client certificate, client-certificate
 * verification and the admin kubeconfig.
 * TEMPORARY: generated with the openssl CLI until `lib/pki` lands.
 * @module
 */

import { X509Certificate } from "node:crypto";
import { stringify as toYaml } from "yaml";

/** Result of verifying a client certificate. */
export type ClientCertCheck =
  | { ok: true; commonName: string; organizations: string[] }
  | { ok: false; reason: string };

/** Certificates and keys (PEM) of a server, and its verifier. */
export interface ServerTls {
  caPem: string;
  caKeyPem: string;
  servingCertPem: string;
  servingKeyPem: string;
  /** Client certificate CN `kubernetes-admin`, O `system:masters`. */
  adminCertPem: string;
  adminKeyPem: string;
  /** Verify a client certificate (DER) against the CA. */
  verify(der: Uint8Array): ClientCertCheck;
  /** Issue another client certificate signed by the CA. */
  issueClient(
    commonName: string,
    organizations: string[],
  ): Promise<{ certPem: string; keyPem: string }>;
  /** The admin kubeconfig for `url`. */
  kubeconfig(url: string): string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Generate the TLS material. */
export async function serverTls(): Promise<ServerTls> {
  const dir = await Deno.makeTempDir({ prefix: "tower-apiserver-pki-" });
  try {
    await openssl(dir, [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.crt",
      "-days",
      "3650",
      "-subj",
      "/CN=test-apiserver-ca",
    ]);
    const issue = async (name: string, subj: string, ext: string) => {
      await openssl(dir, [
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        `${name}.key`,
        "-out",
        `${name}.csr`,
        "-subj",
        subj,
      ]);
      await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
      await openssl(dir, [
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        `${name}.crt`,
        "-days",
        "365",
        "-extfile",
        `${name}.ext`,
      ]);
      return {
        certPem: await Deno.readTextFile(`${dir}/${name}.crt`),
        keyPem: await Deno.readTextFile(`${dir}/${name}.key`),
      };
    };
    const serving = await issue(
      "serving",
      "/CN=kube-apiserver",
      "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default," +
        "DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n",
    );
    const admin = await issue(
      "admin",
      "/O=system:masters/CN=kubernetes-admin",
      "extendedKeyUsage=clientAuth\n",
    );
    const caPem = await Deno.readTextFile(`${dir}/ca.crt`);
    const caKeyPem = await Deno.readTextFile(`${dir}/ca.key`);
    const ca = new X509Certificate(caPem);
    let n = 0;
    const tls: ServerTls = {
      caPem,
      caKeyPem,
      servingCertPem: serving.certPem,
      servingKeyPem: serving.keyPem,
      adminCertPem: admin.certPem,
      adminKeyPem: admin.keyPem,
      verify(der) {
        try {
          const c = new X509Certificate(der);
          if (!c.verify(ca.publicKey)) return { ok: false, reason: "not signed by the CA" };
          const now = Date.now();
          if (Date.parse(c.validFrom) > now || Date.parse(c.validTo) < now) {
            return { ok: false, reason: "expired or not yet valid" };
          }
          const subj = c.subject.split("\n");
          const cn = subj.find((l) => l.startsWith("CN="))?.slice(3) ?? "";
          const orgs = subj.filter((l) => l.startsWith("O=")).map((l) => l.slice(2));
          return { ok: true, commonName: cn, organizations: orgs };
        } catch (err) {
          return { ok: false, reason: (err as Error).message };
        }
      },
      async issueClient(cn, orgs) {
        const dir2 = await Deno.makeTempDir();
        await Deno.writeTextFile(`${dir2}/ca.crt`, caPem);
        await Deno.writeTextFile(`${dir2}/ca.key`, caKeyPem);
        try {
          const subj = orgs.map((o) => `/O=${o}`).join("") + `/CN=${cn}`;
          await openssl(dir2, [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "c.key",
            "-out",
            "c.csr",
            "-subj",
            subj,
          ]);
          await Deno.writeTextFile(`${dir2}/c.ext`, "extendedKeyUsage=clientAuth\n");
          await openssl(dir2, [
            "x509",
            "-req",
            "-in",
            "c.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            String(100 + ++n),
            "-out",
            "c.crt",
            "-days",
            "365",
            "-extfile",
            "c.ext",
          ]);
          return {
            certPem: await Deno.readTextFile(`${dir2}/c.crt`),
            keyPem: await Deno.readTextFile(`${dir2}/c.key`),
          };
        } finally {
          await Deno.remove(dir2, { recursive: true });
        }
      },
      kubeconfig: (url) => adminKubeconfig(url, caPem, admin.certPem, admin.keyPem),
    };
    return tls;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function b64(s: string): string {
  return btoa(s);
}

/** A kubeconfig with one cluster/user/context named `test-apiserver`. */
export function adminKubeconfig(
  url: string,
  caPem: string,
  certPem: string,
  keyPem: string,
): string {
  return toYaml({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "test-apiserver",
      cluster: { server: url, "certificate-authority-data": b64(caPem) },
    }],
    users: [{
      name: "kubernetes-admin",
      user: { "client-certificate-data": b64(certPem), "client-key-data": b64(keyPem) },
    }],
    contexts: [{
      name: "test-apiserver",
      context: { cluster: "test-apiserver", user: "kubernetes-admin" },
    }],
    "current-context": "test-apiserver",
    preferences: {},
  });
}
