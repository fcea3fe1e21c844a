/**
 * The two listeners of a connected member cluster: `kubernetes` (TLS with the
 * issued serving certificate; every request needs a client certificate signed
 * by Tower's CA and bound to this cluster, else 401 — see `client_access.ts`)
 * and `kubesphere` (plain HTTP; no authentication of its own, so it never
 * attaches agent credentials: the caller's `Authorization` passes), each an
 * {@link HttpProxy} over the tunnel dialer of that API server. The serving
 * certificate can be replaced while running, and client connections whose
 * access was revoked closed; a port that cannot be bound is reported as a
 * {@link ListenError}.
 * @module
 */

import * as net from "node:net";
import * as tls from "node:tls";
import { logger } from "../log.ts";
import type { ClientCertVerdict } from "../pki/mod.ts";
import type { ClientAccess } from "./client_access.ts";
import { HttpProxy, type HttpProxyOptions, type RequestRecord } from "./http/forward.ts";
import { gatedTransport } from "./tls_transport.ts";
import type { PoolOptions } from "./http/pool.ts";
import type { UpstreamDialer } from "./http/upstream.ts";

export type { RequestRecord } from "./http/forward.ts";
export {
  type DialedStream,
  NoAgentError,
  StreamLimitError,
  type UpstreamAuth,
  type UpstreamDialer,
  type UpstreamTls,
} from "./http/upstream.ts";

const log = logger("proxy/endpoint");

/** Serving certificate and key (PEM). */
export interface ServingCert {
  certPem: string;
  keyPem: string;
}

/** Options of {@link startClusterEndpoints}. */
export interface ClusterEndpointsOptions {
  cluster: string;
  /** Address to listen on (default `0.0.0.0`). */
  host?: string;
  /** Port of the kubernetes endpoint (0: ephemeral). */
  kubernetesPort: number;
  /** Port of the kubesphere endpoint (0: ephemeral). */
  kubespherePort: number;
  servingCert: ServingCert;
  /**
   * Verify a client certificate (DER), e.g. `(der) => verifyClientCert(ca, der)`; once per
   * connection.
   */
  verifyClient: (der: Uint8Array) => Promise<ClientCertVerdict>;
  /**
   * What a verified certificate may do on this cluster's endpoint now (asked before every
   * request, and by {@link ClusterEndpoints.revalidate}), e.g. `clientAccess` of
   * `client_access.ts`.
   */
  access: (verdict: ClientCertVerdict) => ClientAccess;
  /** Dials the member kube-apiserver; each stream comes with its session's credentials. */
  kubernetes: UpstreamDialer;
  /** Dials the member ks-apiserver. */
  kubesphere: UpstreamDialer;
  /** Called once per finished request (no headers, queries or credentials in it). */
  onRequest?: (rec: RequestRecord) => void;
  /** Idle upstream connection pool limits (per endpoint). */
  pool?: Partial<PoolOptions>;
  /** Close client connections idle this long between requests (default 120 s). */
  clientIdleMs?: number;
  /** A client must complete its TLS handshake within this long (default 10 s). */
  tlsHandshakeMs?: number;
  /** Client connections each listener keeps at once (default 1024); more are closed at once. */
  maxConnections?: number;
  /** Largest request head (default 64 KiB; 431 beyond). */
  maxRequestHead?: number;
  /** Largest request body on the kubesphere endpoint (413 beyond it); undefined: no limit. */
  kubesphereMaxRequestBody?: number;
}

