/**
 * The clusters file: shapes it accepts, errors it names, port allocation.
 */

import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { join } from "node:path";
import {
  FileClusterSource,
  parseClustersFile,
  recordsFromEntries,
} from "../../lib/proxy/clusters_file.ts";
import { setupLogging } from "../../lib/log.ts";

Deno.test("clusters file: a list, a ClusterList and multi-document YAML", () => {
  const one = "metadata: {name: a}\nspec: {connection: {token: t}}\n";
  assertEquals(parseClustersFile(one).map((e) => e.name), ["a"]);
  assertEquals(parseClustersFile(`- ${one.replace("\n", "\n  ")}`).map((e) => e.name), ["a"]);
  assertEquals(
    parseClustersFile(
      `kind: ClusterList\nitems:\n- metadata: {name: b}\n  spec: {connection: {token: t}}\n`,
    )
      .map((e) => e.name),
    ["b"],
  );
  assertEquals(
    parseClustersFile(`${one}---\nmetadata: {name: c}\nspec: {connection: {token: t}}\n`).length,
    2,
  );
  assertEquals(parseClustersFile("[]"), []);
  assertEquals(parseClustersFile(""), []);
  assertEquals(
    parseClustersFile(
      "metadata: {name: d}\nspec: {joinFederation: false, connection: {token: t}}",
    )[0].enabled,
    false,
  );
});

Deno.test("clusters file: errors name the entry and the field", () => {
  assertThrows(
    () => parseClustersFile("metadata: {name: a}\nspec: {}"),
    Error,
    "entry 1 (a): spec.connection.token missing",
  );
  assertThrows(
    () => parseClustersFile("metadata: {name: Bad_Name}\nspec: {connection: {token: t}}"),
    Error,
    "metadata.name",
  );
  assertThrows(
    () =>
      parseClustersFile(
        "- metadata: {name: a}\n  spec: {connection: {token: t}}\n- metadata: {name: a}\n  spec: {connection: {token: t}}",
      ),
    Error,
    "duplicate cluster a",
  );
  assertThrows(
    () =>
      parseClustersFile(
        "metadata: {name: a}\nspec: {connection: {token: t, kubernetesAPIServerPort: 99999}}",
      ),
    Error,
    "kubernetesAPIServerPort",
  );
});

Deno.test("clusters file: ports given are kept, others allocated without collision; beyond the range, none", () => {
  const entries = Array.from({ length: 1005 }, (_, i) => ({
    name: `c${i}`,
    token: "t",
    enabled: true,
    ...(i === 0 ? { kubernetesPort: 6001, kubespherePort: 16001 } : {}),
  }));
  // A range of 1,000 pairs (the original's), less the fetch-blocked ones.
  const recs = recordsFromEntries(entries, "127.0.0.1", new Map(), { min: 6000, max: 6999 });
  assertEquals(recs.get("c0")!.kubernetesPort, 6001);
  const ports = [...recs.values()].flatMap((r) => [r.kubernetesPort, r.kubespherePort]).filter(
    Boolean,
  );
  assertEquals(new Set(ports).size, ports.length, "no port twice");
  const without = [...recs.values()].filter((r) => !r.kubernetesPort);
  assert(without.length > 0 && without.every((r) => r.kubernetesEndpoint === undefined));
  assertEquals(
    recs.size,
    1005,
    "clusters without ports are still known (their agents may connect)",
  );
});

Deno.test("clusters file: a kubeconfig that cannot be read is logged with its path, a missing one is not", async () => {
  const dir = await Deno.makeTempDir();
  const lines: string[] = [];
  setupLogging({ format: "json", write: (l) => lines.push(l) });
  try {
    const path = join(dir, "clusters.yaml");
    await Deno.writeTextFile(path, "- metadata: {name: a}\n  spec: {connection: {token: t}}\n");
    const src = new FileClusterSource({ path, watch: false });
    await src.ready();
    assertEquals(await src.currentKubeconfig("a"), undefined);
    assertEquals(lines.filter((l) => l.includes("kubeconfig")), []);
    // A directory where the file should be: unreadable, so a fresh one is due, and it is said.
    await Deno.mkdir(src.kubeconfigPath("a"));
    assertEquals(await src.currentKubeconfig("a"), undefined);
    const warned = lines.map((l) => JSON.parse(l)).filter((r) => r.msg?.includes("kubeconfig"));
    assertEquals(warned.length, 1, lines.join(""));
    assertEquals(warned[0].level, "warn");
    assertEquals(warned[0].cluster, "a");
    assertEquals(warned[0].path, src.kubeconfigPath("a"));
    await src.close();
  } finally {
    setupLogging();
    await Deno.remove(dir, { recursive: true });
  }
});
