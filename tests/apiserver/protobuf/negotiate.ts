/**
 * Content negotiation for `application/vnd.kubernetes.protobuf`, around the
 * JSON-only core: a protobuf request body is turned into JSON before the core
 * sees it, and a JSON answer (object, list, `Status`, watch stream) is turned
 * into protobuf when the client's `Accept` prefers it and the endpoint speaks
 * it, as the real server does for built-in kinds. Endpoints of other kinds
 * (custom resources, built-ins without a protobuf form here) answer a
 * protobuf body with 415 and fall back to JSON when `Accept` allows it, else
 * 406. Requests whose `Accept` does not name protobuf and whose body is not
 * protobuf pass through untouched, so the JSON behaviour is unchanged.
 * @module
 */

import { errorResponse } from "../rest.ts";
import type { ApiRequest, ApiResponse } from "../rest.ts";
import { ApiError, apiVersionOf, type ResourceDef } from "../types.ts";
import { decodeObject, encodeObject, encodeWatchEvent, messageFor, speaks } from "./codec.ts";

/** The protobuf media type. */
export const PROTOBUF = "application/vnd.kubernetes.protobuf";
const PROTOBUF_WATCH = `${PROTOBUF};stream=watch`;
const TEXT_TYPES = ["application/json", "application/yaml", "application/*", "*/*"];

type Obj = Record<string, unknown>;

/** Whether an endpoint (resource of `def`) reads and writes protobuf here. */
export function endpointSpeaks(def: ResourceDef | undefined): boolean {
  return !!def && !def.crd && speaks(apiVersionOf(def), def.kind);
}

const mediaType = (v: string) => v.split(";")[0].trim().toLowerCase();

/** The media types a request body may have at this endpoint (as in 415 messages). */
function acceptedTypes(def: ResourceDef | undefined): string {
  return endpointSpeaks(def)
    ? `application/json, application/yaml, ${PROTOBUF}`
    : "application/json, application/yaml";
}

/** What the client asks for, in order of preference: protobuf first, JSON allowed. */
export function negotiate(
  accept: string | null,
  protobufOk: boolean,
): { protobuf: boolean; json: boolean } {
  let json = false;
  let first: "protobuf" | "json" | undefined;
  for (const part of (accept ?? "").split(",")) {
    const [type, ...params] = part.split(";").map((s) => s.trim().toLowerCase());
    // `as=Table` and the like are conversions this server only makes in JSON.
    if (type === PROTOBUF && protobufOk && !params.some((p) => p.startsWith("as="))) {
      first ??= "protobuf";
    } else if (TEXT_TYPES.includes(type)) {
      json = true;
      first ??= "json";
    }
  }
  return { protobuf: first === "protobuf", json };
}

/**
 * The request with a protobuf body turned into JSON (other requests as
 * they are); throws the real server's 415 or 400 `ApiError`.
 */
export function jsonRequest(req: ApiRequest, def: ResourceDef | undefined): ApiRequest {
  const ct = req.headers.get("content-type") ?? "";
  if (mediaType(ct) !== PROTOBUF || req.body.length === 0 || req.method === "PATCH") return req;
  // DeleteOptions are decoded with the meta codecs, which speak protobuf everywhere.
  if (req.method !== "DELETE" && !endpointSpeaks(def)) {
    throw new ApiError(
      415,
      "UnsupportedMediaType",
      `the body of the request was in an unknown format - accepted media types include: ${
        acceptedTypes(def)
      }`,
    );
  }
  let obj: Obj;
  try {
    obj = decodeObject(req.body);
  } catch (err) {
    const kind = def?.kind ?? "object";
    throw new ApiError(
      400,
      "BadRequest",
      `${kind} in version "${def?.version ?? ""}" cannot be handled as a ${kind}: ${
        (err as Error).message
      }`,
    );
  }
  const headers = new Headers(req.headers);
  headers.set("content-type", "application/json");
  return { ...req, headers, body: new TextEncoder().encode(JSON.stringify(obj)) };
}

function notAcceptable(r: ApiResponse): ApiResponse {
  if (typeof r.body !== "string") r.body.cancel().catch(() => {});
  return errorResponse(
    new ApiError(
      406,
      "NotAcceptable",
      "only the following media types are accepted: application/json, application/yaml",
    ),
  );
}

function bytesBody(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(ctl) {
      ctl.enqueue(bytes);
      ctl.close();
    },
  });
}

/** A JSON watch stream (newline-delimited events) re-framed as protobuf WatchEvents. */
function protobufWatch(src: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = src.getReader();
  const dec = new TextDecoder();
  let buf = "";
  return new ReadableStream({
    async pull(ctl) {
      for (;;) {
        const nl = buf.indexOf("\n");
        if (nl >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          try {
            const ev = JSON.parse(line) as { type: string; object: Obj };
            ctl.enqueue(encodeWatchEvent(ev.type, ev.object));
          } catch (err) {
            ctl.error(err);
            await reader.cancel().catch(() => {});
          }
          return;
        }
        const { done, value } = await reader.read();
        if (done) {
          ctl.close();
          return;
        }
        buf += dec.decode(value, { stream: true });
      }
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/**
 * The core's JSON answer in the form the client's `Accept` asks for at this
 * endpoint: protobuf (objects, lists, `Status`, watch events), JSON, or 406.
 */
export function negotiatedResponse(
  accept: string | null,
  def: ResourceDef | undefined,
  r: ApiResponse,
): ApiResponse {
  if (!/protobuf/i.test(accept ?? "")) return r;
  if (mediaType(r.headers["content-type"] ?? "") !== "application/json") return r;
  const want = negotiate(accept, endpointSpeaks(def));
  if (!want.protobuf) return want.json ? r : notAcceptable(r);
  if (typeof r.body !== "string") {
    // The core streams JSON only for watches.
    const { "content-type": _ct, ...headers } = r.headers;
    return {
      status: r.status,
      headers: { ...headers, "content-type": PROTOBUF_WATCH },
      body: protobufWatch(r.body),
    };
  }
  let obj: Obj;
  try {
    obj = JSON.parse(r.body);
  } catch {
    return r;
  }
  if (!messageFor(String(obj.apiVersion ?? ""), String(obj.kind ?? ""))) {
    return want.json ? r : notAcceptable(r);
  }
  const bytes = encodeObject(obj);
  return {
    status: r.status,
    headers: { ...r.headers, "content-type": PROTOBUF, "content-length": String(bytes.length) },
    body: bytesBody(bytes),
  };
}

/** Serve `req` through `next` (JSON in, JSON out) with protobuf negotiated around it. */
export async function withProtobuf(
  req: ApiRequest,
  def: ResourceDef | undefined,
  next: (req: ApiRequest) => ApiResponse | Promise<ApiResponse>,
): Promise<ApiResponse> {
  const accept = req.headers.get("accept");
  let json: ApiRequest;
  try {
    json = jsonRequest(req, def);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    return negotiatedResponse(accept, def, errorResponse(err));
  }
  return negotiatedResponse(accept, def, await next(json));
}
