/**
 * `core/v1` and `events.k8s.io/v1` Events are one stored resource with two
 * shapes; these convert between them (stored form: core/v1).
 * @module
 */

import type { KubeObject } from "./types.ts";

type Obj = Record<string, unknown>;

const RENAMES: [string, string][] = [
  ["involvedObject", "regarding"],
  ["message", "note"],
  ["source", "deprecatedSource"],
  ["firstTimestamp", "deprecatedFirstTimestamp"],
  ["lastTimestamp", "deprecatedLastTimestamp"],
  ["count", "deprecatedCount"],
];

/** A stored (core/v1) Event in events.k8s.io/v1 shape. */
export function toEventsV1(core: KubeObject): KubeObject {
  const out: Obj = { ...core, apiVersion: "events.k8s.io/v1", kind: "Event" };
  for (const [a, b] of RENAMES) {
    if (a in out) {
      out[b] = out[a];
      delete out[a];
    }
  }
  if ("reportingComponent" in out) {
    out.reportingController = out.reportingComponent;
    delete out.reportingComponent;
  }
  return out as KubeObject;
}

/** An events.k8s.io/v1 Event in stored (core/v1) shape. */
export function fromEventsV1(ev: KubeObject): KubeObject {
  const out: Obj = { ...ev, apiVersion: "v1", kind: "Event" };
  for (const [a, b] of RENAMES) {
    if (b in out) {
      out[a] = out[b];
      delete out[b];
    }
  }
  if ("reportingController" in out) {
    out.reportingComponent = out.reportingController;
    delete out.reportingController;
  }
  out.involvedObject ??= {};
  return out as KubeObject;
}