/** Running endpoints of one cluster. */
export interface ClusterEndpoints {
  readonly cluster: string;
  /** Bound port of the kubernetes endpoint. */
  readonly kubernetesPort: number;
  /** Bound port of the kubesphere endpoint. */
  readonly kubespherePort: number;
  /** Serve a new certificate to new TLS connections. */
  updateServingCert(cert: ServingCert): void;
  /** Close client connections whose certificate no longer gives access (after a revocation). */
  revalidate(): Promise<void>;
  /** Close idle upstream connections riding on session `key` (call when a session ends). */
  dropSession(key: string): void;
  /**
   * Close one idle upstream connection riding on session `key` (the kubernetes endpoint's
   * longest idle, else the kubesphere endpoint's), to give its stream back to the session;
   * false if there is none.
   */
  dropIdle(key: string): boolean;
  /** Connection counts per endpoint. */
  stats(): Record<"kubernetes" | "kubesphere", HttpProxy["stats"]>;
  /**
   * Stop listening; give in-flight exchanges up to `graceMs` to finish (idle
   * connections close at once), then destroy every client connection and
   * upstream stream.
   */
  close(graceMs?: number): Promise<void>;
}

/** A listener could not be bound (e.g. the port is in use). */
export class ListenError extends Error {
  constructor(message: string, readonly code: string | undefined, options?: ErrorOptions) {
    super(message, options);
    this.name = "ListenError";
  }
}

function listen(server: net.Server, host: string, port: number, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off("listening", onListening);
      const where = `${host === "0.0.0.0" ? "" : host}:${port}`;
      const why = err.code === "EADDRINUSE"
        ? "address in use"
        : err.code === "EACCES"
        ? "permission denied"
        : err.message;
      reject(new ListenError(`${what}: listen ${where}: ${why}`, err.code, { cause: err }));
    };
    const onListening = () => {
      server.off("error", onError);
      resolve((server.address() as net.AddressInfo).port);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(port, host);
  });
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
  });
}

/**
 * No Nagle delay (small interactive writes: exec, port-forward), and TCP keepalive so a client
 * that vanishes without a FIN does not hold a watch (and its tunnel channel) open forever.
 */
function tuneClientSocket(sock: net.Socket): void {
  sock.setNoDelay(true);
  sock.setKeepAlive(true, 30_000);
}

/** The TLS context new kubernetes-endpoint connections get. */
function servingContext(cert: ServingCert): tls.SecureContext {
  return tls.createSecureContext({ cert: cert.certPem, key: cert.keyPem });
}

async function identify(
  sock: tls.TLSSocket,
  verify: (der: Uint8Array) => Promise<ClientCertVerdict>,
): Promise<ClientCertVerdict> {
  const peer = sock.getPeerCertificate(true);
  if (!peer || !peer.raw || peer.raw.length === 0) {
    return { ok: false, reason: "no client certificate" };
  }
  try {
    return await verify(new Uint8Array(peer.raw));
  } catch (err) {
    return { ok: false, reason: `verification failed: ${(err as Error).message}` };
  }
}

