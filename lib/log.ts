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
 * one `write` per line cost a sixth of its CPU, so lines leave together, at most
 * {@link FLUSH_MS} after the first of them or once 256 are waiting (klog itself flushes info
 * lines every 5 s). Warnings and errors flush everything at once, and so does process exit
 * (`unload`, which `Deno.exit` dispatches too).
 */
let pending: string[] = [];
let flushTimer: ReturnType<typeof setTimeout> | undefined;
/** Longest an info line waits in {@link pending}. */
const FLUSH_MS = 50;

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
    flushTimer = setTimeout(flushLogs, FLUSH_MS);
  }
}

globalThis.addEventListener("unload", flushLogs);
// Also before an uncaught error or rejection ends the process (these do not handle it).
globalThis.addEventListener("error", flushLogs);
globalThis.addEventListener("unhandledrejection", flushLogs);

/** LogTape's mark for a sink that is done with a record when it returns (a registered symbol). */
const IMMEDIATE_SINK = Symbol.for("LogTape.sinkSnapshotPolicy.immediate");

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
  // The sink formats each record before returning, so LogTape need not copy the record's
  // properties first (it does for sinks not marked so; a third of a line's cost).
  Object.defineProperty(sink, IMMEDIATE_SINK, { value: true });
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
  const category = ["tower", component];
  const l = getLogger(category);
  const emit = (level: "info" | "warning" | "error" | "debug", msg: string, fields?: LogFields) => {
    if (!configured) setupLogging();
    // A finished record, with its category so it goes straight to the sinks: no message
    // template to parse (braces in `msg` are text), no lazy properties to resolve. The proxy
    // logs a line per request, so this path counts.
    const record: LogRecord = {
      category,
      level,
      timestamp: Date.now(),
      message: [msg],
      rawMessage: msg,
      properties: fields ?? {},
    };
    l.emit(record);
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

/** The component a record comes from: `proxy/http` for `tower`'s, else its whole category. */
function componentOf(record: LogRecord): string {
  const c = record.category;
  return c[0] === "tower" && c.length > 1 ? c.slice(1).join("/") : c.join(".");
}

function message(record: LogRecord): string {
  return record.message.map((part) => (typeof part === "string" ? part : String(part))).join("");
}

/** The klog time and thread columns of the last millisecond formatted (lines share it). */
let stampMs = -1;
let stamp = "";

function klogStamp(ms: number): string {
  if (ms !== stampMs) {
    const d = new Date(ms);
    stamp = `${pad(d.getUTCMonth() + 1)}${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.` +
      `${pad(d.getUTCMilliseconds(), 3)}000 ${String(Deno.pid).padStart(7)}`;
    stampMs = ms;
  }
  return stamp;
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
function formatKlog(record: LogRecord): string {
  const props = record.properties;
  let line = `${LETTER[record.level] ?? "I"}${klogStamp(record.timestamp)} ` +
    `${componentOf(record)}] ${message(record)}`;
  for (const k in props) line += ` ${k}=${fmtValue(props[k])}`;
  return line + "\n";
}

/** JSON layout: one object a line with ts, level, logger, msg and the fields. */
function formatJson(record: LogRecord): string {
  const obj: Record<string, unknown> = {
    ts: new Date(record.timestamp).toISOString(),
    level: record.level === "warning" ? "warn" : record.level,
    logger: componentOf(record),
    msg: message(record),
  };
  for (const [k, v] of Object.entries(record.properties)) {
    obj[k] = v instanceof Error ? v.message : v;
  }
  try {
    return JSON.stringify(obj) + "\n";
  } catch {
    return JSON.stringify({ ...obj, fields: "<unserialisable>" }) + "\n";
  }
}
