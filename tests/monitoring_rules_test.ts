/**
 * deploy/monitoring's PrometheusRule passes Prometheus's own checks: its groups, written out as a
 * rules file, load in `promtool check rules`, and `promtool test rules` runs the unit tests in
 * `monitoring_alerts_test.yaml` (each alert fires on the series that should raise it and stays
 * quiet on its look-alikes). Every alert of the rule must fire in at least one of them. promtool
 * comes from Debian's `prometheus` package (`.ci/run` installs it).
 */

import { parse } from "yaml";
import { assertEquals } from "./helpers/assert.ts";
import { run, tempDir } from "./helpers/proc.ts";
import { commandWorks, requireTools } from "./helpers/tools.ts";

const promtool = await requireTools(
  "promtool",
  commandWorks("promtool", ["--version"]),
  "apt-get install prometheus",
);

interface Rule {
  alert: string;
  expr: string;
}

interface AlertTest {
  alertname: string;
  exp_alerts: unknown[];
}

Deno.test({
  name: "deploy/monitoring: promtool checks the PrometheusRule and its alerts' unit tests pass",
  ignore: promtool.ignore,
  fn: async () => {
    promtool.check();
    const rule = parse(
      await Deno.readTextFile(new URL("../deploy/monitoring/prometheusrule.yaml", import.meta.url)),
    );
    const groups = rule.spec.groups as { name: string; rules: Rule[] }[];
    const tests = await Deno.readTextFile(
      new URL("./monitoring_alerts_test.yaml", import.meta.url),
    );
    const fired = new Set(
      (parse(tests).tests as { alert_rule_test: AlertTest[] }[])
        .flatMap((t) => t.alert_rule_test)
        .filter((a) => a.exp_alerts.length > 0)
        .map((a) => a.alertname),
    );
    const alerts = groups.flatMap((g) => g.rules.map((r) => r.alert)).sort();
    assertEquals(alerts.filter((a) => !fired.has(a)), [], "alerts no unit test fires");

    await using dir = await tempDir();
    // JSON is YAML: the rules file as Prometheus loads it.
    await Deno.writeTextFile(`${dir.path}/rules.yaml`, JSON.stringify({ groups }));
    await Deno.writeTextFile(`${dir.path}/alerts_test.yaml`, tests);
    const check = await run("promtool", ["check", "rules", `${dir.path}/rules.yaml`]);
    assertEquals(check.code, 0, check.stdout + check.stderr);
    const unit = await run("promtool", ["test", "rules", `${dir.path}/alerts_test.yaml`]);
    assertEquals(unit.code, 0, unit.stdout + unit.stderr);
  },
});
