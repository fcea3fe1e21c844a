/**
 * `deno task bench` end to end at tiny sizes: origin, proxy and agent start as processes, the
 * figures run direct, through the kubesphere endpoint, through the sealed reference pair and
 * through OpenSSH (`sshd` + `ssh -R`, which must be installed: `.ci/run` installs them), and
 * `--json` holds every result with plausible values (nothing else would notice it breaking),
 * memory side by side for Tower and OpenSSH. The settled after-load rows run with a 1 s bound
 * (`--rss-settle 1s`; the default watches 30–60 s): they must exist, read the value at the bound
 * and say under the table that the bound ended the wait.
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { runBench } from "../helpers/bench_run.ts";

Deno.test("bench: a tiny run measures every asked figure, direct and through Tower", async () => {
  const { got, output } = await runBench([
    "--only",
    "bulk,small,concurrency,fairness,rss",
    "--runs",
    "1",
    "--get-mib",
    "4",
    "--put-mib",
    "2",
    "--small-count",
    "30",
    "--conns",
    "4",
    "--duration",
    "300ms",
    "--streams",
    "8",
    "--fair-duration",
    "300ms",
    "--paths",
    "direct,kubesphere,passthrough-sealed,openssh",
    "--agents",
    "0",
    "--rss-settle",
    "1s",
  ], 120_000);
  for (const path of ["direct", "kubesphere", "passthrough-sealed", "openssh"]) {
    for (const key of ["bulk/get", "bulk/put", "concurrency/req_per_s"]) {
      assert(
        (got.get(`${key}/${path}`) ?? 0) > 0,
        `${key}/${path}: ${got.get(`${key}/${path}`)}`,
      );
    }
    const p50 = got.get(`small/p50/${path}`) ?? 0;
    const p99 = got.get(`small/p99/${path}`) ?? 0;
    assert(p50 > 0 && p99 >= p50, `small/${path}: p50 ${p50} p99 ${p99}`);
    assertEquals(got.get(`concurrency/errors/${path}`), 0);
  }
  for (const path of ["kubesphere", "passthrough-sealed", "openssh"]) {
    // Through ssh the 300 ms window once read nothing while the whole suite loaded the
    // machine (alone it reads tens of MB/s): for openssh the figure must exist, without errors.
    const least = path === "openssh" ? 0 : Number.MIN_VALUE;
    for (const pass of ["unstalled", "one_stalled"]) {
      const mbps = got.get(`fairness/${pass}/${path}`) ?? -1;
      assert(mbps >= least, `fairness/${pass}/${path}: ${mbps}`);
    }
    assertEquals(got.get(`fairness/errors/${path}`), 0, `fairness/errors/${path}`);
    const mem = got.get(`fairness/tcp_mem_peak/${path}`) ?? NaN;
    assert(mem >= 0, `fairness/tcp_mem_peak/${path}: ${mem}`);
  }
  for (const label of ["tower", "openssh"]) {
    for (const role of ["proxy", "agent"]) {
      for (const when of ["idle", "load", "after_load", "after_load_settled", "streams_peak"]) {
        const mib = got.get(`rss/${role}_${when}/${label}`) ?? 0;
        // OpenSSH's ssh is a few MiB; a Deno process at least ~30.
        assert(mib > 1 && mib < 4096, `rss/${role}_${when}/${label}: ${mib} MiB`);
      }
    }
  }
  for (const label of ["tower", "openssh"]) {
    for (const role of ["proxy", "agent"]) {
      // The bound (1 s, well below the 30 s minimum watch) ended every wait, and says so.
      const s = got.get(`rss/${role}_settle_s/${label}`) ?? 0;
      assert(s >= 1, `rss/${role}_settle_s/${label}: ${s} s`);
      assertStringIncludes(output, `${label}/${role}`);
    }
  }
  assertMatch(output, /rss: not settled within --rss-settle \(1 s\)/);
  assert(
    (got.get("rss/agent_idle/tower") ?? 0) > 20 && (got.get("rss/agent_idle/openssh") ?? 0) < 20,
    "Tower's agent and ssh measured as themselves",
  );
});
