/**
 * Property tests (fast-check, seeded so failures reproduce) over the inputs an
 * unauthenticated peer controls: the `config` payload, and the WebSocket
 * frames the agent's own client parses.
 */

import fc from "fast-check";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type AgentConfig,
  ConfigError,
  decodeAgentConfig,
  encodeAgentConfig,
} from "../../lib/tunnel/handshake.ts";
import { encodeFrame, FrameParser } from "../../lib/agent/ws_client.ts";

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
        BearerToken: bytes,
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

Deno.test("frame parser: any split of valid frames yields the same messages; garbage never hangs", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 70_000 }), { minLength: 1, maxLength: 4 }),
      fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 20 }),
      (payloads, cuts) => {
        // Server frames are unmasked: strip the client mask bit by re-encoding unmasked.
        const wire = payloads.map((p) => unmasked(encodeFrame(0x2, p)));
        const all = concat(wire);
        const parser = new FrameParser();
        const got: Uint8Array[] = [];
        let off = 0;
        for (let i = 0; off < all.length; i++) {
          const n = cuts[i % cuts.length];
          for (const f of parser.push(all.slice(off, off + n))) got.push(f.payload);
          off += n;
        }
        assertEquals(got.length, payloads.length);
        got.forEach((g, i) => assertEquals(g, payloads[i]));
      },
    ),
    { seed: SEED, numRuns: 200 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 2048 }), (junk) => {
      try {
        new FrameParser().push(junk);
      } catch (err) {
        assert(err instanceof Error);
      }
    }),
    { seed: SEED, numRuns: 2000 },
  );
});

/** Turn a masked client frame into the equivalent unmasked server frame. */
function unmasked(frame: Uint8Array): Uint8Array {
  const len7 = frame[1] & 0x7f;
  const headLen = len7 < 126 ? 2 : len7 === 126 ? 4 : 10;
  const mask = frame.subarray(headLen, headLen + 4);
  const payload = frame.slice(headLen + 4);
  for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
  const out = new Uint8Array(headLen + payload.length);
  out.set(frame.subarray(0, headLen));
  out[1] &= 0x7f;
  out.set(payload, headLen);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
