/**
 * The clusters file: shapes it accepts, errors it names, port allocation.
 */

import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { parseClustersFile, recordsFromEntries } from "../../lib/proxy/clusters_file.ts";

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
