/**
 * discovery.k8s.io/v1 EndpointSlices over HTTPS, used as a proxy replica
 * (publishing its slices) and a kube-proxy-like client (listing and watching
 * them by label) use them: discovery, generateName and the v1 defaults,
 * label and field selectors, watch, validation with the real server's
 * messages, updates and patches, protobuf.
 * @module
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { decodeObject, encodeObject, protobufWatchEvents } from "./protobuf/codec.ts";
import { startTestApiServer, type TestApiServer } from "./server.ts";
import { callJson, deadline, httpClient, openWatch } from "./testing.ts";

type Obj = Record<string, unknown>;

const NS = "kubesphere-system";
const SLICES = `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`;
const SERVICE = "kubernetes.io/service-name";
const MANAGED_BY = "endpointslice.kubernetes.io/managed-by";
const TOWER = "tower.kubesphere.io";

/** A JSON call over HTTPS as the admin. */
const api = (
  s: TestApiServer,
  method: string,
  path: string,
  body?: unknown,
  contentType?: string,
) => callJson(s, method, path, body, { contentType });

/** An EndpointSlice of Service `service` for replica `ip` (the shape a replica publishes). */
function slice(name: string, service: string, ip: string, extra: Obj = {}): Obj {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: { name, labels: { [SERVICE]: service, [MANAGED_BY]: TOWER } },
    addressType: "IPv4",
    endpoints: [{
      addresses: [ip],
      conditions: { ready: true, serving: true, terminating: false },
    }],
    ports: [{ name: "kubernetes", port: 6443, protocol: "TCP" }, { name: "kubesphere", port: 80 }],
    ...extra,
  };
}

const meta = (o: Obj) => o.metadata as Obj;
const names = (list: Obj) => (list.items as Obj[]).map((o) => meta(o).name);

