/**
 * lib/tunnel/ssh2_internals.ts: the ssh2 in use passes; any other version, or a copy of the
 * modules with one private part taken away (the way a new ssh2 release would move it), is
 * refused with an error naming what is wrong; a live connection whose Protocol lost a field is
 * refused; and a process does not start its link on an ssh2 the check refuses.
 * @module
 */

import { assert, assertEquals, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import {
  checkConnection,
  checkSsh2,
  SSH2_MODULES,
  SSH2_VERSION,
  Ssh2InternalsError,
  type Ssh2Modules,
} from "../../lib/tunnel/ssh2_internals.ts";
import { sshPair } from "../helpers/ssh_pair.ts";
import { freePort, run, tempDir } from "../helpers/proc.ts";
import { memberKubeconfig } from "../helpers/tunnel.ts";

type Ctor = new (...args: never[]) => Record<string, unknown>;

/** The real modules with `change` applied to a shallow copy. */
function altered(change: (m: Ssh2Modules) => void): Ssh2Modules {
  const m: Ssh2Modules = {
    ...SSH2_MODULES,
    channel: { ...SSH2_MODULES.channel },
    utils: { ...SSH2_MODULES.utils },
    protocolUtils: { ...SSH2_MODULES.protocolUtils },
    handlers: { ...SSH2_MODULES.handlers },
    crypto: { ...SSH2_MODULES.crypto },
  };
  change(m);
  return m;
}

/** A subclass of `Base` whose instances lose `field` (own or inherited: shadowed away). */
function without(Base: Ctor, field: string): Ctor {
  return class extends Base {
    constructor(...args: never[]) {
      super(...args);
      delete this[field];
      if (field in this) Object.defineProperty(this, field, { value: undefined });
      // An inherited method cannot be deleted from an instance: hide it behind a non-function.
    }
  };
}

function refusal(mods: Ssh2Modules): Ssh2InternalsError {
  const err = assertThrows(() => checkSsh2(mods), Ssh2InternalsError);
  assertStringIncludes(err.message, `Use ssh2@${SSH2_VERSION}`);
  assertStringIncludes(err.message, "lib/tunnel/ssh2_internals.ts");
  return err as Ssh2InternalsError;
}

Deno.test("ssh2 internals: the ssh2 in use is the pinned version and has every part", () => {
  assertEquals(SSH2_MODULES.version, SSH2_VERSION);
  checkSsh2();
  checkSsh2(altered(() => {})); // the same modules, checked afresh (no cache)
});

Deno.test("ssh2 internals: any other version is refused, naming both", () => {
  for (const version of ["1.17.1", "1.16.0", "2.0.0"]) {
    const err = refusal(altered((m) => m.version = version));
    assertStringIncludes(err.message, `Tower runs on ssh2 ${SSH2_VERSION} only, not ${version}`);
    assertEquals(err.problems, [`version ${version} is not the pinned ${SSH2_VERSION}`]);
  }
});

Deno.test("ssh2 internals: a missing module export is named", () => {
  const cases: [string, (m: Ssh2Modules) => void, string][] = [
    [
      "sendPacket",
      (m) => delete (m.protocolUtils as { sendPacket?: unknown }).sendPacket,
      "sendPacket",
    ],
    ["REQUEST_FAILURE", (m) => delete m.handlers[82], "handlers.js [82]"],
    ["MAX_WINDOW", (m) => delete (m.channel as { MAX_WINDOW?: number }).MAX_WINDOW, "MAX_WINDOW"],
    [
      "createDecipher",
      (m) => delete (m.crypto as { createDecipher?: unknown }).createDecipher,
      "createDecipher",
    ],
    ["poly1305", (m) => m.poly1305 = undefined, "poly1305.js"],
  ];
  for (const [what, change, named] of cases) {
    const err = refusal(altered(change));
    assert(err.problems.some((p) => p.includes(named)), `${what}: ${err.message}`);
  }
});

Deno.test("ssh2 internals: a private field missing from an object the hooks patch is named", () => {
  const Protocol = SSH2_MODULES.Protocol as unknown as Ctor;
  const Client = SSH2_MODULES.Client as unknown as Ctor;
  const ChannelManager = SSH2_MODULES.utils.ChannelManager as unknown as Ctor;
  const Channel = SSH2_MODULES.channel.Channel as unknown as Ctor;
  const cases: [string, (m: Ssh2Modules) => void, string][] = [
    ["Protocol._kexinit", (m) => m.Protocol = without(Protocol, "_kexinit"), "no _kexinit"],
    ["Protocol._onHeader", (m) => m.Protocol = without(Protocol, "_onHeader"), "no _onHeader"],
    ["Protocol._packetRW", (m) => m.Protocol = without(Protocol, "_packetRW"), "_packetRW"],
    ["Protocol.rekey", (m) => m.Protocol = without(Protocol, "rekey"), "rekey is not a function"],
    ["Client._chanMgr", (m) => m.Client = without(Client, "_chanMgr"), "no _chanMgr"],
    [
      "ChannelManager.update",
      (m) => m.utils = { ChannelManager: without(ChannelManager, "update") },
      "update is not a function",
    ],
    [
      "Channel._writableState",
      (m) => m.channel = { ...m.channel, Channel: without(Channel, "_writableState") },
      "_writableState",
    ],
    [
      "Channel.incoming",
      (m) => m.channel = { ...m.channel, Channel: without(Channel, "incoming") },
      "incoming",
    ],
  ];
  for (const [what, change, named] of cases) {
    const err = refusal(altered(change));
    assert(err.problems.some((p) => p.includes(named)), `${what}: ${err.message}`);
  }
});

Deno.test("ssh2 internals: a Channel without ssh2's own 'finish' listener is refused", () => {
  const Channel = SSH2_MODULES.channel.Channel as unknown as Ctor;
  class NoOnFinish extends Channel {
    constructor(...args: never[]) {
      super(...args);
      (this as unknown as { removeAllListeners(e: string): void }).removeAllListeners("finish");
    }
  }
  const err = refusal(altered((m) => m.channel = { ...m.channel, Channel: NoOnFinish }));
  assert(err.problems.some((p) => p.includes("onFinish")), err.message);
});

Deno.test("ssh2 internals: ChaCha20-Poly1305's fields and every offered cipher's seqno", () => {
  const real = SSH2_MODULES.crypto;
  const dropping = (field: string, from: "cipher" | "decipher") =>
    altered((m) => {
      m.crypto = {
        ...real,
        [from === "cipher" ? "createCipher" : "createDecipher"]: (config: unknown) => {
          const make = from === "cipher" ? real.createCipher : real.createDecipher;
          const obj = make(config);
          delete obj[field];
          return obj;
        },
      };
    });
  for (
    const [field, from] of [
      ["_lenPos", "decipher"],
      ["_len", "decipher"],
      [
        "_encKeyMain",
        "cipher",
      ],
      ["outSeqno", "cipher"],
      ["inSeqno", "decipher"],
    ] as const
  ) {
    const err = refusal(dropping(field, from));
    assert(err.problems.some((p) => p.includes(field)), `${field}: ${err.message}`);
  }
  // ssh2 choosing another class for ChaCha20-Poly1305 (its native binding, say).
  const err = refusal(altered((m) => {
    m.crypto = {
      ...real,
      createCipher: (config: unknown) => ({ ...real.createCipher(config) }),
    };
  }));
  assert(err.problems.some((p) => p.includes("not a ChaChaPolyCipherNative")), err.message);
});

Deno.test("ssh2 internals: a live connection whose Protocol lost a field is refused", async () => {
  const pair = await sshPair();
  try {
    checkConnection(pair.client);
    checkConnection(pair.conn);
    const fake = {
      _protocol: { ...(pair.client as unknown as { _protocol: object })._protocol },
      _sock: {},
      _chanMgr: (pair.client as unknown as { _chanMgr: object })._chanMgr,
    };
    delete (fake._protocol as { _remoteIdentRaw?: unknown })._remoteIdentRaw;
    const err = assertThrows(() => checkConnection(fake as never), Ssh2InternalsError);
    assertStringIncludes(err.message, "_protocol: no _remoteIdentRaw");
  } finally {
    await pair.close();
  }
});

Deno.test("ssh2 internals: proxy and agent refuse to start on another ssh2 version", async () => {
  await using dir = await tempDir();
  // The repository's import map, with ssh2's package.json swapped for one naming 9.9.9 (not
  // named package.json: beside a deno.json that would switch Deno to a node_modules layout).
  const repo = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  const fakePackage = `${dir.path}/ssh2_package.json`;
  await Deno.writeTextFile(fakePackage, JSON.stringify({ name: "ssh2", version: "9.9.9" }));
  const config = `${dir.path}/deno.json`;
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      imports: { ...repo.imports, "ssh2/package.json": new URL(`file://${fakePackage}`).href },
    }),
  );
  await Deno.writeTextFile(`${dir.path}/member.kubeconfig`, memberKubeconfig(1));
  await Deno.writeTextFile(
    `${dir.path}/clusters.json`,
    JSON.stringify([{
      metadata: { name: "alpha" },
      spec: { joinFederation: true, connection: { type: "proxy", token: "t" } },
    }]),
  );
  const deno = (script: string, args: string[]) =>
    run(Deno.execPath(), [
      "run",
      "-A",
      "--quiet",
      "--no-lock",
      "--config",
      config,
      script,
      ...args,
    ]);
  const refused = `Tower runs on ssh2 ${SSH2_VERSION} only, not 9.9.9`;
  const agent = await deno("agent.ts", [
    "--name",
    "alpha",
    "--token",
    "t",
    "--proxy-server",
    `http://127.0.0.1:${freePort()}`,
    "--kubeconfig",
    `${dir.path}/member.kubeconfig`,
  ]);
  assertEquals(agent.code, 1, agent.stdout + agent.stderr);
  assertStringIncludes(agent.stdout + agent.stderr, refused);
  const proxy = await deno("proxy.ts", [
    "--clusters-file",
    `${dir.path}/clusters.json`,
    "--host",
    "127.0.0.1",
    "--port",
    String(freePort()),
    "--metrics-address",
    "",
  ]);
  assertEquals(proxy.code, 1, proxy.stdout + proxy.stderr);
  assertStringIncludes(proxy.stdout + proxy.stderr, refused);
  assert(!/Listening on/.test(proxy.stdout + proxy.stderr), "the proxy must not listen");
});
