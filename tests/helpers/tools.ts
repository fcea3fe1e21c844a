/**
 * Tests that need a tool from outside the repository (Go, OpenSSH, OpenSSL): skipped with a
 * message on a machine without it, but never in CI. `.ci/run` sets `TOWER_CI=1` and installs
 * every such tool, so there a missing tool makes the test fail with the reason instead of
 * leaving a check against another implementation silently unrun.
 * @module
 */

/** Whether this run is CI's (`TOWER_CI=1`, set by `.ci/run`). */
export const IN_CI: boolean = Deno.env.get("TOWER_CI") === "1";

/** What {@link requireTools} found. */
export interface ToolRequirement {
  /** For `Deno.test({ ignore })`: true only when a tool is missing outside CI. */
  ignore: boolean;
  /** Why the tests cannot run here, if they cannot. */
  missing?: string;
  /** Call first in the test body: throws the reason when a tool is missing (CI). */
  check(): void;
}

/**
 * Probe once for the tools `what` needs; `probe` resolves to why they are missing, or undefined.
 * Outside CI a missing tool prints one SKIP line and the tests are ignored.
 */
export async function requireTools(
  what: string,
  probe: () => Promise<string | undefined>,
  installHint: string,
): Promise<ToolRequirement> {
  const missing = await probe();
  if (missing && !IN_CI) console.warn(`SKIP ${what} tests: ${missing} (install: ${installHint})`);
  return {
    ignore: missing !== undefined && !IN_CI,
    missing,
    check() {
      if (missing) {
        throw new Error(`${what}: ${missing}; CI must run this test (install: ${installHint})`);
      }
    },
  };
}

/** A probe for {@link requireTools}: runs `cmd args…`, missing when it cannot run or fails. */
export function commandWorks(cmd: string, args: string[]): () => Promise<string | undefined> {
  return async () => {
    try {
      const out = await new Deno.Command(cmd, {
        args,
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).output();
      return out.success ? undefined : `\`${[cmd, ...args].join(" ")}\` failed`;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return `\`${cmd}\` is not installed`;
      throw err;
    }
  };
}
