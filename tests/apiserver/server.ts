/**
 * The test API server's network side: an HTTPS listener on 127.0.0.1
 * (`node:https`, which can request client certificates) that authenticates
 * client certificates signed by the server's CA and configured bearer
 * tokens, hands requests to the transport-agnostic {@link ApiCore}, serves
 * pod upgrade endpoints, writes an admin kubeconfig, and can restart on the
 * same port keeping or losing its state.
 * @module
 */

import { Buffer } from "node:buffer";
import type { IncomingMessage, ServerResponse } from "node:http";
import * as http from "node:http";
import * as https from "node:https";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import { logger } from "../../lib/log.ts";
import type { CA } from "../../lib/pki/mod.ts";
import { secretsEqual } from "../../lib/secret.ts";
import {
  ApiCore,
  type ApiResponse,
  type CoreOptions,
  errorResponse,
  type UserInfo,
} from "./rest.ts";
import { AuditLog } from "./audit.ts";
import { forbidden, type Identity, RbacAuthorizer, serviceAccountIdentity } from "./rbac.ts";
import { impersonate } from "./impersonation.ts";
import { type RequestAttributes, requestAttributes } from "./requestinfo.ts";
import { negotiatedResponse, withProtobuf } from "./protobuf/negotiate.ts";
import { answerReview } from "./reviews.ts";
import { handleUpgrade, rejectUpgrade, type StreamStats } from "./streaming.ts";
import { type ServerTls, serverTls, userKubeconfig } from "./tls.ts";
import { ApiError, type KubeObject } from "./types.ts";

const log = logger("test-apiserver");

/** Options of {@link startTestApiServer}. */
export interface TestApiServerOptions extends CoreOptions {
  /** Port on 127.0.0.1 (default 0: ephemeral). */
  port?: number;
  /** Directory for `kubeconfig`, `ca.crt`, … (default: a new temp dir, removed on close). */
  dir?: string;
  /** Bearer tokens that authenticate (as user `token-user-<i>`, group `system:masters`). */
  tokens?: string[];
  /** TLS material to reuse (e.g. that of an earlier server); default: generated. */
  tls?: ServerTls;
  /** CA to sign the server's certificates with (ignored with `tls`); default: a new one. */
  ca?: CA;
  /**
   * Enforce RBAC (default false: everything authenticated is allowed): callers
   * outside `system:masters` are authorized against the stored Roles,
   * ClusterRoles and bindings; denied → 403 `Forbidden`.
   */
  rbac?: boolean;
}

/** Options of {@link TestApiServer.kubeconfigFor}. */
export interface KubeconfigForOptions {
  /** Authenticate with a minted bearer token instead of a client certificate. */
  token?: boolean;
  /** Where to write it (default: `<dir>/kubeconfig-<sanitized user>`). */
  path?: string;
}

