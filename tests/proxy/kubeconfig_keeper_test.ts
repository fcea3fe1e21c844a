/**
 * The kubeconfig keeper on its own, against an in-memory cluster source: who
 * gets a kubeconfig (available clusters, where this process may write), when
 * it is issued again (another credential epoch, another server, a third of
 * its validity left, or not a certificate of ours at all), that a valid one is
 * left alone (also while a lagging cache still shows the previous text), and
 * that a failed write is retried on its own instead of waiting for the next
 * sweep.
 */

import { Buffer } from "node:buffer";
import { parse } from "yaml";
import { assert, assertEquals } from "../helpers/assert.ts";
import { deadline } from "../helpers/deadline.ts";
import { type CA, findBinding, generateCA, verifyClientCert } from "../../lib/pki/mod.ts";
import type { ClusterRecord, ClusterSource } from "../../lib/proxy/clusters.ts";
import { EpochCache } from "../../lib/proxy/epochs.ts";
import { KubeconfigKeeper } from "../../lib/proxy/kubeconfig_keeper.ts";

/** Clusters in memory; what is "published" is what `currentKubeconfig` shows (or `shown`). */
class MemorySource implements ClusterSource {
  readonly records = new Map<string, ClusterRecord>();
  readonly published = new Map<string, string>();
  /** When set for a cluster, `currentKubeconfig` shows this instead (a lagging cache). */
  readonly shown = new Map<string, string | undefined>();
  readonly writes: string[] = [];
  /** Writes to refuse before the next succeeds. */
  failures = 0;
  #written?: () => void;

  add(name: string, token = "ab".repeat(32), port = 6443): ClusterRecord {
    const rec: ClusterRecord = {
      name,
      token,
      enabled: true,
      endpointHosts: ["127.0.0.1"],
      kubernetesPort: port,
      kubespherePort: port + 10000,
      kubernetesEndpoint: `https://127.0.0.1:${port}`,
    };
    this.records.set(name, rec);
    return rec;
  }

