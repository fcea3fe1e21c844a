/**
 * Agent side of the `kubesphere` channel (docs/protocol.md §5): receive the opens the SSH
 * server (proxy) makes towards us, with their raw ASCII `host:port` extra data, which ssh2
 * 1.17.0 drops for channel types it does not know.
 *
 * How it works. The client protocol's per-connection `_handlers.CHANNEL_OPEN` is wrapped; the
 * raw extra data is taken from the decoded packet as it leaves `_packetRW.read`. An accepted
 * channel is built the way ssh2 builds its own, gets TCP-like half-close
 * (./channel_half_close.ts), waits for its transport (./channel_flow.ts) and takes its receive
 * window from the connection's budget (./receive_budget.ts). The ssh2 internals relied on are
 * listed and checked in ./ssh2_internals.ts.
 * @module
 */

import type { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import type { Client, ClientChannel } from "ssh2";
import { logger } from "../log.ts";
import { enableHalfClose } from "./channel_half_close.ts";
import { followTransport } from "./channel_flow.ts";
import { localPacketSize } from "./channel_open.ts";
import { receiveBudgetOf } from "./receive_budget.ts";
import { KUBESPHERE_CHANNEL, OPEN_FAILURE } from "./protocol.ts";
import { checkConnection, checkSsh2 } from "./ssh2_internals.ts";
import {
  chanLib,
  type ChannelInfo,
  type ChannelOpenInfo,
  DEFAULT_WINDOW,
  internals,
  MSG_CHANNEL_OPEN,
  type PacketReader,
  type ProtocolInternals,
} from "./ssh2_shapes.ts";

const log = logger("ssh-compat");

/**
 * Handler of incoming `kubesphere` channel opens. `target` is the raw extra data (latin1),
 * normally `host:port`. Call exactly one of `accept()` (returns the channel stream) or
 * `reject(reason, description)`; if the handler throws before answering, the open is
 * rejected with CONNECT_FAILED.
 */
export type KubesphereChannelHandler = (
  target: string,
  accept: () => ClientChannel,
  reject: (reason?: number, description?: string) => void,
) => void;

const kubeHandlers = new WeakMap<Client, KubesphereChannelHandler>();
const channelPatchedProtocols = new WeakSet<ProtocolInternals>();

/**
 * Agent side: receive `kubesphere` channel opens from the server on `client`. Call before or
 * right after `client.connect()`; a second call replaces the handler. Other unknown channel
 * types keep being rejected by ssh2; without a handler, `kubesphere` opens are rejected with
 * UNKNOWN_CHANNEL_TYPE like any unknown type.
 */
export function onKubesphereChannel(client: Client, handler: KubesphereChannelHandler): void {
  checkSsh2();
  const first = !kubeHandlers.has(client);
  kubeHandlers.set(client, handler);
  const patchProto = (): void => {
    checkConnection(client);
    const proto = internals(client)._protocol;
    if (!proto || channelPatchedProtocols.has(proto)) return;
    channelPatchedProtocols.add(proto);
    const capture = captureChannelOpenPayloads(proto);
    const orig = proto._handlers.CHANNEL_OPEN;
    proto._handlers.CHANNEL_OPEN = (p, info) => {
      const payload = capture.take();
      const h = kubeHandlers.get(client);
      if (info.type !== KUBESPHERE_CHANNEL || !h || !payload) {
        if (orig) orig(p, info);
        else proto.channelOpenFail(info.sender, OPEN_FAILURE.UNKNOWN_CHANNEL_TYPE, "");
        return;
      }
      dispatchKubesphereOpen(client, proto, info, extraData(payload), h);
    };
  };
  if (internals(client)._protocol) patchProto();
  if (first) client.prependListener("connect", patchProto);
}

/**
 * ssh2 parses CHANNEL_OPEN into `{ data: {} }` for unknown types, dropping the extra data. Keep
 * the last CHANNEL_OPEN payload as it leaves the (possibly decompressing) packet reader;
 * `_packetRW.read` is replaced by ssh2 when compression starts, hence the accessor.
 */
function captureChannelOpenPayloads(proto: ProtocolInternals): { take(): Buffer | undefined } {
  let last: Buffer | undefined;
  const wrap = (reader: PacketReader): PacketReader => {
    const read = reader.read;
    reader.read = function (this: PacketReader, data: Buffer): Buffer {
      const out = read.call(this, data);
      last = out.length > 0 && out[0] === MSG_CHANNEL_OPEN ? out : undefined;
      return out;
    };
    return reader;
  };
  const rw = proto._packetRW;
  let reader = wrap(rw.read);
  Object.defineProperty(rw, "read", {
    configurable: true,
    enumerable: true,
    get: () => reader,
    set: (r: PacketReader) => {
      reader = wrap(r);
    },
  });
  return {
    take: () => {
      const out = last;
      last = undefined;
      return out;
    },
  };
}

/** Extra data of a CHANNEL_OPEN payload: after type string, sender, window, packet size. */
function extraData(payload: Buffer): string {
  const typeLen = payload.readUInt32BE(1);
  return payload.subarray(1 + 4 + typeLen + 12).toString("latin1");
}

function dispatchKubesphereOpen(
  client: Client,
  proto: ProtocolInternals,
  info: ChannelOpenInfo,
  target: string,
  handler: KubesphereChannelHandler,
): void {
  const mgr = internals(client)._chanMgr;
  const localChan = mgr.add();
  if (localChan === -1) {
    proto.channelOpenFail(info.sender, OPEN_FAILURE.RESOURCE_SHORTAGE, "no free channels");
    return;
  }
  let answered = false;
  const accept = (): ClientChannel => {
    if (answered) throw new Error(`ssh compat: kubesphere channel to ${target} already answered`);
    answered = true;
    const packetSize = localPacketSize(proto);
    const budget = receiveBudgetOf(client);
    const window = budget?.reserve() ?? DEFAULT_WINDOW;
    const chanInfo: ChannelInfo = {
      type: KUBESPHERE_CHANNEL,
      incoming: {
        id: localChan,
        window,
        packetSize,
        state: "open",
      },
      outgoing: {
        id: info.sender,
        window: info.window,
        packetSize: info.packetSize,
        state: "open",
      },
    };
    const stream = new chanLib.Channel(client, chanInfo);
    enableHalfClose(stream);
    followTransport(stream, client);
    budget?.add(stream as unknown as Duplex, window, proto);
    mgr.update(localChan, stream);
    proto.channelOpenConfirm(info.sender, localChan, window, packetSize);
    return stream;
  };
  const reject = (reason: number = OPEN_FAILURE.CONNECT_FAILED, description = ""): void => {
    if (answered) return;
    answered = true;
    mgr.remove(localChan);
    proto.channelOpenFail(info.sender, reason, description);
  };
  try {
    handler(target, accept, reject);
  } catch (err) {
    log.warn("kubesphere channel handler failed", { target, error: String(err) });
    reject(OPEN_FAILURE.CONNECT_FAILED, "internal error");
  }
}
