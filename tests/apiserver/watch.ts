/**
 * Watch streams (`?watch=true`) of the test API server: newline-delimited
 * JSON events for one resource, from a resourceVersion (410 `Expired` when
 * compacted) or starting with ADDED for the current objects, with label and
 * field selection (an object leaving the selection is DELETED), BOOKMARKs,
 * `sendInitialEvents`, `timeoutSeconds`, Table/PartialObjectMetadata
 * renderings, and an end when the client goes away or faults drop watches.
 * @module
 */

import type { Faults } from "./faults.ts";
import type { Store, StoreEvent } from "./store.ts";
import { partialMetadata, toTable } from "./tables.ts";
import {
  type ApiError,
  apiVersionOf,
  type KubeObject,
  type ResourceDef,
  storageKeyOf,
} from "./types.ts";

type Obj = Record<string, unknown>;

/** What a watch needs from the core. */
export interface WatchContext {
  store: Store;
  faults: Faults;
  bookmarkIntervalMs: number;
  /** The stored object in the shape of `def`'s API version. */
  read(def: ResourceDef, obj: KubeObject): KubeObject;
  /** The 410 Expired error for a compacted `rv`. */
  expired(rv: number): ApiError;
  /** Called when a watch is refused with ERROR 410. */
  onExpired(): void;
}

/** The request side of a watch. */
export interface WatchRequest {
  url: URL;
  headers: Headers;
  signal: AbortSignal;
}

/**
 * The streaming body and headers of a watch of `def` in `namespace` ("" =
 * all) for the objects `match` selects.
 */
export function watchResponse(
  ctx: WatchContext,
  req: WatchRequest,
  def: ResourceDef,
  namespace: string,
  match: (o: KubeObject) => boolean,
): { status: number; headers: Record<string, string>; body: ReadableStream<Uint8Array> } {
  const q = req.url.searchParams;
  const resource = storageKeyOf(def);
  const accept = (req.headers.get("accept") ?? "").split(",")[0];
  const asTable = /as=Table/.test(accept);
  const asPartial = /as=PartialObjectMetadata/.test(accept);
  const includeObject = q.get("includeObject") ?? "Metadata";
  const bookmarks = q.get("allowWatchBookmarks") === "true";
  const initialEvents = q.get("sendInitialEvents") === "true";
  const timeoutSeconds = Number(q.get("timeoutSeconds") ?? 0);
  const rvParam = q.get("resourceVersion") ?? "";
  const enc = new TextEncoder();
  let firstTable = true;
  const encodeObj = (o: KubeObject): unknown => {
    const out = ctx.read(def, o);
    if (asTable) {
      const table = toTable(
        def,
        [out],
        { resourceVersion: out.metadata.resourceVersion ?? "" },
        includeObject,
        !firstTable,
      );
      firstTable = false;
      return table;
    }
    return asPartial ? partialMetadata(out) : out;
  };
  const line = (type: string, object: unknown) =>
    enc.encode(JSON.stringify({ type, object }) + "\n");
  const bookmark = (extra: Obj = {}) =>
    line("BOOKMARK", {
      kind: def.kind,
      apiVersion: apiVersionOf(def),
      metadata: { resourceVersion: String(ctx.store.revision), ...extra },
    });
  const toLine = (e: StoreEvent): Uint8Array | undefined => {
    if (e.resource !== resource) return undefined;
    const now = match(e.object);
    const before = e.prev ? match(e.prev) : false;
    if (e.type === "MODIFIED") {
      if (now && before) return line("MODIFIED", encodeObj(e.object));
      if (now) return line("ADDED", encodeObj(e.object));
      if (before) return line("DELETED", encodeObj(e.object));
      return undefined;
    }
    return now ? line(e.type, encodeObj(e.object)) : undefined;
  };
  let cleanup = () => {};
  const body = new ReadableStream<Uint8Array>({
    start: (ctl) => {
      let closed = false;
      const timers: ReturnType<typeof setTimeout>[] = [];
      const close = () => {
        if (closed) return;
        closed = true;
        cleanup();
        try {
          ctl.close();
        } catch {
          // already closed or cancelled
        }
      };
      const send = (b: Uint8Array | undefined) => {
        if (b && !closed) ctl.enqueue(b);
      };
      if (rvParam !== "" && rvParam !== "0" && !initialEvents) {
        const since = Number(rvParam);
        if (!(since >= ctx.store.compactedRevision)) {
          ctx.onExpired();
          send(line("ERROR", ctx.expired(since).toStatus()));
          close();
          return;
        }
        for (const e of ctx.store.eventsSince(resource, since)) send(toLine(e));
      } else {
        const ns = def.namespaced ? namespace || undefined : undefined;
        for (const o of ctx.store.list(resource, ns, match)) {
          send(line("ADDED", encodeObj(o)));
        }
        if (initialEvents && bookmarks) {
          send(bookmark({ annotations: { "k8s.io/initial-events-end": "true" } }));
        }
      }
      const sub = ctx.store.subscribe((e) => send(toLine(e)));
      if (bookmarks) {
        timers.push(setInterval(() => send(bookmark()), ctx.bookmarkIntervalMs));
      }
      if (timeoutSeconds > 0) timers.push(setTimeout(close, timeoutSeconds * 1000));
      const unregister = ctx.faults.onDrop(close);
      const onAbort = () => close();
      req.signal.addEventListener("abort", onAbort);
      cleanup = () => {
        sub.close();
        for (const id of timers) clearTimeout(id);
        unregister();
        req.signal.removeEventListener("abort", onAbort);
      };
      if (req.signal.aborted) close();
    },
    cancel: () => cleanup(),
  });
  return {
    status: 200,
    headers: {
      "content-type": "application/json",
      "transfer-encoding": "chunked",
      "cache-control": "no-cache",
    },
    body,
  };
}