Deno.test("EndpointSlices over HTTPS as a replica and kube-proxy use them", async (t) => {
  const s = await startTestApiServer({ namespaces: [NS] });
  try {
    await t.step(
      "discovery serves discovery.k8s.io/v1 endpointslices with every verb",
      async () => {
        const groups = (await api(s, "GET", "/apis")).body.groups as Obj[];
        const g = groups.find((x) => x.name === "discovery.k8s.io");
        assertEquals(g?.preferredVersion, { groupVersion: "discovery.k8s.io/v1", version: "v1" });
        const list = (await api(s, "GET", "/apis/discovery.k8s.io/v1")).body;
        const r = (list.resources as Obj[]).find((x) => x.name === "endpointslices");
        assertEquals([r?.kind, r?.namespaced, r?.singularName], [
          "EndpointSlice",
          true,
          "endpointslice",
        ]);
        assertEquals(
          [...(r?.verbs as string[])].sort(),
          ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        );
      },
    );

    await t.step(
      "create: generateName, v1 defaults, generation, empty lists read as null",
      async () => {
        const created = await api(s, "POST", SLICES, {
          ...slice("", "mc-alpha", "10.244.1.5"),
          metadata: {
            generateName: "mc-alpha-",
            labels: { [SERVICE]: "mc-alpha", [MANAGED_BY]: TOWER },
          },
          endpoints: [{ addresses: ["10.244.1.5"] }],
        });
        assertEquals(created.status, 201);
        const m = meta(created.body);
        assertMatch(String(m.name), /^mc-alpha-[a-z0-9]{5}$/);
        assertEquals([m.namespace, m.generation], [NS, 1]);
        assertMatch(String(m.uid), /^[0-9a-f-]{36}$/);
        assertEquals(created.body.ports, [
          { name: "kubernetes", port: 6443, protocol: "TCP" },
          { name: "kubesphere", port: 80, protocol: "TCP" },
        ]);
        assertEquals(created.body.endpoints, [{ addresses: ["10.244.1.5"], conditions: {} }]);
        const empty = await api(s, "POST", SLICES, {
          metadata: { name: "empty" },
          addressType: "IPv4",
          endpoints: [],
        });
        assertEquals(empty.status, 201);
        assertEquals([empty.body.endpoints, empty.body.ports], [null, null]);
        const again = await api(s, "POST", SLICES, {
          metadata: { name: "empty" },
          addressType: "IPv4",
        });
        assertEquals([again.status, again.body.reason], [409, "AlreadyExists"]);
        assertEquals(
          again.body.message,
          'endpointslices.discovery.k8s.io "empty" already exists',
        );
        assertEquals((await api(s, "DELETE", `${SLICES}/empty`)).status, 200);
        assertEquals((await api(s, "DELETE", `${SLICES}/${m.name}`)).status, 200);
      },
    );

    await t.step("list with equality and set-based label selectors, field selectors", async () => {
      for (
        const [name, service, ip, manager] of [
          ["mc-alpha-r0", "mc-alpha", "10.244.1.5", TOWER],
          ["mc-alpha-r1", "mc-alpha", "10.244.2.5", TOWER],
          ["mc-beta-r0", "mc-beta", "10.244.1.5", TOWER],
          ["mc-alpha-other", "mc-alpha", "10.244.3.9", "endpointslice-controller.k8s.io"],
        ]
      ) {
        const body = slice(name, service, ip);
        (meta(body).labels as Obj)[MANAGED_BY] = manager;
        assertEquals((await api(s, "POST", SLICES, body)).status, 201, name);
      }
      const q = async (query: string) =>
        names((await api(s, "GET", `${SLICES}?${new URLSearchParams(query)}`)).body);
      assertEquals(await q(`labelSelector=${SERVICE}=mc-alpha`), [
        "mc-alpha-other",
        "mc-alpha-r0",
        "mc-alpha-r1",
      ]);
      assertEquals(await q(`labelSelector=${SERVICE}==mc-alpha,${MANAGED_BY}=${TOWER}`), [
        "mc-alpha-r0",
        "mc-alpha-r1",
      ]);
      assertEquals(
        await q(`labelSelector=${SERVICE} in (mc-alpha,mc-beta),${MANAGED_BY} notin (${TOWER})`),
        ["mc-alpha-other"],
      );
      assertEquals(await q(`labelSelector=${SERVICE}!=mc-alpha,${MANAGED_BY}`), ["mc-beta-r0"]);
      assertEquals(await q(`labelSelector=!${SERVICE}`), []);
      assertEquals(await q("fieldSelector=metadata.name=mc-beta-r0"), ["mc-beta-r0"]);
      assertEquals(await q(`fieldSelector=metadata.namespace=${NS},metadata.name!=mc-beta-r0`), [
        "mc-alpha-other",
        "mc-alpha-r0",
        "mc-alpha-r1",
      ]);
      const all = await api(
        s,
        "GET",
        `/apis/discovery.k8s.io/v1/endpointslices?labelSelector=${SERVICE}%3Dmc-beta`,
      );
      assertEquals(names(all.body), ["mc-beta-r0"], "across namespaces");
      const bad = await api(s, "GET", `${SLICES}?fieldSelector=addressType%3DIPv4`);
      assertEquals([bad.status, bad.body.message], [400, "field label not supported: addressType"]);
    });

    await t.step(
      "watch by label: ready changes, a slice leaving the selection, deletion",
      async () => {
        const list = await api(s, "GET", `${SLICES}?labelSelector=${SERVICE}%3Dmc-alpha`);
        const rv = meta(list.body).resourceVersion;
        const w = await openWatch(
          s,
          `${SLICES}?watch=true&labelSelector=${SERVICE}%3Dmc-alpha&resourceVersion=${rv}`,
        );
        try {
          const r0 = (await api(s, "GET", `${SLICES}/mc-alpha-r0`)).body;
          (r0.endpoints as Obj[])[0].conditions = {
            ready: false,
            serving: false,
            terminating: true,
          };
          assertEquals((await api(s, "PUT", `${SLICES}/mc-alpha-r0`, r0)).status, 200);
          assertEquals(
            (await api(s, "POST", SLICES, slice("mc-beta-r1", "mc-beta", "10.244.2.5"))).status,
            201,
          );
          const moved = await api(
            s,
            "PATCH",
            `${SLICES}/mc-alpha-other`,
            { metadata: { labels: { [SERVICE]: "mc-gamma" } } },
            "application/merge-patch+json",
          );
          assertEquals(moved.status, 200);
          assertEquals((await api(s, "DELETE", `${SLICES}/mc-alpha-r1`)).status, 200);
          const seen: string[] = [];
          for (let i = 0; i < 3; i++) {
            const e = await w.next(`event ${i}`);
            const ep = ((e.object.endpoints ?? []) as Obj[])[0] as Obj | undefined;
            seen.push(`${e.type} ${meta(e.object).name} ready=${(ep?.conditions as Obj)?.ready}`);
          }
          assertEquals(seen, [
            "MODIFIED mc-alpha-r0 ready=false",
            "DELETED mc-alpha-other ready=true",
            "DELETED mc-alpha-r1 ready=true",
          ]);
        } finally {
          await w.stop();
        }
      },
    );

    await t.step("updates: generation, no-op PUT, patches; addressType is immutable", async () => {
      const path = `${SLICES}/mc-beta-r0`;
      const cur = (await api(s, "GET", path)).body;
      const same = await api(s, "PUT", path, cur);
      assertEquals(meta(same.body).resourceVersion, meta(cur).resourceVersion, "no-op PUT");
      const relabeled = await api(
        s,
        "PATCH",
        path,
        { metadata: { labels: { extra: "x" } } },
        "application/merge-patch+json",
      );
      assertEquals(meta(relabeled.body).generation, 2, "a label change counts");
      const annotated = await api(
        s,
        "PATCH",
        path,
        { metadata: { annotations: { note: "x" } } },
        "application/merge-patch+json",
      );
      assertEquals(meta(annotated.body).generation, 2, "an annotation does not");
      const moved = await api(s, "PATCH", path, [
        { op: "replace", path: "/endpoints/0/addresses/0", value: "10.244.9.9" },
        { op: "add", path: "/endpoints/0/conditions/ready", value: false },
      ], "application/json-patch+json");
      assertEquals(moved.status, 200);
      assertEquals(moved.body.endpoints, [{
        addresses: ["10.244.9.9"],
        conditions: { ready: false, serving: true, terminating: false },
      }]);
      assertEquals(meta(moved.body).generation, 3);
      // Strategic merge: ports and endpoints are atomic lists, replaced whole.
      const smp = await api(
        s,
        "PATCH",
        path,
        { ports: [{ name: "kubernetes", port: 7443 }] },
        "application/strategic-merge-patch+json",
      );
      assertEquals(smp.status, 200);
      assertEquals(smp.body.ports, [{ name: "kubernetes", port: 7443, protocol: "TCP" }]);
      const v6 = await api(s, "PATCH", path, {
        addressType: "IPv6",
        endpoints: [{ addresses: ["fd00::5"] }],
      }, "application/merge-patch+json");
      assertEquals(v6.status, 422);
      assertEquals(
        v6.body.message,
        'EndpointSlice.discovery.k8s.io "mc-beta-r0" is invalid: addressType: Invalid value: "IPv6": field is immutable',
      );
      assertEquals(
        (v6.body.details as Obj).causes,
        [{
          reason: "FieldValueInvalid",
          message: 'Invalid value: "IPv6": field is immutable',
          field: "addressType",
        }],
      );
    });

    await t.step("deletecollection by label", async () => {
      const r = await api(s, "DELETE", `${SLICES}?labelSelector=${SERVICE}%3Dmc-beta`);
      assertEquals(r.status, 200);
      assertEquals(names(r.body).sort(), ["mc-beta-r0", "mc-beta-r1"]);
      const left = await api(s, "GET", SLICES);
      assertEquals(names(left.body), ["mc-alpha-other", "mc-alpha-r0"]);
    });
  } finally {
    await s.close();
  }
});

