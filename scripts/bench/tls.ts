/**
 * TLS material for the benchmark's origin: a throwaway CA and a serving
 * certificate for 127.0.0.1, made with the openssl CLI.
 * @module
 */

/** PEM texts and file paths of the origin's TLS material. */
export interface OriginTls {
  caPem: string;
  certPath: string;
  keyPath: string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** Create a CA and a serving certificate (SAN IP 127.0.0.1, DNS localhost) in `dir`. */
export async function makeOriginTls(dir: string): Promise<OriginTls> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await openssl(dir, [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "2",
    "-subj",
    "/CN=bench-origin-ca",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await openssl(dir, [
    "req",
    "-new",
    ...ec,
    "-keyout",
    "origin.key",
    "-out",
    "origin.csr",
    "-subj",
    "/CN=bench-origin",
  ]);
  await Deno.writeTextFile(
    `${dir}/origin.ext`,
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" +
      "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
  );
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    "origin.csr",
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "origin.crt",
    "-days",
    "2",
    "-extfile",
    "origin.ext",
  ]);
  return {
    caPem: await Deno.readTextFile(`${dir}/ca.crt`),
    certPath: `${dir}/origin.crt`,
    keyPath: `${dir}/origin.key`,
  };
}
