/**
 * Typed API errors: HTTP status plus the `reason` of the server's `Status`
 * body, with predicates for the cases controllers branch on.
 * @module
 */

import type { StatusBody } from "./types.ts";

/** An error response from the API server (or a watch `ERROR` event). */
export class KubeApiError extends Error {
  /** HTTP status (or the `code` of a watch ERROR Status). */
  readonly status: number;
  /** `Status.reason`, e.g. `NotFound`, `Conflict`, `AlreadyExists`, `Expired`, `Gone`. */
  readonly reason: string;
  /** The parsed `Status` body, when there was one. */
  readonly body?: StatusBody;
  /** Seconds from `Retry-After` or `details.retryAfterSeconds`. */
  readonly retryAfterSeconds?: number;

  constructor(
    status: number,
    reason: string,
    message: string,
    body?: StatusBody,
    retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = "KubeApiError";
    this.status = status;
    this.reason = reason;
    this.body = body;
    this.retryAfterSeconds = retryAfterSeconds;
  }

  /** 404 / NotFound. */
  get isNotFound(): boolean {
    return this.status === 404;
  }
  /** 409 with a reason other than AlreadyExists (an optimistic-concurrency conflict). */
  get isConflict(): boolean {
    return this.status === 409 && this.reason !== "AlreadyExists";
  }
  /** 409 / AlreadyExists. */
  get isAlreadyExists(): boolean {
    return this.status === 409 && this.reason === "AlreadyExists";
  }
  /** 410 Gone / Expired: the resourceVersion is too old, relist. */
  get isGone(): boolean {
    return this.status === 410 || this.reason === "Expired" || this.reason === "Gone";
  }
  /** 429, 500, 502, 503, 504: worth retrying later. */
  get isRetryable(): boolean {
    return this.status === 429 || (this.status >= 500 && this.status !== 501);
  }

  /** Build from a response status and its (maybe empty or non-JSON) body text. */
  static fromResponse(
    method: string,
    path: string,
    status: number,
    text: string,
    retryAfterHeader?: string | null,
  ): KubeApiError {
    let body: StatusBody | undefined;
    try {
      const parsed = JSON.parse(text);
      if (parsed && typeof parsed === "object") body = parsed as StatusBody;
    } catch {
      // not JSON: keep the text as the message
    }
    const reason = body?.reason || defaultReason(status);
    const detail = body?.message || text.trim().slice(0, 200) || reason;
    const header = retryAfterHeader ? Number(retryAfterHeader) : NaN;
    const retryAfter = Number.isFinite(header) ? header : body?.details?.retryAfterSeconds;
    return new KubeApiError(
      status,
      reason,
      `${method} ${path}: ${status} ${reason}: ${detail}`,
      body,
      retryAfter,
    );
  }

  /** Build from the `Status` object of a watch ERROR event. */
  static fromStatus(context: string, s: StatusBody): KubeApiError {
    const code = s.code ?? 500;
    const reason = s.reason || defaultReason(code);
    return new KubeApiError(code, reason, `${context}: ${code} ${reason}: ${s.message ?? ""}`, s);
  }
}

function defaultReason(status: number): string {
  switch (status) {
    case 400:
      return "BadRequest";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "NotFound";
    case 405:
      return "MethodNotAllowed";
    case 409:
      return "Conflict";
    case 410:
      return "Expired";
    case 422:
      return "Invalid";
    case 429:
      return "TooManyRequests";
    case 504:
      return "Timeout";
    default:
      return status >= 500 ? "InternalError" : "Unknown";
  }
}

/** Whether `err` is a {@link KubeApiError} with status 404. */
export function isNotFound(err: unknown): boolean {
  return err instanceof KubeApiError && err.isNotFound;
}
/** Whether `err` is a {@link KubeApiError} conflict (409, not AlreadyExists). */
export function isConflict(err: unknown): boolean {
  return err instanceof KubeApiError && err.isConflict;
}
/** Whether `err` is a {@link KubeApiError} AlreadyExists. */
export function isAlreadyExists(err: unknown): boolean {
  return err instanceof KubeApiError && err.isAlreadyExists;
}
/** Whether `err` is a {@link KubeApiError} 410 Gone/Expired. */
export function isGone(err: unknown): boolean {
  return err instanceof KubeApiError && err.isGone;
}
