/**
 * Structured logging for both binaries, on top of LogTape.
 *
 * Two layouts: the klog text layout Kubernetes operators know
 * (`I1108 09:57:50.145666       1 server.ts:46] message key="value"`) and
 * `json` (one object a line). Verbosity follows klog: `log.v(4, …)` is printed
 * only when `--v` is 4 or more. Secrets must go through {@link redact} before
 * they reach a log call.
 * @module
 */

import { configureSync, getLogger, type LogRecord, type Sink } from "@logtape/logtape";

/** Output layout of log lines. */
export type LogFormat = "text" | "json";

/** Options for {@link setupLogging}. */
export interface LogOptions {
  /** klog verbosity (`--v`); messages logged with `v(n, …)` show when n ≤ verbosity. */
  verbosity?: number;
  /** `text` (klog) or `json`. */
  format?: LogFormat;
  /** Where lines go; defaults to standard error. Tests pass a collector. */
  write?: (line: string) => void;
}

/** Key/value pairs attached to a log line. */
export type LogFields = Record<string, unknown>;

let verbosity = 0;
let configured = false;
const encoder = new TextEncoder();

/**
 * Info and debug lines waiting to go to standard error. A busy proxy logs a line per request:
 * one `write` per line cost a sixth of its CPU, so lines written within one timer tick (about a
 * millisecond) leave in one write. Warnings and errors flush everything at once, and so does
 * process exit (`unload`, which `Deno.exit` dispatches too).
 */
let pending: string[] = [];
let flushTimer: ReturnType<typeof setTimeout> | undefined;

/** Write any buffered log lines to standard error now. */
function flushLogs(): void {
  if (flushTimer !== undefined) {
    clearTimeout(flushTimer);
    flushTimer = undefined;
  }
  if (pending.length === 0) return;
  const bytes = encoder.encode(pending.join(""));
  pending = [];
  try {
    for (let off = 0; off < bytes.length;) off += Deno.stderr.writeSync(bytes.subarray(off));
  } catch {
    // stderr closed: nothing sensible left to do with a log line.
  }
}

function defaultWrite(line: string, urgent: boolean): void {
  pending.push(line);
  if (urgent || pending.length >= 256) flushLogs();
  else if (flushTimer === undefined) {
    flushTimer = setTimeout(flushLogs, 0);
  }
}

globalThis.addEventListener("unload", flushLogs);
// Also before an uncaught error or rejection ends the process (these do not handle it).
globalThis.addEventListener("error", flushLogs);
globalThis.addEventListener("unhandledrejection", flushLogs);

/** Configure logging once per process (a second call reconfigures). */
export function setupLogging(opts: LogOptions = {}): void {
  verbosity = opts.verbosity ?? 0;
  const format = opts.format ?? "text";
  const write = opts.write;
  const sink: Sink = (record: LogRecord) => {
    const line = format === "json" ? formatJson(record) : formatKlog(record);
    if (write) write(line);
    else defaultWrite(line, record.level !== "info" && record.level !== "debug");
  };
  configureSync({
    reset: true,
    sinks: { out: sink },
    loggers: [
      { category: ["tower"], lowestLevel: "debug", sinks: ["out"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: ["out"] },
    ],
  });
  configured = true;
}

/** Current klog verbosity. */
export function logVerbosity(): number {
  return verbosity;
}

/** A named logger; the name is shown where klog shows the source file. */
export interface Log {
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** Logged only when `--v` ≥ level. */
  v(level: number, msg: string, fields?: LogFields): void;
  /** Whether `v(level, …)` would print (to skip building expensive fields). */
  enabled(level: number): boolean;
}

/** Get a logger for a component, e.g. `logger("proxy/server")`. */
export function logger(component: string): Log {
  const l = getLogger(["tower", component]);
  const emit = (level: "info" | "warning" | "error" | "debug", msg: string, fields?: LogFields) => {
    if (!configured) setupLogging();
    const props: LogFields = { ...fields, [COMPONENT]: component };
    // LogTape treats `{x}` in the message as a placeholder; escape braces.
    const text = msg.replaceAll("{", "{{").replaceAll("}", "}}");
    l[level](text, props);
  };
  return {
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warning", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
    v: (level, msg, fields) => {
      if (level <= verbosity) emit(level === 0 ? "info" : "debug", msg, fields);
    },
    enabled: (level) => level <= verbosity,
  };
}

/** Show only enough of a secret to tell two apart: `6888…(64 chars)`. */
export function redact(secret: string | undefined | null): string {
  if (!secret) return "<empty>";
  if (secret.length <= 8) return `<${secret.length} chars>`;
  return `${secret.slice(0, 4)}…(${secret.length} chars)`;
}

const COMPONENT = "component";

function message(record: LogRecord): string {
  return record.message.map((part) => (typeof part === "string" ? part : String(part))).join("");
}

function fieldsOf(record: LogRecord): [string, unknown][] {
  return Object.entries(record.properties).filter(([k]) => k !== COMPONENT);
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, "0");
}

const LETTER: Record<string, string> = {
  trace: "I",
  debug: "I",
  info: "I",
  warning: "W",
  error: "E",
  fatal: "F",
};

function fmtValue(v: unknown): string {
  if (v instanceof Error) return JSON.stringify(v.message);
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean" || v === null || v === undefined) {
    return String(v);
  }
  try {
    return JSON.stringify(v);
  } catch {
    return JSON.stringify(String(v));
  }
}

/** klog text layout: `Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg k="v"`. */
export function formatKlog(record: LogRecord): string {
  const d = new Date(record.timestamp);
  const micros = pad(d.getUTCMilliseconds(), 3) + "000";
  const head = `${LETTER[record.level] ?? "I"}${pad(d.getUTCMonth() + 1)}${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${micros} ` +
    `${String(Deno.pid).padStart(7)} ${String(record.properties[COMPONENT] ?? "tower")}] `;
  const kv = fieldsOf(record).map(([k, v]) => ` ${k}=${fmtValue(v)}`).join("");
  return `${head}${message(record)}${kv}\n`;
}

/** JSON layout: one object a line with ts, level, logger, msg and the fields. */
export function formatJson(record: LogRecord): string {
  const obj: Record<string, unknown> = {
    ts: new Date(record.timestamp).toISOString(),
    level: record.level === "warning" ? "warn" : record.level,
    logger: record.properties[COMPONENT] ?? "tower",
    msg: message(record),
  };
  for (const [k, v] of fieldsOf(record)) obj[k] = v instanceof Error ? v.message : v;
  try {
    return JSON.stringify(obj) + "\n";
  } catch {
    return JSON.stringify({ ...obj, fields: "<unserialisable>" }) + "\n";
  }
}
