/**
 * Property tests (fast-check, seeded so failures reproduce) over the input an
 * unauthenticated peer controls in the handshake: the `config` payload.
 * (WebSocket framing under arbitrary splits: tests/tunnel/ws_stream_test.ts;
 * SSH identification lines: tests/tunnel/ssh_compat_test.ts.)
 */

import fc from "fast-check";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type AgentConfig,
  ConfigError,
  decodeAgentConfig,
  encodeAgentConfig,
} from "../../lib/tunnel/handshake.ts";

const SEED = 20261123;
const enc = new TextEncoder();

Deno.test("config decoder: any bytes either decode or raise ConfigError, never anything else", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 4096 }), (bytes) => {
      try {
        decodeAgentConfig(bytes);
      } catch (err) {
        assert(err instanceof ConfigError, String(err));
      }
    }),
    { seed: SEED, numRuns: 3000 },
  );
});

Deno.test("config decoder: arbitrary JSON values and wrong types are refused cleanly", () => {
  fc.assert(
    fc.property(fc.jsonValue({ maxDepth: 4 }), (value) => {
      try {
        const cfg = decodeAgentConfig(enc.encode(JSON.stringify(value)));
        // Whatever is accepted is a well-formed config.
        assertEquals(typeof cfg.Name, "string");
        assert(cfg.Name.length > 0);
      } catch (err) {
        assert(err instanceof ConfigError, String(err));
      }
    }),
    { seed: SEED, numRuns: 3000 },
  );
});

const name = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?$/);
const hostPort = fc.tuple(
  fc.stringMatching(/^[a-z][a-z0-9.-]{0,20}[a-z0-9]$/),
  fc.integer({ min: 1, max: 65535 }),
)
  .map(([h, p]) => `${h}:${p}`);
const bytes = fc.option(fc.uint8Array({ minLength: 1, maxLength: 512 }), { nil: undefined });
// A bearer token is printable ASCII (it goes into a header); the decoder refuses anything else.
const token = fc.option(
  fc.stringMatching(/^[!-~]{1,200}$/).map((s) => new TextEncoder().encode(s)),
  { nil: undefined },
);

Deno.test("config codec: every valid config round-trips through Go-compatible JSON", () => {
  fc.assert(
    fc.property(
      fc.record({
        Version: fc.string({ maxLength: 20 }),
        Name: name,
        Token: fc.stringMatching(/^[0-9a-f]{0,64}$/),
        KubernetesSvcHost: hostPort,
        KubeSphereSvcHost: hostPort,
        CertData: bytes,
        KeyData: bytes,
        CAData: bytes,
        BearerToken: token,
      }),
      (cfg) => {
        const clean = Object.fromEntries(
          Object.entries(cfg).filter(([, v]) => v !== undefined),
        ) as unknown as AgentConfig;
        assertEquals(decodeAgentConfig(encodeAgentConfig(clean)), clean);
      },
    ),
    { seed: SEED, numRuns: 2000 },
  );
});
