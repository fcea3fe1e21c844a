/**
 * `pods/<p>/log` of the test API server: three numbered lines per container
 * (`tailLines`, `timestamps`), and with `follow=true` one more every interval
 * until the client goes away.
 * @module
 */

import { badRequest, type KubeObject } from "./types.ts";

type Obj = Record<string, unknown>;

/** Counts open follow streams for the core (tests wait for them to end). */
export interface LogStreams {
  logLineIntervalMs: number;
  opened(): void;
  closed(): void;
}

/** The log of `pod` (already looked up) for the request's query. */
export function podLogResponse(
  streams: LogStreams,
  req: { url: URL; signal: AbortSignal },
  pod: KubeObject,
): { status: number; headers: Record<string, string>; body: string | ReadableStream<Uint8Array> } {
  const q = req.url.searchParams;
  const name = pod.metadata.name;
  const containers = (((pod.spec as Obj | undefined)?.containers ?? []) as Obj[]).map((c) =>
    String(c.name)
  );
  const container = q.get("container") ?? containers[0];
  if (!containers.includes(container)) {
    throw badRequest(`container ${container} is not valid for pod ${name}`);
  }
  const prefix = `${pod.metadata.namespace}/${name}/${container}`;
  const timestamps = q.get("timestamps") === "true";
  const fmt = (i: number) =>
    `${timestamps ? new Date().toISOString() + " " : ""}${prefix} line ${i}\n`;
  let lines = [1, 2, 3].map(fmt);
  const tail = q.get("tailLines");
  if (tail !== null) lines = lines.slice(Math.max(0, lines.length - Number(tail)));
  const headers = { "content-type": "text/plain", "transfer-encoding": "chunked" };
  if (q.get("follow") !== "true") return { status: 200, headers, body: lines.join("") };
  const enc = new TextEncoder();
  let stop = () => {};
  const body = new ReadableStream<Uint8Array>({
    start: (ctl) => {
      streams.opened();
      for (const l of lines) ctl.enqueue(enc.encode(l));
      let i = 3;
      const timer = setInterval(() => {
        try {
          ctl.enqueue(enc.encode(fmt(++i)));
        } catch {
          stop();
        }
      }, streams.logLineIntervalMs);
      let stopped = false;
      const onAbort = () => {
        stop();
        try {
          ctl.close();
        } catch {
          // already closed
        }
      };
      stop = () => {
        if (stopped) return;
        stopped = true;
        clearInterval(timer);
        streams.closed();
        req.signal.removeEventListener("abort", onAbort);
      };
      req.signal.addEventListener("abort", onAbort);
      if (req.signal.aborted) onAbort();
    },
    cancel: () => stop(),
  });
  return { status: 200, headers, body };
}
