/**
 * A safety net for awaited events in tests: never synchronisation, only a bound on how long a
 * broken build can hang a test.
 * @module
 */

/** `p`, or a rejection naming `what` once `ms` have passed; the timer goes when `p` settles. */
export function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
