/** Counting the timers code sets, for tests that a hot path arms none per call. */

/** Run `fn` with `setTimeout` counted (timers still work); returns how many it set. */
export function countTimers(fn: () => void): number {
  const real = globalThis.setTimeout;
  let timers = 0;
  globalThis.setTimeout = ((cb: () => void, ms?: number) => {
    timers++;
    return real(cb, ms);
  }) as typeof setTimeout;
  try {
    fn();
  } finally {
    globalThis.setTimeout = real;
  }
  return timers;
}
