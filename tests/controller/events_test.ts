import { assertEquals } from "../helpers/assert.ts";
import { EVENTS } from "../../lib/kube/mod.ts";
import { EventRecorder } from "../../lib/controller/events.ts";
import { clusterManifest, startEnv } from "./helpers.ts";

Deno.test("EventRecorder: transitions recorded, repeats suppressed, failures dropped", async () => {
  const env = await startEnv();
  try {
    const rec = new EventRecorder({ client: env.client, instance: "test-1" });
    const c = clusterManifest("alpha");
    c.metadata.uid = "u-1";
    const up = { type: "Normal" as const, reason: "AgentConnected", message: "up" };
    const down = { type: "Warning" as const, reason: "AgentDisconnected", message: "down" };
    rec.record(c, up);
    rec.record(c, up); // repeat: suppressed
    rec.record(c, down);
    rec.record(c, up); // a transition again: recorded
    rec.record(clusterManifest("beta"), up); // another cluster: recorded
    await rec.flush();
    type Ev = {
      metadata: { name?: string };
      reason: string;
      type: string;
      involvedObject: { kind: string; name: string; uid?: string; apiVersion: string };
      source: { component: string };
      reportingInstance: string;
      count: number;
    };
    const l = (await env.client.list<Ev>(EVENTS, { namespace: "default" })).items;
    const alpha = l.filter((e) => e.involvedObject.name === "alpha");
    assertEquals(alpha.map((e) => e.reason).sort(), [
      "AgentConnected",
      "AgentConnected",
      "AgentDisconnected",
    ]);
    assertEquals(alpha[0].involvedObject.kind, "Cluster");
    assertEquals(alpha[0].involvedObject.apiVersion, "cluster.kubesphere.io/v1alpha1");
    assertEquals(alpha[0].involvedObject.uid, "u-1");
    assertEquals(alpha[0].source.component, "tower");
    assertEquals(alpha[0].reportingInstance, "test-1");
    assertEquals(l.filter((e) => e.involvedObject.name === "beta").length, 1);

    // A failing API: the write is dropped, nothing throws.
    env.server.faults.failNext(100, 500, (m, p) => m === "POST" && p.includes("/events"));
    rec.record(c, down);
    await rec.flush();
    env.server.faults.reset();
    const after = (await env.client.list<Ev>(EVENTS, { namespace: "default" })).items;
    assertEquals(after.length, l.length);
  } finally {
    await env.close();
  }
});
