/**
 * HTTP origins standing for a member's API servers behind the tunnel in the interop tests: each
 * answers `<label> <method> <path> <sha256 of the body> auth=<Authorization or null>` and records
 * what it saw.
 * @module
 */

import { createHash } from "node:crypto";
import { generateCA, issueServingCert } from "../../lib/pki/mod.ts";

export const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
/** The sha256 of an empty body. */
export const EMPTY = sha(new Uint8Array());

/** What the origin saw of one request. */
export interface Seen {
  method: string;
  path: string;
  bodySha: string;
  authorization: string | null;
}

/**
 * The HTTP origin behind the tunnel (the member's "ks-apiserver"): answers
 * `origin <method> <path> <sha256 of the request body> auth=<Authorization or none>`.
 */
export function startOrigin(): { port: number; seen: Seen[]; close(): Promise<void> } {
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      const url = new URL(req.url);
      const s = {
        method: req.method,
        path: url.pathname + url.search,
        bodySha: sha(body),
        authorization: req.headers.get("authorization"),
      };
      seen.push(s);
      return new Response(`origin ${s.method} ${s.path} ${s.bodySha} auth=${s.authorization}`);
    },
  );
  return { port: server.addr.port, seen, close: () => server.shutdown() };
}

/** An HTTPS origin (the member's "kube-apiserver"), answering like {@link startOrigin}. */
export async function startTlsOrigin() {
  const ca = await generateCA({ commonName: "member-ca" });
  const serving = await issueServingCert(ca, {
    commonName: "kube-apiserver",
    ipAddresses: ["127.0.0.1"],
  });
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: serving.certPem, key: serving.keyPem, onListen() {} },
    async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      const url = new URL(req.url);
      const s = {
        method: req.method,
        path: url.pathname + url.search,
        bodySha: sha(body),
        authorization: req.headers.get("authorization"),
      };
      seen.push(s);
      return new Response(`member ${s.method} ${s.path} ${s.bodySha} auth=${s.authorization}`);
    },
  );
  return { port: server.addr.port, caPem: ca.certPem, seen, close: () => server.shutdown() };
}
