import { Buffer } from "node:buffer";
import { assertEquals, assertRejects } from "../helpers/assert.ts";
import { SECRETS } from "../../lib/kube/mod.ts";
import { loadOrCreateCA, loadOrCreateHostKeyPem } from "../../lib/controller/persist.ts";
import { generateCA } from "../../lib/pki/mod.ts";
import { parseHostKey } from "../../lib/tunnel/hostkey.ts";
import { startEnv } from "./helpers.ts";

const NS = "kubesphere-system";
const CA_NAME = "other-ca";

Deno.test("CA Secret: created once, reloaded after a restart, create race resolved", async () => {
  const env = await startEnv();
  try {
    const first = await loadOrCreateCA(env.client);
    assertEquals(first.created, true);
    const again = await loadOrCreateCA(await env.newClient());
    assertEquals(again.created, false);
    assertEquals(again.certPem, first.certPem);
    const s = await env.client.get<{ metadata: { name: string }; type: string }>(
      SECRETS,
      "tower-ca",
      { namespace: NS },
    );
    assertEquals(s.type, "kubernetes.io/tls");

    // Two replicas race for a new Secret: both end up with the same CA.
    const [x, y] = await Promise.all([
      loadOrCreateCA(env.client, NS, "race-ca"),
      loadOrCreateCA(await env.newClient(), NS, "race-ca"),
    ]);
    assertEquals(x.certPem, y.certPem);
    assertEquals([x.created, y.created].filter(Boolean).length, 1, "exactly one created it");
  } finally {
    await env.close();
  }
});

Deno.test("CA Secret: an expired or broken stored CA is refused, not replaced", async () => {
  const env = await startEnv();
  try {
    const expired = await generateCA({ validDays: -1 });
    const b64 = (s: string) => Buffer.from(s).toString("base64");
    await env.client.create(SECRETS, {
      metadata: { name: "tower-ca", namespace: NS },
      type: "kubernetes.io/tls",
      data: { "tls.crt": b64(expired.certPem), "tls.key": b64(expired.keyPem) },
    });
    await assertRejects(
      () => loadOrCreateCA(env.client),
      Error,
      "Secret kubesphere-system/tower-ca",
    );
    await env.client.create(SECRETS, {
      metadata: { name: "empty-ca", namespace: NS },
      data: {},
    });
    await assertRejects(
      () => loadOrCreateCA(env.client, NS, "empty-ca"),
      Error,
      "missing tls.crt or tls.key",
    );
  } finally {
    await env.close();
  }
});

Deno.test("host key Secret: stable fingerprint across restarts and replicas", async () => {
  const env = await startEnv();
  try {
    const [a, b] = await Promise.all([
      loadOrCreateHostKeyPem(env.client),
      loadOrCreateHostKeyPem(await env.newClient()),
    ]);
    assertEquals(a.pem, b.pem);
    assertEquals([a.created, b.created].filter(Boolean).length, 1);
    const later = await loadOrCreateHostKeyPem(env.client);
    assertEquals(later.created, false);
    assertEquals(parseHostKey(later.pem).fingerprint, parseHostKey(a.pem).fingerprint);

    await env.client.create(SECRETS, {
      metadata: { name: "bad-key", namespace: NS },
      data: { "ssh-privatekey": Buffer.from("not a key").toString("base64") },
    });
    await assertRejects(
      () => loadOrCreateHostKeyPem(env.client, NS, "bad-key"),
      Error,
      "Secret kubesphere-system/bad-key",
    );
  } finally {
    await env.close();
  }
});

Deno.test("waitForApi: transient API errors are waited out; others throw at once", async () => {
  const env = await startEnv();
  try {
    const noRetry = await env.newClient({ retries: 0 });
    const secretsPath = (_m: string, p: string) => p.includes("/secrets");
    env.server.faults.failNext(1, 503, secretsPath);
    await assertRejects(() => loadOrCreateHostKeyPem(noRetry), Error, "503");
    env.server.faults.failNext(4, 500, secretsPath);
    const k = await loadOrCreateHostKeyPem(noRetry, NS, "tower-host-key", {
      waitForApi: true,
      backoff: { initialMs: 1, maxMs: 5 },
    });
    assertEquals(k.created, true);
    assertEquals(env.server.faults.failed, 5);
    env.server.faults.failNext(1, 403, secretsPath);
    await assertRejects(
      () => loadOrCreateCA(noRetry, NS, CA_NAME, { waitForApi: true }),
      Error,
      "403",
    );
    // Aborting the wait ends it.
    env.server.faults.failNext(1000, 500, secretsPath);
    const ac = new AbortController();
    const p = loadOrCreateCA(noRetry, NS, CA_NAME, {
      waitForApi: true,
      signal: ac.signal,
      backoff: { initialMs: 1, maxMs: 5 },
    });
    ac.abort();
    await assertRejects(() => p, Error, "Secret kubesphere-system/other-ca");
    env.server.faults.reset();
  } finally {
    await env.close();
  }
});
