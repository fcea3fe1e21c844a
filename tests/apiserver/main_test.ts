/**
 * `deno task test-apiserver` as a subprocess: the first stdout lines name the
 * kubeconfig and URL, the kubeconfig works with the real kubectl, a
 * configured token authenticates, `--allow-loopback-endpoints` lets
 * EndpointSlices name 127.0.0.x, and SIGTERM stops it.
 * @module
 */

import { assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { denoRun, run, tempDir } from "../helpers/proc.ts";

Deno.test("test-apiserver runs as a subprocess", async () => {
  await using dir = await tempDir();
  const p = denoRun("test-apiserver", "tests/apiserver/main.ts", [
    "--port",
    "0",
    "--dir",
    dir.path,
    "--token",
    "tok-123",
    "--namespace",
    "kubesphere-system",
    "--allow-loopback-endpoints",
  ]);
  try {
    const kc = (await p.waitFor(/^kubeconfig=/)).slice("kubeconfig=".length);
    const url = (await p.waitFor(/^url=/)).slice("url=".length);
    assertEquals(kc, `${dir.path}/kubeconfig`);
    assertMatch(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const r = await run("kubectl", [
      `--kubeconfig=${kc}`,
      `--cache-dir=${dir.path}/cache`,
      "--request-timeout=15s",
      "get",
      "namespace",
      "kubesphere-system",
      "-o",
      "name",
    ], { env: { HOME: dir.path } });
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout.trim(), "namespace/kubesphere-system");
    const client = Deno.createHttpClient({
      caCerts: [await Deno.readTextFile(`${dir.path}/ca.crt`)],
    });
    try {
      const res = await fetch(`${url}/api/v1/namespaces/default/pods`, {
        client,
        headers: { authorization: "Bearer tok-123" },
      });
      assertEquals(res.status, 200);
      assertStringIncludes(await res.text(), "web-0");
      const slice = await fetch(
        `${url}/apis/discovery.k8s.io/v1/namespaces/kubesphere-system/endpointslices`,
        {
          method: "POST",
          client,
          headers: { authorization: "Bearer tok-123", "content-type": "application/json" },
          body: JSON.stringify({
            metadata: { name: "mc-alpha-r0" },
            addressType: "IPv4",
            endpoints: [{ addresses: ["127.0.0.2"] }],
          }),
        },
      );
      assertEquals(slice.status, 201, "--allow-loopback-endpoints: replicas on 127.0.0.x");
      await slice.body?.cancel();
    } finally {
      client.close();
    }
  } finally {
    const status = await p.stop();
    assertEquals(status.code, 0, p.tail());
  }
});