/** A running test API server. */
export interface TestApiServer {
  /** `https://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
  /** Directory holding the kubeconfig and PEM files. */
  readonly dir: string;
  /** Admin kubeconfig (client cert CN `kubernetes-admin`, O `system:masters`). */
  readonly kubeconfigPath: string;
  /** The server's CA certificate (PEM). */
  readonly caPem: string;
  /** CA, serving and admin client certificates, and the verifier. */
  readonly tls: ServerTls;
  /** The core: registry, store (objects), faults. Survives `restart({keepState: true})`. */
  readonly core: ApiCore;
  /** Fault switches (shortcut for `core.faults`). */
  readonly faults: ApiCore["faults"];
  /** Counters of upgrade sessions. */
  readonly streams: StreamStats;
  /** Every request that came over the network, oldest first (`clear()` to reset). */
  readonly audit: AuditLog;
  /** The RBAC authorizer over the stored objects (also usable when `rbac` is off). */
  readonly authorizer: RbacAuthorizer;
  /** Whether RBAC is enforced (from the `rbac` option; may be switched at run time). */
  rbac: boolean;
  /**
   * Mint a bearer token (CSPRNG) that authenticates as `user` with `groups`
   * (plus `system:authenticated`). Tokens survive `restart`.
   */
  issueToken(user: string, groups?: string[]): string;
  /**
   * Write a kubeconfig for `user`/`groups` (client certificate CN/O, or a
   * token with `{token: true}`) and return its path.
   */
  kubeconfigFor(user: string, groups?: string[], opts?: KubeconfigForOptions): Promise<string>;
  /**
   * {@link kubeconfigFor} the ServiceAccount `namespace/name` (user
   * `system:serviceaccount:<ns>:<name>`, groups `system:serviceaccounts`,
   * `system:serviceaccounts:<ns>`).
   */
  kubeconfigForServiceAccount(
    namespace: string,
    name: string,
    opts?: KubeconfigForOptions,
  ): Promise<string>;
  /**
   * Call the API in-process as the admin (no network, no faults): returns the
   * status, the parsed JSON body (`{}` if not JSON) and the raw text (empty for
   * streams). `path` like `/api/v1/namespaces/default/services`.
   */
  request(
    method: string,
    path: string,
    body?: unknown,
    contentType?: string,
  ): Promise<{ status: number; body: KubeObject & Record<string, unknown>; text: string }>;
  /** Make watches from any earlier resourceVersion get 410 Gone. */
  compact(): void;
  /** Stop listening and drop every connection, then listen again on the same port. */
  restart(opts?: { keepState?: boolean }): Promise<void>;
  /** Stop and clean up (removes the temp dir it created). */
  close(): Promise<void>;
}

const UNAUTHORIZED = new ApiError(401, "Unauthorized", "Unauthorized");
const ANONYMOUS_PATHS = new Set(["/healthz", "/livez", "/readyz", "/version"]);

