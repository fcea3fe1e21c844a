/**
 * Where the proxy's CA comes from in standalone mode: `--ca-cert/--ca-key`, or
 * a CA generated on first start and kept beside the kubeconfigs (key 0600), so
 * kubeconfigs issued before a restart stay valid.
 * @module
 */

import { type CA, generateCA, loadCA } from "../pki/mod.ts";
import { logger } from "../log.ts";

const log = logger("proxy/ca");

/** Load `--ca-cert/--ca-key`; both or neither must be given. */
export async function loadCAFiles(certPath: string, keyPath: string): Promise<CA> {
  let certPem: string, keyPem: string;
  try {
    certPem = await Deno.readTextFile(certPath);
  } catch (err) {
    throw new Error(`--ca-cert ${certPath}: ${(err as Error).message}`);
  }
  try {
    keyPem = await Deno.readTextFile(keyPath);
  } catch (err) {
    throw new Error(`--ca-key ${keyPath}: ${(err as Error).message}`);
  }
  try {
    return await loadCA(certPem, keyPem);
  } catch (err) {
    throw new Error(`CA ${certPath}: ${(err as Error).message}`);
  }
}

/** Load the CA kept in `dir` (`ca.crt`, `ca.key`), generating it on first use. */
export async function loadOrCreateCADir(dir: string): Promise<CA> {
  const certPath = `${dir}/ca.crt`;
  const keyPath = `${dir}/ca.key`;
  const exists = async (p: string) => {
    try {
      await Deno.stat(p);
      return true;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return false;
      throw new Error(`CA in ${dir}: ${(err as Error).message}`);
    }
  };
  const [haveCert, haveKey] = [await exists(certPath), await exists(keyPath)];
  if (haveCert !== haveKey) {
    throw new Error(
      `CA in ${dir}: ${
        haveCert ? "ca.key" : "ca.crt"
      } is missing (remove both to generate a new CA, ` +
        `which invalidates kubeconfigs issued so far)`,
    );
  }
  if (haveCert) {
    const [certPem, keyPem] = [await Deno.readTextFile(certPath), await Deno.readTextFile(keyPath)];
    try {
      return await loadCA(certPem, keyPem);
    } catch (err) {
      throw new Error(`CA in ${dir}: ${(err as Error).message}`);
    }
  }
  const ca = await generateCA({ commonName: "tower-ca" });
  await Deno.writeTextFile(keyPath, ca.keyPem, { mode: 0o600 });
  await Deno.writeTextFile(certPath, ca.certPem, { mode: 0o644 });
  log.info("Generated a CA for issuing kubeconfigs", { cert: certPath });
  return ca;
}
