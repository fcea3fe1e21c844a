import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import {
  acceptFor,
  switchingProtocols,
  upgradeProblem,
  type UpgradeRequest,
} from "../../lib/tunnel/ws_upgrade.ts";

const KEY = "dGhlIHNhbXBsZSBub25jZQ==";

function req(over: Partial<UpgradeRequest> = {}): UpgradeRequest {
  return {
    method: "GET",
    minor: 1,
    upgrade: new Set(["websocket"]),
    connection: new Set(["keep-alive", "upgrade"]),
    key: KEY,
    version: "13",
    ...over,
  };
}

Deno.test("Sec-WebSocket-Accept matches the RFC 6455 example", () => {
  assertEquals(acceptFor(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
});

Deno.test("upgradeProblem accepts a well-formed request and names what is wrong otherwise", () => {
  assertEquals(upgradeProblem(req()), undefined);
  const cases: [Partial<UpgradeRequest>, number, string][] = [
    [{ method: "POST" }, 405, "must be a GET"],
    [{ minor: 0 }, 400, "HTTP/1.1"],
    [{ upgrade: new Set(["h2c"]) }, 400, "Upgrade: websocket"],
    [{ connection: new Set(["keep-alive"]) }, 400, "Connection: Upgrade"],
    [{ version: "8" }, 426, "want 13"],
    [{ version: undefined }, 426, "want 13"],
    [{ key: undefined }, 400, "16 bytes"],
    [{ key: "c2hvcnQ=" }, 400, "16 bytes"], // 5 bytes
    [{ key: "dGhlIHNhbXBsZSBub25jZQ" }, 400, "16 bytes"], // no padding
    [{ key: "dGhlIHNhbXBsZSBub25j!Q==" }, 400, "16 bytes"],
  ];
  for (const [over, status, text] of cases) {
    const p = upgradeProblem(req(over));
    assert(p, `accepted ${JSON.stringify(over, (_k, v) => v instanceof Set ? [...v] : v)}`);
    assertEquals(p.status, status);
    assertStringIncludes(p.message, text);
  }
  assertEquals(upgradeProblem(req({ version: "8" }))?.headers, { "Sec-WebSocket-Version": "13" });
});

Deno.test("switchingProtocols answers with the accept value and the subprotocol", () => {
  const head = switchingProtocols(KEY, "kubesphere-v1");
  assert(head.startsWith("HTTP/1.1 101 Switching Protocols\r\n"));
  assert(head.endsWith("\r\n\r\n"));
  assertStringIncludes(head, "\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
  assertStringIncludes(head, "\r\nSec-WebSocket-Protocol: kubesphere-v1\r\n");
});
