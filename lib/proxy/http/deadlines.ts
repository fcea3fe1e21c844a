/**
 * Many timeouts on one timer. A keep-alive client connection waits for its next request head
 * under an idle timeout; a timer of its own per request (set, then cleared a few hundred
 * microseconds later) cost the proxy ~3% of its CPU under load. Here a timeout is an entry in
 * a set, and one timer, due at the earliest entry, sweeps the set: adding and cancelling cost
 * no timer at all while an earlier one is armed. A timeout fires at most {@link Deadlines}'
 * `slackMs` late; the timer is not re-armed once nothing is pending, and {@link Deadlines.close}
 * stops it.
 * @module
 */

/** A pending timeout, as returned by {@link Deadlines.add}. */
export interface Deadline {
  /** `performance.now()` at which it fires. */
  readonly at: number;
  readonly fire: () => void;
}

/** A set of timeouts swept by one timer. */
export class Deadlines {
  readonly #slackMs: number;
  readonly #pending = new Set<Deadline>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** When the armed timer fires (Infinity: none armed). */
  #timerAt = Infinity;
  #closed = false;

  /** `slackMs`: how late a timeout may fire, so that sweeps gather nearby deadlines. */
  constructor(slackMs = 20) {
    this.#slackMs = slackMs;
  }

  /** Number of timeouts pending (for tests). */
  get size(): number {
    return this.#pending.size;
  }

  /** Whether a timer is armed (for tests). */
  get armed(): boolean {
    return this.#timer !== undefined;
  }

  /** Call `fire` in `ms` milliseconds unless cancelled first. Nothing fires after close. */
  add(ms: number, fire: () => void): Deadline {
    const d: Deadline = { at: performance.now() + ms, fire };
    if (this.#closed) return d;
    this.#pending.add(d);
    if (d.at < this.#timerAt) this.#arm(d.at);
    return d;
  }

  /** Forget `d` (no-op if it fired or was cancelled already). */
  cancel(d: Deadline): void {
    this.#pending.delete(d);
  }

  /** Drop every pending timeout without firing it and stop the timer. */
  close(): void {
    this.#closed = true;
    this.#pending.clear();
    this.#disarm();
  }

  #arm(at: number): void {
    this.#disarm();
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#sweep(), Math.max(0, at - performance.now()));
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
  }

  #sweep(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = performance.now();
    const due: Deadline[] = [];
    let next = Infinity;
    for (const d of this.#pending) {
      if (d.at <= now) due.push(d);
      else if (d.at < next) next = d.at;
    }
    for (const d of due) this.#pending.delete(d);
    if (next !== Infinity) this.#arm(Math.max(next, now + this.#slackMs));
    for (const d of due) {
      try {
        d.fire();
      } catch (err) {
        // As from a timer callback of its own: an uncaught error, and the others still fire.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
