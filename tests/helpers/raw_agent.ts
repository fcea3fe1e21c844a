/**
 * A hand-driven agent for protocol tests: the real transport (WebSocket) and
 * ssh2 client, but every step (ident, auth, `config` payload, channel opens)
 * chosen by the test, including the Go tower's ident and empty credentials.
 * @module
 */

// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { Duplex } from "node:stream";
import { dialProxy, tunnelUrl } from "../../lib/agent/transport.ts";
import { acceptAnyIdent } from "../../lib/tunnel/ssh_ident.ts";
import { type GlobalReply, GlobalRequester } from "../../lib/tunnel/ssh_requests.ts";

/** A connected raw agent. */
export interface RawAgent {
  client: ssh2.Client;
  stream: Duplex;
  /** Send a global request and wait for the reply. */
  request(name: string, payload: Uint8Array): Promise<GlobalReply>;
  /** Resolves when the SSH connection has closed. */
  closed: Promise<void>;
  close(): void;
}

/** Options for {@link connectRawAgent}. */
export interface RawAgentOptions {
  username?: string;
  password?: string;
  /** Identification line to send instead of ssh2's (e.g. `SSH-kubesphere-v1-client`). */
  ident?: string;
}

/** Connect over the WebSocket and authenticate; resolves once SSH is ready. */
export async function connectRawAgent(
  proxyUrl: string,
  opts: RawAgentOptions = {},
): Promise<RawAgent> {
  const stream = await dialProxy(tunnelUrl(proxyUrl));
  const client = new ssh2.Client();
  const closed = new Promise<void>((resolve) => client.once("close", () => resolve()));
  const ready = new Promise<void>((resolve, reject) => {
    client.once("ready", () => resolve());
    client.once("error", reject);
  });
  client.on("error", () => {});
  client.connect({
    sock: acceptAnyIdent(stream, client, opts.ident ? { sendIdent: opts.ident } : {}),
    username: opts.username ?? "",
    password: opts.password ?? "",
    readyTimeout: 10_000,
  } as ssh2.ConnectConfig);
  const requester = new GlobalRequester(client);
  await ready;
  return {
    client,
    stream,
    request: (name, payload) => requester.request(name, payload),
    closed,
    close: () => {
      client.end();
      stream.destroy();
    },
  };
}
