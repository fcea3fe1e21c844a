/**
 * Upgrade endpoints of pods: `exec`/`attach` over WebSocket
 * (`v5.channel.k8s.io`, `v4.channel.k8s.io`) running a few fake commands
 * (`cat` echoes stdin, `echo`, `hostname`, `true`, `false`), `portforward`
 * over WebSocket echoing every data message, and any of them upgraded to
 * `SPDY/3.1` answering 101 and then echoing raw bytes.
 * @module
 */

import { Buffer } from "node:buffer";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { acceptHandshake, WsConn } from "./websocket.ts";
import type { ApiCore } from "./rest.ts";
import { ApiError, type JsonObject } from "./types.ts";

/** Channel protocols we speak for exec/attach, in preference order. */
const EXEC_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/** Channels of the `channel.k8s.io` protocols. */
const CH = { stdin: 0, stdout: 1, stderr: 2, error: 3, resize: 4, close: 255 } as const;

/** Counters tests can read. */
export interface StreamStats {
  execSessions: number;
  portForwardSessions: number;
  spdySessions: number;
}

/** Write a plain HTTP error response on a socket that was not upgraded. */
export function rejectUpgrade(socket: Duplex, err: ApiError): void {
  const body = JSON.stringify(err.toStatus());
  const text = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
  }[err.code] ?? "Error";
  socket.end(
    `HTTP/1.1 ${err.code} ${text}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function parsePodPath(pathname: string): { ns: string; pod: string; sub: string } | undefined {
  const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/(exec|attach|portforward)\/?$/
    .exec(pathname);
  return m ? { ns: decodeURIComponent(m[1]), pod: decodeURIComponent(m[2]), sub: m[3] } : undefined;
}

/**
 * Handle an authenticated upgrade request. Writes the 101 (or an error
 * response) to `socket` and serves the session.
 */
export function handleUpgrade(
  core: ApiCore,
  stats: StreamStats,
  req: IncomingMessage,
  socket: Duplex,
  head: Uint8Array,
): void {
  const url = new URL(req.url ?? "/", "https://localhost");
  const target = parsePodPath(url.pathname);
  if (!target) {
    rejectUpgrade(
      socket,
      new ApiError(404, "NotFound", "the server could not find the requested resource"),
    );
    return;
  }
  if (!core.store.get("/pods", target.ns, target.pod)) {
    rejectUpgrade(
      socket,
      new ApiError(404, "NotFound", `pods "${target.pod}" not found`, {
        name: target.pod,
        kind: "pods",
      }),
    );
    return;
  }
  const upgrade = String(req.headers.upgrade ?? "").toLowerCase();
  if (upgrade === "spdy/3.1") {
    const offered = String(req.headers["x-stream-protocol-version"] ?? "").split(",")[0].trim();
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n" +
        (offered ? `X-Stream-Protocol-Version: ${offered}\r\n` : "") + "\r\n",
    );
    stats.spdySessions++;
    if (head.length) socket.write(head);
    socket.on("data", (d: Buffer) => socket.write(d));
    socket.on("end", () => socket.end());
    socket.on("error", () => socket.destroy());
    return;
  }
  if (upgrade !== "websocket") {
    rejectUpgrade(
      socket,
      new ApiError(400, "BadRequest", `unsupported upgrade ${JSON.stringify(upgrade)}`),
    );
    return;
  }
  const key = String(req.headers["sec-websocket-key"] ?? "");
  const offered = String(req.headers["sec-websocket-protocol"] ?? "").split(",").map((s) =>
    s.trim()
  ).filter(Boolean);
  if (target.sub === "portforward") {
    acceptHandshake(socket, key, offered[0] ?? "");
    stats.portForwardSessions++;
    const ws = new WsConn(socket, head);
    ws.onMessage = (data, opcode) => ws.send(data, opcode);
    return;
  }
  const protocol = EXEC_PROTOCOLS.find((p) => offered.includes(p));
  if (!protocol) {
    rejectUpgrade(
      socket,
      new ApiError(
        400,
        "BadRequest",
        `none of the offered subprotocols ${JSON.stringify(offered)} is supported`,
      ),
    );
    return;
  }
  acceptHandshake(socket, key, protocol);
  stats.execSessions++;
  runExec(new WsConn(socket, head), url.searchParams, target.pod);
}

function success(): JsonObject {
  return { metadata: {}, status: "Success" };
}

function exitFailure(command: string[], code: number): JsonObject {
  return {
    metadata: {},
    status: "Failure",
    message: `command terminated with non-zero exit code: error executing command ` +
      `[${command.join(" ")}], exit code ${code}`,
    reason: "NonZeroExitCode",
    details: { causes: [{ reason: "ExitCode", message: String(code) }] },
  };
}

/** Run a fake command over a channel WebSocket. */
function runExec(ws: WsConn, q: URLSearchParams, pod: string): void {
  const command = q.getAll("command");
  const enc = new TextEncoder();
  const out = (ch: number, data: Uint8Array | string) => {
    const bytes = typeof data === "string" ? enc.encode(data) : data;
    const msg = new Uint8Array(bytes.length + 1);
    msg[0] = ch;
    msg.set(bytes, 1);
    ws.send(msg);
  };
  const finish = (status: JsonObject) => {
    out(CH.error, JSON.stringify(status));
    ws.close(1000);
  };
  const [cmd, ...args] = command;
  switch (cmd) {
    case "cat":
      ws.onMessage = (data) => {
        if (data.length === 0) return;
        if (data[0] === CH.stdin && data.length > 1) out(CH.stdout, data.subarray(1));
        if (data[0] === CH.close && data[1] === CH.stdin) finish(success());
      };
      return;
    case "echo":
      out(CH.stdout, args.join(" ") + "\n");
      return finish(success());
    case "hostname":
      out(CH.stdout, pod + "\n");
      return finish(success());
    case "true":
      return finish(success());
    case "false":
      return finish(exitFailure(command, 1));
    case "sh":
      if (args[0] === "-c" && /^exit \d+$/.test(args[1] ?? "")) {
        const code = Number(args[1].slice(5));
        return finish(code === 0 ? success() : exitFailure(command, code));
      }
  }
  out(CH.stderr, `exec: "${cmd}": executable file not found in $PATH\n`);
  finish({
    metadata: {},
    status: "Failure",
    message: `failed to exec in container: exec: "${cmd}": executable file not found in $PATH`,
    reason: "InternalError",
    details: { causes: [{ reason: "ExitCode", message: "127" }] },
  });
}
