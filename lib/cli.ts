/**
 * Command-line flags for both binaries, Go/pflag style (`--name value`,
 * `--name=value`), on top of `node:util` `parseArgs`. Each flag has a kind that
 * validates its value; every failure becomes a {@link FlagError} with a one-line
 * message naming the flag.
 * @module
 */

import { parseArgs } from "node:util";
import { formatDuration, parseDuration } from "./duration.ts";

/** How a flag's value is read and checked. */
export type FlagKind = "string" | "bool" | "int" | "duration" | "port";

/** One flag's definition. */
export interface FlagSpec {
  kind: FlagKind;
  /** Default value, already in the parsed form (ms for durations). */
  default?: string | number | boolean;
  /** One line for `--help`. */
  help: string;
  /** Missing value is an error. */
  required?: boolean;
  /** For `port`: allowed range (default 1–65535). */
  min?: number;
  max?: number;
  /** Extra check; return an error message to refuse the value. */
  validate?: (v: string | number | boolean) => string | undefined;
  /** May be given several times (string only): value becomes a list. */
  multiple?: boolean;
}

/** A set of flag definitions by name (without the dashes). */
export type FlagSpecs = Record<string, FlagSpec>;

/** Parsed values by flag name. */
export type FlagValues = Record<string, string | number | boolean | string[] | undefined>;

/** A bad command line: the message is the one line to print. */
export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

/** Result of {@link parseFlags}. */
export interface ParsedFlags {
  values: FlagValues;
  positionals: string[];
  help: boolean;
}

/**
 * Parse `args` against `specs`. `--help`/`-h` is always accepted.
 * @throws FlagError for an unknown flag, a bad value or a missing required flag.
 */
export function parseFlags(
  args: string[],
  specs: FlagSpecs,
  allowPositionals = false,
): ParsedFlags {
  // Accept Go's single-dash long flags (`-kubeconfig x`), as the Go tower did.
  const normalised = args.map((a) => (/^-[a-z][a-z0-9-]+(=.*)?$/.test(a) ? `-${a}` : a));
  const options: Record<
    string,
    { type: "string" | "boolean"; multiple?: boolean; short?: string }
  > = {
    help: { type: "boolean", short: "h" },
  };
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = {
      type: spec.kind === "bool" ? "boolean" : "string",
      multiple: !!spec.multiple,
    };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: normalised, options, strict: true, allowPositionals });
  } catch (err) {
    throw new FlagError(describeParseError(err));
  }
  const values: FlagValues = {};
  for (const [name, spec] of Object.entries(specs)) {
    const raw = (parsed.values as Record<string, unknown>)[name];
    if (raw === undefined) {
      if (spec.required && !parsed.values.help) {
        throw new FlagError(`flag --${name} is required: ${spec.help}`);
      }
      values[name] = spec.default as FlagValues[string];
      continue;
    }
    if (spec.multiple) {
      values[name] = raw as string[];
      continue;
    }
    values[name] = convert(name, spec, raw as string | boolean);
  }
  return { values, positionals: parsed.positionals, help: Boolean(parsed.values.help) };
}

function describeParseError(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const unknown = /Unknown option '([^']+)'/.exec(msg);
  if (unknown) return `unknown flag: ${unknown[1]}`;
  const missing = /Option '([^']+?)(?: <value>)?' argument missing/.exec(msg);
  if (missing) return `flag needs an argument: ${missing[1].replace(/^-\w, /, "")}`;
  const positional = /Unexpected argument '([^']+)'/.exec(msg);
  if (positional) return `unexpected argument: ${positional[1]}`;
  return msg.split("\n")[0];
}

function convert(name: string, spec: FlagSpec, raw: string | boolean): string | number | boolean {
  const bad = (why: string) =>
    new FlagError(`invalid value ${JSON.stringify(raw)} for flag --${name}: ${why}`);
  let value: string | number | boolean;
  switch (spec.kind) {
    case "bool":
      value = raw === true || raw === "true";
      break;
    case "string":
      value = String(raw);
      break;
    case "int": {
      if (!/^-?\d+$/.test(String(raw))) throw bad("not an integer");
      value = Number(raw);
      if (spec.min !== undefined && value < spec.min) throw bad(`must be at least ${spec.min}`);
      if (spec.max !== undefined && value > spec.max) throw bad(`must be at most ${spec.max}`);
      break;
    }
    case "port": {
      const min = spec.min ?? 1;
      const max = spec.max ?? 65535;
      if (!/^\d+$/.test(String(raw))) throw bad(`not a port number (${min}-${max})`);
      value = Number(raw);
      if (value < min || value > max) throw bad(`port must be in ${min}-${max}`);
      break;
    }
    case "duration": {
      try {
        value = parseDuration(String(raw));
      } catch (err) {
        throw bad((err as Error).message);
      }
      if (value < 0) throw bad("must not be negative");
      break;
    }
  }
  const why = spec.validate?.(value);
  if (why) throw bad(why);
  return value;
}

/** Render `--help` text: usage line, then one line a flag with its default. */
export function helpText(usage: string, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([name, spec]) => {
    const arg = spec.kind === "bool"
      ? ""
      : ` ${
        spec.kind === "duration"
          ? "duration"
          : spec.kind === "port" || spec.kind === "int"
          ? "int"
          : "string"
      }`;
    return [`  --${name}${arg}`, spec.help + defaultNote(spec)];
  });
  rows.push(["  -h, --help", "show this help and exit"]);
  const width = Math.max(...rows.map(([l]) => l.length)) + 3;
  return `${usage}\n\nFlags:\n${rows.map(([l, r]) => l.padEnd(width) + r).join("\n")}\n`;
}

function defaultNote(spec: FlagSpec): string {
  if (spec.required) return " (required)";
  if (spec.default === undefined || spec.default === "" || spec.default === false) return "";
  if (spec.kind === "duration") return ` (default ${formatDuration(spec.default as number)})`;
  return ` (default ${JSON.stringify(spec.default)})`;
}

/**
 * Parse a command's flags the way every Tower command does: a bad command line
 * prints `<name>: <error> (see --help)` and gives exit code 2; `--help` prints
 * the help and `--version` (when the specs have it) the version, giving 0.
 * Returns the parsed flags, or the exit code when the command is already done.
 */
export function parseCommandLine(
  name: string,
  args: string[],
  specs: FlagSpecs,
  usage: string,
  opts: { allowPositionals?: boolean; version?: string } = {},
): ParsedFlags | number {
  let flags: ParsedFlags;
  try {
    flags = parseFlags(args, specs, opts.allowPositionals ?? false);
  } catch (err) {
    if (err instanceof FlagError) {
      console.error(`${name}: ${err.message} (see --help)`);
      return 2;
    }
    throw err;
  }
  if (flags.help) {
    console.log(helpText(usage, specs));
    return 0;
  }
  if (opts.version && flags.values.version) {
    console.log(opts.version);
    return 0;
  }
  return flags;
}
