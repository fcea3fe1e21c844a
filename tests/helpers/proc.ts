/**
 * Real processes for end-to-end tests: start `proxy.ts`/`agent.ts` (or any
 * command), collect their output line by line, wait for a line matching a
 * pattern (bounded by a deadline, never by a sleep), and stop them.
 * @module
 */

const ROOT = new URL("../../", import.meta.url).pathname;

/** A started process and its collected output (stdout and stderr interleaved). */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  #waiters: { re: RegExp; from: number; resolve: (l: string) => void }[] = [];
  #done: Promise<Deno.CommandStatus>;
  #exited = false;

  constructor(readonly name: string, cmd: string, args: string[], env?: Record<string, string>) {
    // A state directory of its own: an agent records the proxy host keys it trusts there
    // (`$XDG_STATE_HOME/tower/known_proxies`), and two tests' proxies may get the same port.
    const state = env?.XDG_STATE_HOME === undefined
      ? Deno.makeTempDirSync({ prefix: "tower-state-" })
      : undefined;
    this.child = new Deno.Command(cmd, {
      args,
      cwd: ROOT,
      env: { NO_COLOR: "1", ...(state ? { XDG_STATE_HOME: state } : {}), ...env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      let buf = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.#line(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      }
      if (buf) this.#line(buf);
    };
    const pumps = Promise.all([pump(this.child.stdout), pump(this.child.stderr)]);
    this.#done = pumps.then(() => this.child.status).then(async (s) => {
      this.#exited = true;
      if (state) await Deno.remove(state, { recursive: true }).catch(() => {});
      return s;
    });
  }

  #line(line: string): void {
    this.lines.push(line);
    if (Deno.env.get("TOWER_TEST_VERBOSE")) console.error(`[${this.name}] ${line}`);
    const idx = this.lines.length - 1;
    this.#waiters = this.#waiters.filter((w) => {
      if (idx >= w.from && w.re.test(line)) {
        w.resolve(line);
        return false;
      }
      return true;
    });
  }

  /** Output so far, one string. */
  get output(): string {
    return this.lines.join("\n");
  }

  /** Number of lines matching `re` so far. */
  count(re: RegExp): number {
    return this.lines.filter((l) => re.test(l)).length;
  }

  /**
   * Resolve with the first line matching `re` at index ≥ `from` (default: any
   * line so far). Rejects after `timeoutMs` or if the process exits first.
   */
  waitFor(re: RegExp, timeoutMs = 20_000, from = 0): Promise<string> {
    const found = this.lines.slice(from).find((l) => re.test(l));
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = {
        re,
        from,
        resolve: (l: string) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((x) => x !== w);
        reject(
          new Error(
            `${this.name}: no line matching ${re} within ${timeoutMs} ms; output:\n${this.tail()}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.push(w);
      this.#done.then(() => {
        if (this.#waiters.includes(w)) {
          clearTimeout(timer);
          this.#waiters = this.#waiters.filter((x) => x !== w);
          reject(
            new Error(`${this.name}: exited before a line matching ${re}; output:\n${this.tail()}`),
          );
        }
      });
    });
  }

  /** The last lines of output, for failure messages. */
  tail(n = 40): string {
    return this.lines.slice(-n).join("\n");
  }

  /** Exit status (waits for exit). */
  status(): Promise<Deno.CommandStatus> {
    return this.#done;
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Send a signal (ignored if already exited). */
  signal(sig: Deno.Signal): void {
    if (this.#exited) return;
    try {
      this.child.kill(sig);
    } catch {
      // already gone
    }
  }

  /** Stop the process (SIGTERM, then SIGKILL after `graceMs`) and wait for it. */
  async stop(graceMs = 5000): Promise<Deno.CommandStatus> {
    this.signal("SIGTERM");
    const timer = setTimeout(() => this.signal("SIGKILL"), graceMs);
    try {
      return await this.#done;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Whitespace-separated flags from environment variable `name` (none when unset). */
export function envFlags(name: string): string[] {
  return (Deno.env.get(name) ?? "").split(/\s+/).filter((f) => f !== "");
}

/** Start `deno run -A <script> …args` from the repository root. */
export function denoRun(
  name: string,
  script: string,
  args: string[],
  env?: Record<string, string>,
  runtimeFlags: string[] = [],
): Proc {
  // TOWER_DENO_FLAGS adds runtime flags to every child (e.g. `--cpu-prof` for profiling).
  const extra = envFlags("TOWER_DENO_FLAGS");
  return new Proc(
    name,
    Deno.execPath(),
    ["run", "-A", "--quiet", ...runtimeFlags, ...extra, script, ...args],
    env,
  );
}

/** Run a command to completion and return its output. */
export async function run(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; stdin?: string; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", ...opts.env },
    stdin: opts.stdin !== undefined ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // exited
    }
  }, opts.timeoutMs ?? 60_000);
  const out = await child.output();
  clearTimeout(timer);
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** A fresh temporary directory removed by the returned disposer. */
export async function tempDir(): Promise<{ path: string; [Symbol.asyncDispose](): Promise<void> }> {
  const path = await Deno.makeTempDir({ prefix: "tower-test-" });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }).catch(() => {}),
  };
}

/** Ports {@link freePort} has handed out in this process. */
const handedOut = new Set<number>();

/**
 * A free TCP port on 127.0.0.1 (bound then released), never one this process was given before:
 * the kernel may hand the same ephemeral port to two quick binds, and a test that asked for a
 * proxy port and an endpoint port must not get the same number twice.
 */
export function freePort(): number {
  for (let i = 0; i < 100; i++) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("freePort: no new free port in 100 tries");
}
