/**
 * The request log of the test API server: one entry per request that came
 * over the network (in-process `server.request` calls are not logged), with
 * the caller's identity, the authorization attributes and the response
 * status, so a test can list exactly which calls a component made.
 * @module
 */

import type { Identity } from "./rbac.ts";
import type { RequestAttributes } from "./requestinfo.ts";

/** One logged request. */
export interface AuditEntry {
  /** When the response status was known (ms since the epoch). */
  time: number;
  /**
   * User name the request acted as (the impersonated one with `Impersonate-User`;
   * `system:anonymous` for anonymous; `""` when authentication failed).
   */
  user: string;
  groups: string[];
  /** The authenticated user when it impersonated `user`. */
  impersonatedBy?: string;
  /** HTTP method. */
  method: string;
  /** Path and query as sent. */
  uri: string;
  /** Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …). */
  verb: string;
  resourceRequest: boolean;
  group: string;
  version: string;
  resource: string;
  subresource: string;
  namespace: string;
  name: string;
  /** Response status (101 for upgraded streams, 200 for watches once started). */
  status: number;
}

/** A filter over entries: every given field must match. */
export type AuditFilter = Partial<Omit<AuditEntry, "groups" | "time">>;

/** The request log: an array of entries (oldest first) with helpers. */
export class AuditLog extends Array<AuditEntry> {
  static override get [Symbol.species](): ArrayConstructor {
    return Array;
  }

  /**
   * Append an entry for a finished (or started, for streams) request made as
   * `user`, authenticated as `authenticated` (when it impersonated `user`).
   */
  record(
    user: Identity | undefined,
    method: string,
    uri: string,
    a: RequestAttributes,
    status: number,
    authenticated?: Identity,
  ): void {
    this.push({
      time: Date.now(),
      user: user?.name ?? "",
      groups: user ? [...user.groups] : [],
      method,
      uri,
      verb: a.verb,
      resourceRequest: a.resourceRequest,
      group: a.group,
      version: a.version,
      resource: a.resource,
      subresource: a.subresource,
      namespace: a.namespace,
      name: a.name,
      status,
      ...(authenticated && user && authenticated.name !== user.name
        ? { impersonatedBy: authenticated.name }
        : {}),
    });
  }

  /** Forget every entry. */
  clear(): void {
    this.length = 0;
  }

  /** The entries matching every field of `filter`. */
  where(filter: AuditFilter): AuditEntry[] {
    const keys = Object.keys(filter) as (keyof AuditFilter)[];
    return this.filter((e) => keys.every((k) => e[k] === filter[k]));
  }

  /**
   * Distinct resource calls of `user`, as `verb group/resource[/sub] [ns/]name`
   * strings (`core` for the core group, no name for collections), sorted:
   * a compact summary for assertions and reports.
   */
  calls(user: string): string[] {
    const out = new Set<string>();
    for (const e of this) {
      if (e.user !== user || !e.resourceRequest) continue;
      const res = `${e.group || "core"}/${e.resource}${e.subresource ? `/${e.subresource}` : ""}`;
      const where = [e.namespace, e.name].filter((x) => x).join("/");
      out.add(`${e.verb} ${res}${where ? ` ${where}` : ""}`);
    }
    return [...out].sort();
  }
}
