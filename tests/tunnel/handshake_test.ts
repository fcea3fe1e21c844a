import { assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  type AgentConfig,
  ConfigError,
  decodeAgentConfig,
  encodeAgentConfig,
  isHostPort,
  serviceHostPort,
  withDefaultPort,
} from "../../lib/tunnel/handshake.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

const sample: AgentConfig = {
  Version: "v0.1.0",
  Name: "alpha",
  Token: "ab".repeat(32),
  KubernetesSvcHost: "10.96.0.1:443",
  KubeSphereSvcHost: "ks-apiserver.kubesphere-system.svc:80",
  CAData: enc.encode("-----BEGIN CERTIFICATE-----\n"),
  BearerToken: enc.encode("sa-token"),
};

Deno.test("config JSON matches Go encoding/json of the original struct", () => {
  const json = dec.decode(encodeAgentConfig(sample));
  assertEquals(
    json,
    '{"Version":"v0.1.0","Name":"alpha","Token":"' + "ab".repeat(32) +
      '","KubernetesSvcHost":"10.96.0.1:443","KubeSphereSvcHost":"ks-apiserver.kubesphere-system.svc:80",' +
      '"CAData":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==","BearerToken":"c2EtdG9rZW4="}',
  );
});

Deno.test("config round-trips and decodes Go's output with null and missing byte fields", () => {
  assertEquals(decodeAgentConfig(encodeAgentConfig(sample)), sample);
  const goJson =
    '{"Version":"v0.1.0","Name":"beta","Token":"t","KubernetesSvcHost":"1.2.3.4:6443",' +
    '"KubeSphereSvcHost":"ks:80","CertData":null,"KeyData":"","CAData":null,"BearerToken":null}';
  const cfg = decodeAgentConfig(enc.encode(goJson));
  assertEquals(cfg.Name, "beta");
  assertEquals(cfg.CertData, undefined);
  // Go matches field names case-insensitively.
  assertEquals(decodeAgentConfig(enc.encode('{"name":"gamma","token":"x"}')).Name, "gamma");
});

Deno.test("bad config payloads are refused with the field named", () => {
  const cases: [string | Uint8Array, string][] = [
    ["", "empty"],
    ["not json", "not JSON"],
    ["[1,2]", "not a JSON object"],
    ['"str"', "not a JSON object"],
    ['{"Name":5}', "Name"],
    ['{"Name":"alpha","Token":["x"]}', "Token"],
    ['{"Name":"alpha","CAData":"***"}', "CAData"],
    ['{"Name":"alpha","CAData":{"a":1}}', "CAData"],
    ['{"Name":"Alpha Cluster"}', "Name"],
    ['{"Name":""}', "Name"],
    ['{"Name":"alpha","KubernetesSvcHost":"no-port:"}', "KubernetesSvcHost"],
    ['{"Name":"alpha","KubernetesSvcHost":"https://10.0.0.1:6443"}', "KubernetesSvcHost"],
    ['{"Name":"alpha","KubeSphereSvcHost":"a b"}', "KubeSphereSvcHost"],
    ['{"Name":"alpha","KubeSphereSvcHost":"fd00::1"}', "KubeSphereSvcHost"],
    ['{"Name":"alpha","KubernetesSvcHost":"h:99999"}', "KubernetesSvcHost"],
    [`{"Name":"alpha","Token":"${"x".repeat(5000)}"}`, "Token"],
    [new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), "UTF-8"],
    [`{"Name":"alpha","CAData":"${"A".repeat(300_000)}"}`, "exceeds"],
  ];
  for (const [input, field] of cases) {
    const bytes = typeof input === "string" ? enc.encode(input) : input;
    assertThrows(() => decodeAgentConfig(bytes), ConfigError, field);
  }
});

Deno.test("a bare host from the Go agent's defaults decodes with the port its URL implies", () => {
  // The Go agent's --kubesphere-service default, and a port-less kubernetes service.
  const goDefaults = '{"Version":"0.0.0-rc","Name":"alpha","Token":"t",' +
    '"KubernetesSvcHost":"kubernetes.default.svc","KubeSphereSvcHost":"ks-apiserver.kubesphere-system.svc"}';
  const cfg = decodeAgentConfig(enc.encode(goDefaults));
  assertEquals(cfg.KubernetesSvcHost, "kubernetes.default.svc:443");
  assertEquals(cfg.KubeSphereSvcHost, "ks-apiserver.kubesphere-system.svc:80");
  const v6 = decodeAgentConfig(
    enc.encode('{"Name":"alpha","KubernetesSvcHost":"[fd00::1]","KubeSphereSvcHost":"10.0.0.2"}'),
  );
  assertEquals(v6.KubernetesSvcHost, "[fd00::1]:443");
  assertEquals(v6.KubeSphereSvcHost, "10.0.0.2:80");
  // A given port is kept, an absent field stays empty.
  assertEquals(
    decodeAgentConfig(enc.encode('{"Name":"alpha","KubeSphereSvcHost":"ks:8080"}')),
    {
      Version: "",
      Name: "alpha",
      Token: "",
      KubernetesSvcHost: "",
      KubeSphereSvcHost: "ks:8080",
    },
  );
  assertEquals(withDefaultPort("h:", 80), undefined);
});

Deno.test("a bearer token loses the token file's newline and cannot carry header breaks", () => {
  const withToken = (t: string) =>
    enc.encode(JSON.stringify({ Name: "alpha", BearerToken: btoa(t) }));
  assertEquals(dec.decode(decodeAgentConfig(withToken("sa-token\n")).BearerToken), "sa-token");
  assertEquals(
    dec.decode(decodeAgentConfig(withToken(" eyJh.b-c_d~\r\n")).BearerToken),
    "eyJh.b-c_d~",
  );
  assertEquals(decodeAgentConfig(withToken("\n")).BearerToken, undefined);
  for (const bad of ["a\r\nX-Injected: 1", "a\nb", "a b", "t\u0000", "\u00e9t\u00e9"]) {
    assertThrows(() => decodeAgentConfig(withToken(bad)), ConfigError, "BearerToken");
  }
});

Deno.test("host:port validation and service address normalisation", () => {
  assertEquals(isHostPort("10.96.0.1:443"), true);
  assertEquals(isHostPort("[fd00::1]:443"), true);
  assertEquals(isHostPort("a.b.svc:80"), true);
  assertEquals(isHostPort("a b:80"), false);
  assertEquals(isHostPort("a:0"), false);
  assertEquals(isHostPort("a:80\u0000"), false);
  assertEquals(
    serviceHostPort("ks-apiserver.kubesphere-system.svc", 80),
    "ks-apiserver.kubesphere-system.svc:80",
  );
  assertEquals(serviceHostPort("https://10.0.0.1:6443", 443), "10.0.0.1:6443");
  assertEquals(serviceHostPort("https://api.example.com", 443), "api.example.com:443");
  assertEquals(serviceHostPort("[fd00::1]", 443), "[fd00::1]:443");
});