  /** Resolves at the next successful write. */
  nextWrite(): Promise<void> {
    return new Promise((resolve) => this.#written = resolve);
  }

  ready = () => Promise.resolve();
  lookup = (name: string) => this.records.get(name);
  list = () => [...this.records.values()];
  subscribe = () => () => {};
  agentConnected = () => Promise.resolve();
  agentDisconnected = () => Promise.resolve();
  close = () => Promise.resolve();

  currentKubeconfig(name: string): Promise<string | undefined> {
    return Promise.resolve(this.shown.has(name) ? this.shown.get(name) : this.published.get(name));
  }

  publishKubeconfig(name: string, text: string): Promise<void> {
    if (this.failures > 0) {
      this.failures--;
      return Promise.reject(new Error("disk full"));
    }
    this.published.set(name, text);
    this.writes.push(name);
    this.#written?.();
    return Promise.resolve();
  }
}

interface Setup {
  ca: CA;
  source: MemorySource;
  epochs: EpochCache;
  available: Set<string>;
  leader: { value: boolean };
  keeper(
    opts?: { validityMs?: number; retryInitialMs?: number; cacheLagMs?: number },
  ): KubeconfigKeeper;
}

async function setup(): Promise<Setup> {
  const ca = await generateCA({ commonName: "keeper-test-ca" });
  const source = new MemorySource();
  const epochs = new EpochCache(ca, source);
  const available = new Set<string>();
  const leader = { value: true };
  return {
    ca,
    source,
    epochs,
    available,
    leader,
    keeper: (opts = {}) =>
      new KubeconfigKeeper({
        ca,
        clusters: source,
        epochs,
        available: (c) => available.has(c),
        mayWrite: () => leader.value,
        ...opts,
      }),
  };
}

/** Binding and server of a published kubeconfig, checked against `ca`. */
async function inspect(ca: CA, text: string) {
  const kc = parse(text);
  const certPem = Buffer.from(kc.users[0].user["client-certificate-data"], "base64").toString();
  const verdict = await verifyClientCert(ca, certPem);
  assert(verdict.ok, "signed by the CA");
  return { server: kc.clusters[0].cluster.server as string, binding: findBinding(verdict.uris) };
}

Deno.test("keeper: only available clusters get a kubeconfig, and only where this process may write", async () => {
  const s = await setup();
  const k = s.keeper();
  try {
    s.source.add("alpha");
    s.source.add("beta", "cd".repeat(32), 6444);
    s.leader.value = false; // a standby replica
    s.available.add("alpha");
    k.checkAll();
    await k.settled();
    assertEquals(s.source.writes, []);
    s.leader.value = true;
    k.checkAll();
    await k.settled();
    assertEquals(s.source.writes, ["alpha"], "beta has no agent anywhere");
    const got = await inspect(s.ca, s.source.published.get("alpha")!);
    assertEquals(got.server, "https://127.0.0.1:6443");
    assertEquals(got.binding?.cluster, "alpha");
    assertEquals(got.binding?.epoch, s.epochs.epoch("alpha"));
    // Checked again with nothing changed: left alone.
    k.checkAll();
    await k.settled();
    assertEquals(s.source.writes, ["alpha"]);
    // A cluster Tower no longer serves gets nothing new.
    s.source.records.get("beta")!.enabled = false;
    s.available.add("beta");
    k.check("beta");
    await k.settled();
    assertEquals(s.source.writes, ["alpha"]);
  } finally {
    await k.close();
  }
});

Deno.test("keeper: a new token, another server, a third of the validity left or a foreign certificate each get a fresh kubeconfig", async () => {
  const s = await setup();
  const k = s.keeper();
  try {
    const rec = s.source.add("alpha");
    s.available.add("alpha");
    k.check("alpha");
    await k.settled();
    const first = await inspect(s.ca, s.source.published.get("alpha")!);

    rec.token = "ef".repeat(32); // rotated: certificates of the old epoch are refused
    k.check("alpha");
    await k.settled();
    const second = await inspect(s.ca, s.source.published.get("alpha")!);
    assert(second.binding?.epoch !== first.binding?.epoch, "bound to the new epoch");
    assertEquals(second.binding?.epoch, s.epochs.epoch("alpha"));

    rec.kubernetesEndpoint = "https://10.0.0.9:6443"; // the endpoint moved
    k.check("alpha");
    await k.settled();
    assertEquals(
      (await inspect(s.ca, s.source.published.get("alpha")!)).server,
      rec.kubernetesEndpoint,
    );
    assertEquals(s.source.writes.length, 3);

    // Issued for an hour by a keeper with that validity: with 30 days wanted, it needs renewing.
    const short = s.keeper({ validityMs: 3600_000 });
    rec.token = "12".repeat(32);
    short.check("alpha");
    await short.settled();
    await short.close();
    assertEquals(s.source.writes.length, 4);
    k.check("alpha");
    await k.settled();
    assertEquals(s.source.writes.length, 5, "an hour left of 30 days: renewed");

    // A kubeconfig someone else's CA signed, for this cluster and epoch, is not trusted.
    const other = await setup();
    other.source.records.set("alpha", { ...rec });
    const forger = new KubeconfigKeeper({
      ca: other.ca,
      clusters: other.source,
      epochs: new EpochCache(s.ca, other.source), // even the right epoch
      available: () => true,
      mayWrite: () => true,
    });
    forger.check("alpha");
    await forger.settled();
    await forger.close();
    s.source.published.set("alpha", other.source.published.get("alpha")!);
    k.check("alpha");
    await k.settled();
    assertEquals(s.source.writes.length, 6);
    await inspect(s.ca, s.source.published.get("alpha")!); // ours again
  } finally {
    await k.close();
  }
});

Deno.test("keeper: while the source still shows the previous kubeconfig after a write, nothing is issued twice", async () => {
  const s = await setup();
  const k = s.keeper();
  try {
    s.source.add("alpha");
    s.available.add("alpha");
    s.source.shown.set("alpha", undefined); // an informer that has not seen the write yet
    k.check("alpha");
    await k.settled();
    k.check("alpha");
    await k.settled();
    assertEquals(s.source.writes, ["alpha"]);
  } finally {
    await k.close();
  }
});

Deno.test("keeper: a write the source never shows is made again once the cache's lag is over, by itself", async () => {
  const s = await setup();
  const k = s.keeper({ cacheLagMs: 50 });
  try {
    s.source.add("alpha");
    s.available.add("alpha");
    s.source.shown.set("alpha", undefined); // the write is lost, or the cache is stuck
    k.check("alpha");
    await k.settled();
    const again = s.source.nextWrite();
    k.check("alpha"); // within the lag: nothing now, a check later
    await deadline(again, 30_000, "the second write");
    assertEquals(s.source.writes, ["alpha", "alpha"]);
  } finally {
    await k.close();
  }
});

Deno.test("keeper: a failed write is tried again by itself, without a new event or the sweep", async () => {
  const s = await setup();
  // 30 days of validity: the sweep is three days away, so only the retry can write.
  const k = s.keeper({ retryInitialMs: 20 });
  try {
    s.source.add("alpha");
    s.available.add("alpha");
    s.source.failures = 3;
    const written = s.source.nextWrite();
    k.check("alpha");
    await deadline(written, 30_000, "the write after three failures");
    assertEquals(s.source.writes, ["alpha"]);
    assertEquals(s.source.failures, 0);
    await inspect(s.ca, s.source.published.get("alpha")!);
  } finally {
    await k.close();
  }
});
