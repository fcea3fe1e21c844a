/**
 * A promise given a deadline and an abort signal: it settles with the value, or fails once the
 * time is up or the signal aborts, whichever comes first. What arrives after that (a stream
 * opened too late) is handed to `late` so that nothing is left open.
 * @module
 */

/** Options for {@link within}. */
export interface WithinOptions<T> {
  /** What is being waited for; every error message starts with it (`dial ws://…`). */
  what: string;
  /** Fail early when this aborts. */
  signal?: AbortSignal;
  /** Why, when the time is up (default `no answer within <ms> ms`). */
  timedOut?: string;
  /** Why, when `signal` aborts (default `aborted`). */
  aborted?: string;
  /** Takes a value that arrives after the failure (e.g. destroys a stream). */
  late?: (value: T) => void;
  /** Makes the error from `<what>: <why>` and the cause (default: an `Error` with the cause). */
  error?: (message: string, cause?: unknown) => Error;
}

/** `p`, or an error after `ms` or when `opts.signal` aborts. */
export function within<T>(p: Promise<T>, ms: number, opts: WithinOptions<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const done = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      return true;
    };
    const fail = (why: string, cause?: unknown): void => {
      if (!done()) return;
      const message = `${opts.what}: ${why}`;
      reject(opts.error ? opts.error(message, cause) : new Error(message, { cause }));
    };
    const onAbort = () => fail(opts.aborted ?? "aborted");
    const timer = setTimeout(() => fail(opts.timedOut ?? `no answer within ${ms} ms`), ms);
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener("abort", onAbort, { once: true });
    p.then((value) => {
      if (done()) resolve(value);
      else opts.late?.(value);
    }, (err) => fail(err instanceof Error ? err.message : String(err), err));
  });
}