Deno.test("EndpointSlice validation as the real server (422 Invalid, 400 decode errors)", async (t) => {
  const s = await startTestApiServer({ namespaces: [NS] });
  const invalid = async (body: Obj) => {
    const r = await api(s, "POST", SLICES, { metadata: { name: "bad" }, ...body });
    assertEquals(r.status, 422, JSON.stringify(r.body));
    assertEquals(r.body.reason, "Invalid");
    return String(r.body.message).replace('EndpointSlice.discovery.k8s.io "bad" is invalid: ', "");
  };
  try {
    await t.step("addressType", async () => {
      assertEquals(await invalid({}), "addressType: Required value");
      assertEquals(
        await invalid({ addressType: "IP" }),
        'addressType: Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6"',
      );
    });

    await t.step("endpoints and addresses", async () => {
      assertEquals(
        await invalid({ addressType: "IPv4", endpoints: [{ conditions: { ready: true } }] }),
        "endpoints[0].addresses: Required value: must contain at least 1 address",
      );
      const many = Array.from({ length: 101 }, (_, i) => `10.1.${i >> 8}.${i & 255}`);
      assertEquals(
        await invalid({ addressType: "IPv4", endpoints: [{ addresses: many }] }),
        "endpoints[0].addresses: Too many: 101: must have at most 100 items",
      );
      const endpoints = Array.from({ length: 1001 }, () => ({ addresses: ["10.1.1.1"] }));
      assertEquals(
        await invalid({ addressType: "IPv4", endpoints }),
        "endpoints: Too many: 1001: must have at most 1000 items",
      );
      assertEquals(
        await invalid({ addressType: "IPv4", endpoints: [{ addresses: ["127.0.0.2"] }] }),
        'endpoints[0].addresses[0]: Invalid value: "127.0.0.2": may not be in the loopback range (127.0.0.0/8, ::1/128)',
      );
      assertEquals(
        await invalid({
          addressType: "IPv4",
          endpoints: [{ addresses: ["fd00::1", "169.254.1.1"] }],
        }),
        '[endpoints[0].addresses[0]: Invalid value: "fd00::1": must be a valid IPv4 address, ' +
          'endpoints[0].addresses[1]: Invalid value: "169.254.1.1": may not be in the link-local range (169.254.0.0/16, fe80::/10)]',
      );
      assertEquals(
        await invalid({ addressType: "IPv6", endpoints: [{ addresses: ["pod-a"] }] }),
        '[endpoints[0].addresses[0]: Invalid value: "pod-a": must be a valid IPv6 address, ' +
          'endpoints[0].addresses[0]: Invalid value: "pod-a": must be a valid IP address]',
      );
      assertEquals(
        await invalid({ addressType: "FQDN", endpoints: [{ addresses: ["tower"] }] }),
        'endpoints[0].addresses[0]: Invalid value: "tower": should be a domain with at least two segments separated by dots',
      );
      assertEquals(
        await invalid({
          addressType: "IPv4",
          endpoints: [{ addresses: ["10.1.1.1"], hostname: "a.b" }],
        }),
        'endpoints[0].hostname: Invalid value: "a.b": must not contain dots',
      );
    });

    await t.step("ports", async () => {
      assertEquals(
        await invalid({
          addressType: "IPv4",
          ports: [{ name: "https", port: 1 }, { name: "https", port: 2, protocol: "ICMP" }, {
            name: "Web",
          }],
        }),
        '[ports[1].name: Duplicate value: "https", ' +
          'ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP", ' +
          `ports[2].name: Invalid value: "Web": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')]`,
      );
      assertEquals(
        await invalid({ addressType: "IPv4", ports: [{ port: 1 }, { port: 2 }] }),
        'ports[1].name: Duplicate value: ""',
        'unnamed ports default to "", so two of them collide',
      );
    });

    await t.step("the name is a DNS subdomain; name or generateName is required", async () => {
      const r = await api(s, "POST", SLICES, {
        metadata: { name: "Mc_Alpha" },
        addressType: "IPv4",
      });
      assertEquals(r.status, 422);
      assertMatch(
        String(r.body.message),
        /metadata\.name: Invalid value: "Mc_Alpha": a lowercase RFC 1123 subdomain/,
      );
      const none = await api(s, "POST", SLICES, { metadata: {}, addressType: "IPv4" });
      assertEquals([none.status, (none.body.details as Obj).causes], [422, [{
        reason: "FieldValueRequired",
        field: "metadata.name",
        message: "Required value: name or generateName is required",
      }]]);
    });

    await t.step("wrong JSON types are the decoder's 400", async () => {
      const decode = async (body: Obj) => {
        const r = await api(s, "POST", SLICES, {
          metadata: { name: "bad" },
          addressType: "IPv4",
          ...body,
        });
        assertEquals([r.status, r.body.reason], [400, "BadRequest"]);
        return String(r.body.message).replace(
          'EndpointSlice in version "v1" cannot be handled as a EndpointSlice: ',
          "",
        );
      };
      assertEquals(
        await decode({ endpoints: [{ addresses: ["10.1.1.1"], conditions: { ready: "true" } }] }),
        "json: cannot unmarshal string into Go struct field EndpointConditions.endpoints.conditions.ready of type bool",
      );
      assertEquals(
        await decode({ ports: [{ port: 6443.5 }] }),
        "json: cannot unmarshal number 6443.5 into Go struct field EndpointPort.ports.port of type int32",
      );
      assertEquals(
        await decode({ endpoints: { addresses: [] } }),
        "json: cannot unmarshal object into Go struct field EndpointSlice.endpoints of type []v1.Endpoint",
      );
    });

    await t.step("unknown fields: dropped, or 400 with fieldValidation=Strict", async () => {
      const typo = {
        metadata: { name: "typo" },
        addressType: "IPv4",
        endpoints: [{ addresses: ["10.1.1.1"], condition: { ready: true } }],
        port: [{ port: 1 }],
      };
      const strict = await api(s, "POST", `${SLICES}?fieldValidation=Strict`, typo);
      assertEquals([strict.status, strict.body.message], [
        400,
        'EndpointSlice in version "v1" cannot be handled as a EndpointSlice: strict decoding ' +
        'error: unknown field "port", unknown field "endpoints[0].condition"',
      ]);
      const lax = await api(s, "POST", SLICES, typo);
      assertEquals(lax.status, 201);
      assertEquals([lax.body.endpoints, lax.body.port, lax.body.ports], [
        [{ addresses: ["10.1.1.1"], conditions: {} }],
        undefined,
        null,
      ]);
      assertEquals((await api(s, "DELETE", `${SLICES}/typo`)).status, 200);
    });

    await t.step("nothing invalid was stored", async () => {
      assertEquals(names((await api(s, "GET", SLICES)).body), []);
    });
  } finally {
    await s.close();
  }
});