/** Start both endpoints of `opts.cluster`; rejects with {@link ListenError} if a port is taken. */
export async function startClusterEndpoints(
  opts: ClusterEndpointsOptions,
): Promise<ClusterEndpoints> {
  const host = opts.host ?? "0.0.0.0";
  const common: Omit<HttpProxyOptions, "kind" | "dialer" | "proto" | "stripAuthorization"> = {
    cluster: opts.cluster,
    onRequest: opts.onRequest,
    pool: opts.pool,
    clientIdleMs: opts.clientIdleMs,
    maxRequestHead: opts.maxRequestHead,
  };
  const kube = new HttpProxy({
    ...common,
    kind: "kubernetes",
    dialer: opts.kubernetes,
    proto: "https",
    stripAuthorization: true,
  });
  const ks = new HttpProxy({
    ...common,
    kind: "kubesphere",
    dialer: opts.kubesphere,
    proto: "http",
    stripAuthorization: false,
    maxRequestBody: opts.kubesphereMaxRequestBody,
  });

  // TLS over a transport of ours around the TCP socket (see tls_transport.ts): the HTTP engine
  // closes its gate for backpressure, which Deno's own TLS server sockets would ignore.
  let secureContext = servingContext(opts.servingCert);
  const handshakeMs = opts.tlsHandshakeMs ?? 10_000;
  const tlsServer = net.createServer((raw: net.Socket) => {
    tuneClientSocket(raw);
    const { transport, gate } = gatedTransport(raw);
    const sock = new tls.TLSSocket(transport as net.Socket, {
      isServer: true,
      secureContext,
      requestCert: true,
      rejectUnauthorized: false, // verified per connection by verifyClient (401 with a Status)
      ALPNProtocols: ["http/1.1"],
    } as tls.TLSSocketOptions);
    let secure = false;
    const failed = (why: string) => {
      if (secure) return;
      log.v(2, "TLS handshake failed", { cluster: opts.cluster, error: why });
      sock.destroy();
      raw.destroy();
    };
    const timer = setTimeout(() => failed(`no handshake within ${handshakeMs} ms`), handshakeMs);
    raw.once("close", () => {
      clearTimeout(timer);
      sock.destroy(); // the TLS socket does not always see its transport go
    });
    sock.on("error", (err: Error) => failed(err.message));
    sock.once("secure", () => {
      secure = true;
      clearTimeout(timer);
      const verdict = identify(sock, opts.verifyClient);
      void kube.serve(sock, {
        remoteAddress: raw.remoteAddress ?? "",
        access: async () => opts.access(await verdict),
        flow: gate,
      });
    });
  });
  const plainServer = net.createServer((sock: net.Socket) => {
    tuneClientSocket(sock);
    void ks.serve(sock, { remoteAddress: sock.remoteAddress ?? "" });
  });
  // Beyond the cap a connection is closed before a byte of it is read (TLS included).
  tlsServer.maxConnections = plainServer.maxConnections = opts.maxConnections ?? 1024;

  let kubernetesPort: number;
  let kubespherePort: number;
  try {
    kubernetesPort = await listen(
      tlsServer,
      host,
      opts.kubernetesPort,
      `cluster ${opts.cluster}`,
    );
    kubespherePort = await listen(
      plainServer,
      host,
      opts.kubespherePort,
      `cluster ${opts.cluster}`,
    );
  } catch (err) {
    await Promise.all([closeServer(tlsServer), closeServer(plainServer)]);
    kube.close();
    ks.close();
    throw err;
  }
  for (const s of [tlsServer, plainServer]) {
    s.on("error", (err: Error) => {
      log.error("listener failed", { cluster: opts.cluster, error: err.message });
    });
  }
  log.info("cluster endpoints listening", {
    cluster: opts.cluster,
    kubernetes: `${host}:${kubernetesPort}`,
    kubesphere: `${host}:${kubespherePort}`,
  });

  let closing: Promise<void> | null = null;
  return {
    cluster: opts.cluster,
    kubernetesPort,
    kubespherePort,
    updateServingCert(cert: ServingCert): void {
      secureContext = servingContext(cert);
    },
    revalidate: () => kube.revalidate(),
    dropSession(key: string): void {
      kube.dropSession(key);
      ks.dropSession(key);
    },
    dropIdle(key: string): boolean {
      return kube.dropIdle(key) || ks.dropIdle(key);
    },
    stats: () => ({ kubernetes: kube.stats, kubesphere: ks.stats }),
    close(graceMs = 0): Promise<void> {
      closing ??= (async () => {
        const done = Promise.all([closeServer(tlsServer), closeServer(plainServer)]);
        if (graceMs > 0) {
          kube.drain();
          ks.drain();
          let timer: ReturnType<typeof setTimeout> | undefined;
          await Promise.race([
            Promise.all([kube.whenEmpty(), ks.whenEmpty()]),
            new Promise((resolve) => timer = setTimeout(resolve, graceMs)),
          ]);
          clearTimeout(timer);
        }
        kube.close();
        ks.close();
        await done;
        log.info("cluster endpoints closed", { cluster: opts.cluster });
      })();
      return closing;
    },
  };
}
