/** Build version of Tower, reported on `/version`, in the `config` handshake and by `--version`. */

/** Semantic version of this build. The Go tower sends `v0.1.0` in its config. */
export const VERSION = "v0.1.0";