Deno.test("EndpointSlices: allowLoopbackEndpoints lets replicas on 127.0.0.x publish", async () => {
  const s = await startTestApiServer({ namespaces: [NS], allowLoopbackEndpoints: true });
  try {
    const r = await api(s, "POST", SLICES, slice("mc-alpha-r0", "mc-alpha", "127.0.0.2"));
    assertEquals(r.status, 201, JSON.stringify(r.body));
    const zero = await api(s, "POST", SLICES, slice("mc-alpha-r1", "mc-alpha", "0.0.0.0"));
    assertEquals(zero.status, 422, "unspecified addresses stay refused");
  } finally {
    await s.close();
  }
});

Deno.test("EndpointSlices in protobuf, as client-go's typed clients speak them", async () => {
  const s = await startTestApiServer({ namespaces: [NS] });
  const PB = "application/vnd.kubernetes.protobuf";
  const client = httpClient(s);
  try {
    const body = slice("mc-alpha-r0", "mc-alpha", "10.244.1.5");
    (body.endpoints as Obj[])[0].conditions = { ready: false, serving: true, terminating: true };
    const created = await fetch(`${s.url}${SLICES}`, {
      method: "POST",
      client,
      headers: { "content-type": PB, accept: `${PB}, application/json` },
      body: encodeObject(body),
    });
    assertEquals([created.status, created.headers.get("content-type")], [201, PB]);
    const obj = decodeObject(new Uint8Array(await created.arrayBuffer()));
    assertEquals(obj.endpoints, [{
      addresses: ["10.244.1.5"],
      conditions: { ready: false, serving: true, terminating: true },
    }], "false conditions survive both ways");
    assertEquals((obj.ports as Obj[])[1], { name: "kubesphere", protocol: "TCP", port: 80 });
    const stored = await s.request("GET", `${SLICES}/mc-alpha-r0`);
    assertEquals(stored.body.endpoints, obj.endpoints);
    const ac = new AbortController();
    const w = await fetch(`${s.url}${SLICES}?watch=true&labelSelector=${SERVICE}%3Dmc-alpha`, {
      client,
      signal: ac.signal,
      headers: { accept: `${PB}, application/json` },
    });
    assertEquals(w.headers.get("content-type"), `${PB};stream=watch`);
    const events = protobufWatchEvents(w.body!);
    try {
      const first = await deadline(events.next(), 10_000, "ADDED");
      assert(!first.done);
      assertEquals([first.value.type, (first.value.object.metadata as Obj).name], [
        "ADDED",
        "mc-alpha-r0",
      ]);
      assertEquals(first.value.object.kind, "EndpointSlice");
    } finally {
      ac.abort();
      await events.return(undefined).catch(() => {});
    }
  } finally {
    client.close();
    await s.close();
  }
});