/** Start a test API server on 127.0.0.1. */
export async function startTestApiServer(opts: TestApiServerOptions = {}): Promise<TestApiServer> {
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: "tower-apiserver-" });
  await Deno.mkdir(dir, { recursive: true });
  const tls = opts.tls ?? await serverTls(opts.ca);
  const core = new ApiCore(opts);
  const streams: StreamStats = { execSessions: 0, portForwardSessions: 0, spdySessions: 0 };
  const tokens = opts.tokens ?? [];
  const minted = new Map<string, Identity>();
  const audit = new AuditLog();
  const authorizer = new RbacAuthorizer(core.store);
  let rbacOn = opts.rbac ?? false;

  const authenticate = async (req: IncomingMessage): Promise<UserInfo | undefined> => {
    const sock = req.socket as TLSSocket;
    const peer = typeof sock.getPeerCertificate === "function"
      ? sock.getPeerCertificate(true)
      : undefined;
    if (peer && peer.raw && peer.raw.length > 0) {
      const v = await tls.verify(new Uint8Array(peer.raw));
      if (v.ok) {
        return { name: v.commonName, groups: [...v.organizations, "system:authenticated"] };
      }
      log.v(2, "client certificate refused", { reason: v.reason });
      return undefined;
    }
    const auth = String(req.headers.authorization ?? "");
    const m = /^Bearer\s+(.+)$/i.exec(auth);
    if (m) {
      const i = tokens.findIndex((t) => secretsEqual(m[1].trim(), t));
      if (i >= 0) {
        return { name: `token-user-${i}`, groups: ["system:masters", "system:authenticated"] };
      }
      for (const [t, who] of minted) {
        if (secretsEqual(m[1].trim(), t)) {
          return { name: who.name, groups: [...who.groups, "system:authenticated"] };
        }
      }
    }
    return undefined;
  };

  /**
   * The identity the request acts as (impersonation) and, when refused, why
   * (401 without a user, 403 when impersonation or the request is not allowed).
   */
  const actAs = (
    user: Identity | undefined,
    headers: Headers,
    a: RequestAttributes,
  ): { acting?: Identity; error?: ApiError } => {
    if (!user) return { error: UNAUTHORIZED };
    const acting = impersonate(user, headers, authorizer, rbacOn);
    if (acting instanceof ApiError) return { acting: user, error: acting };
    if (!rbacOn || (!a.resourceRequest && ANONYMOUS_PATHS.has(a.path))) return { acting };
    return authorizer.allowed(acting, a) ? { acting } : { acting, error: forbidden(acting, a) };
  };

  /** Answer an authorization.k8s.io access review (JSON body), or undefined for other requests. */
  const review = (
    user: Identity,
    a: RequestAttributes,
    body: Uint8Array,
  ): ApiResponse | undefined => {
    if (!a.resourceRequest || a.group !== "authorization.k8s.io" || a.verb !== "create") return;
    const def = core.registry.find(a.group, a.version, a.resource);
    if (!def || a.name) return;
    try {
      const obj = JSON.parse(new TextDecoder().decode(body));
      const out = answerReview(def.kind, obj, a, user, authorizer, rbacOn);
      return {
        status: 201,
        headers: { "content-type": "application/json" },
        body: JSON.stringify(out),
      };
    } catch (err) {
      if (err instanceof ApiError) return errorResponse(err);
      return errorResponse(
        new ApiError(400, "BadRequest", `decode review: ${(err as Error).message}`),
      );
    }
  };

  const onRequest = async (req: IncomingMessage, res: ServerResponse) => {
    const ac = new AbortController();
    res.on("close", () => ac.abort());
    const chunks: Buffer[] = [];
    try {
      for await (const c of req) chunks.push(c as Buffer);
    } catch {
      return;
    }
    const url = new URL(req.url ?? "/", "https://127.0.0.1");
    let user = await authenticate(req);
    if (!user && ANONYMOUS_PATHS.has(url.pathname) && req.method === "GET") {
      user = { name: "system:anonymous", groups: ["system:unauthenticated"] };
    }
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) {
      if (v !== undefined) headers.set(k, Array.isArray(v) ? v.join(", ") : v);
    }
    const method = req.method ?? "GET";
    const attrs = requestAttributes(method, url);
    const { acting, error } = actAs(user, headers, attrs);
    // The served resource, for content negotiation (protobuf for built-in kinds).
    const def = attrs.resourceRequest
      ? core.registry.find(attrs.group, attrs.version, attrs.resource)
      : undefined;
    let r: ApiResponse;
    if (error || !acting) {
      r = negotiatedResponse(headers.get("accept"), def, errorResponse(error ?? UNAUTHORIZED));
    } else {
      const body = new Uint8Array(Buffer.concat(chunks));
      const req = { method, url, headers, body, signal: ac.signal, user: acting };
      r = await withProtobuf(req, def, (q) => review(acting, attrs, q.body) ?? core.handle(q));
    }
    audit.record(acting, method, req.url ?? "/", attrs, r.status, user);
    log.v(4, "request", { method: req.method, url: req.url, status: r.status, user: user?.name });
    const outHeaders = { ...r.headers };
    delete outHeaders["transfer-encoding"];
    if (res.destroyed) {
      if (typeof r.body !== "string") await r.body.cancel().catch(() => {});
      return;
    }
    res.writeHead(r.status, outHeaders);
    if (typeof r.body === "string") {
      res.end(r.body);
      return;
    }
    res.flushHeaders();
    const reader = r.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (res.destroyed) break;
        res.write(value);
      }
    } catch {
      // the stream was cancelled
    } finally {
      reader.releaseLock();
      await r.body.cancel().catch(() => {});
      if (!res.destroyed) res.end();
    }
  };

  const onUpgrade = async (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on("error", () => socket.destroy());
    socket.pause();
    const user = await authenticate(req);
    const url = new URL(req.url ?? "/", "https://127.0.0.1");
    const attrs = requestAttributes(req.method ?? "GET", url);
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) {
      if (v !== undefined) headers.set(k, Array.isArray(v) ? v.join(", ") : v);
    }
    const { acting, error } = actAs(user, headers, attrs);
    if (error || !acting) {
      audit.record(acting, req.method ?? "GET", req.url ?? "/", attrs, error?.code ?? 401, user);
      rejectUpgrade(socket, error ?? UNAUTHORIZED);
      return;
    }
    audit.record(acting, req.method ?? "GET", req.url ?? "/", attrs, 101, user);
    handleUpgrade(core, streams, req, socket, new Uint8Array(head));
    socket.resume();
  };

  let port = opts.port ?? 0;
  let server: https.Server | http.Server;
  const sockets = new Set<Socket>();

  const listen = async () => {
    server = https.createServer({
      cert: tls.servingCertPem,
      key: tls.servingKeyPem,
      requestCert: true,
      rejectUnauthorized: false,
    }, (req, res) => {
      onRequest(req, res).catch((err) => {
        log.error("request failed", { error: err });
        try {
          res.destroy();
        } catch {
          // gone
        }
      });
    });
    server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      onUpgrade(req, socket, head).catch(() => socket.destroy());
    });
    server.on("secureConnection", (s: Socket) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
    });
    server.on("connection", (s: Socket) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
    });
    server.on("tlsClientError", () => {});
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    port = (server.address() as { port: number }).port;
  };

  const stop = async () => {
    core.faults.dropWatches();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of sockets) s.destroy();
    sockets.clear();
    await closed;
  };

  await listen();
  core.serverAddress = `127.0.0.1:${port}`;
  const url = `https://127.0.0.1:${port}`;
  const kubeconfigPath = `${dir}/kubeconfig`;
  await Deno.writeTextFile(`${dir}/ca.crt`, tls.caPem);
  await Deno.writeTextFile(kubeconfigPath, tls.kubeconfig(url));
  log.info("test API server listening", { url, kubeconfig: kubeconfigPath });

  const admin: UserInfo = { name: "kubernetes-admin", groups: ["system:masters"] };
  let closed = false;
  const issueToken = (user: string, groups: string[] = []): string => {
    const token = Array.from(
      crypto.getRandomValues(new Uint8Array(24)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    minted.set(token, { name: user, groups: [...groups] });
    return token;
  };
  const kubeconfigFor = async (
    user: string,
    groups: string[] = [],
    ko: KubeconfigForOptions = {},
  ): Promise<string> => {
    const path = ko.path ?? `${dir}/kubeconfig-${user.replace(/[^A-Za-z0-9_.-]/g, "_")}`;
    const creds = ko.token
      ? { token: issueToken(user, groups) }
      : await tls.issueClient(user, groups);
    await Deno.writeTextFile(path, userKubeconfig(url, tls.caPem, user, creds), { mode: 0o600 });
    return path;
  };
  const api: TestApiServer = {
    url,
    port,
    dir,
    kubeconfigPath,
    caPem: tls.caPem,
    tls,
    get core() {
      return core;
    },
    get faults() {
      return core.faults;
    },
    streams,
    audit,
    authorizer,
    get rbac() {
      return rbacOn;
    },
    set rbac(on: boolean) {
      rbacOn = on;
    },
    issueToken,
    kubeconfigFor,
    kubeconfigForServiceAccount(namespace, name, ko) {
      const id = serviceAccountIdentity(namespace, name);
      return kubeconfigFor(id.name, id.groups, ko);
    },
    async request(method, path, body, contentType) {
      const u = new URL(path, url);
      const r = await core.handle({
        method,
        url: u,
        headers: new Headers({
          "content-type": contentType ?? "application/json",
          accept: "application/json",
        }),
        body: body === undefined ? new Uint8Array() : new TextEncoder().encode(
          typeof body === "string" ? body : JSON.stringify(body),
        ),
        signal: new AbortController().signal,
        user: admin,
      });
      let text = "";
      if (typeof r.body === "string") text = r.body;
      else await r.body.cancel();
      let parsed = {} as KubeObject & Record<string, unknown>;
      try {
        if (text) parsed = JSON.parse(text);
      } catch {
        // not JSON (logs): the text is returned as is
      }
      return { status: r.status, body: parsed, text };
    },
    compact: () => core.store.compact(),
    async restart(ro = {}) {
      await stop();
      // A restart that loses state keeps counting revisions up (every older one is
      // compacted), as a restored cluster never reuses them.
      if (!ro.keepState) core.reset();
      await listen();
    },
    async close() {
      if (closed) return;
      closed = true;
      await stop();
      if (ownDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
  return api;
}
