/** Server-side printing (Tables, JSONPath subset) of the test API server. */

import { assertEquals } from "../helpers/assert.ts";
import { builtinResources } from "./registry.ts";
import { jsonPath, toTable } from "./tables.ts";

Deno.test("jsonPath: fields, indexes, wildcards, filters", () => {
  const o = {
    status: { conditions: [{ type: "A", status: "True" }, { type: "B", status: "False" }] },
    spec: { ports: [{ port: 1 }, { port: 2 }] },
  };
  assertEquals(jsonPath(o, '.status.conditions[?(@.type=="B")].status'), ["False"]);
  assertEquals(jsonPath(o, ".spec.ports[*].port"), [1, 2]);
  assertEquals(jsonPath(o, "{.spec.ports[-1].port}"), [2]);
  assertEquals(jsonPath(o, ".spec.missing.x"), []);
});

Deno.test("toTable: Name plus the resource's columns; services computed cells", () => {
  const svcDef = builtinResources().find((d) => d.plural === "services")!;
  const t = toTable(
    svcDef,
    [{
      metadata: { name: "s", creationTimestamp: new Date().toISOString() },
      spec: {
        type: "LoadBalancer",
        clusterIP: "10.96.0.9",
        ports: [{ port: 80, nodePort: 30001 }],
      },
      status: { loadBalancer: {} },
    }],
    { resourceVersion: "5" },
    "None",
  );
  assertEquals(
    (t.columnDefinitions as { name: string }[]).map((c) => c.name),
    ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age"],
  );
  const cells = (t.rows as { cells: unknown[] }[])[0].cells;
  assertEquals(cells.slice(0, 5), ["s", "LoadBalancer", "10.96.0.9", "<pending>", "80:30001/TCP"]);
});
