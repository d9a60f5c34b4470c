import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { parseDuration } from "../../src/core/duration.js";
import { KEY_PACKAGE_LIFETIME_MS } from "../../src/keys/key-package.js";

// The Grafana dashboard and the Prometheus alerts, checked as data; PromQL syntax and the
// alerts' behaviour are checked by promtool where it is installed (Debian: apt-get install
// prometheus), and skipped with a message otherwise.

const DASHBOARD_PATH = fileURLToPath(
  new URL("../../deploy/grafana/kp-rotor-dashboard.json", import.meta.url),
);
const ALERTS_PATH = fileURLToPath(new URL("../../deploy/prometheus/alerts.yaml", import.meta.url));
const ALERT_TESTS_PATH = fileURLToPath(
  new URL("../../deploy/prometheus/alerts.test.yaml", import.meta.url),
);
const PROMETHEUS_CONFIG_PATH = fileURLToPath(
  new URL("../../deploy/prometheus/prometheus.example.yml", import.meta.url),
);

/** Grafana's syntax for the dashboard's datasource variable, not a template literal. */
const DATASOURCE_VARIABLE = ["$", "{datasource}"].join("");

/** The metrics the service exports (src/metrics), as the dashboard may use them. */
const METRICS = new Set([
  "kp_rotor_rotations_total",
  "kp_rotor_deletions_total",
  "kp_rotor_wake_failures_total",
  "kp_rotor_welcomes_total",
  "kp_rotor_wakeup_lateness_seconds_bucket",
  "kp_rotor_wakeup_lateness_seconds_sum",
  "kp_rotor_wakeup_lateness_seconds_count",
  "kp_rotor_stale_wakeups_total",
  "kp_rotor_reconcile_repairs_total",
  "kp_rotor_reconcile_failures_total",
  "kp_rotor_queue_jobs",
  "kp_rotor_oldest_current_key_package_age_seconds",
]);

const KEYWORDS = [
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "group_left",
  "group_right",
  "inf",
  "nan",
];

/**
 * The metric names a PromQL expression selects: what is left once strings, label matchers,
 * ranges, grouping clauses, numbers and function calls are taken out.
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
    .replace(/\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b/gi, " ");
  const names: string[] = [];
  for (const match of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const after = stripped.slice((match.index ?? 0) + match[0].length);
    const isCall = /^\s*\(/.test(after);
    if (!isCall && !KEYWORDS.includes(match[0])) {
      names.push(match[0]);
    }
  }
  return names;
}

const promtool = (() => {
  const probe = spawnSync("promtool", ["--version"], { stdio: "ignore" });
  return probe.status === 0;
})();
if (!promtool) {
  console.warn(
    "promtool not found: PromQL syntax and alert unit tests are skipped (apt-get install prometheus)",
  );
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: { expr: string; refId: string; datasource: { uid: string } }[];
  panels?: Panel[];
}

const dashboard = JSON.parse(readFileSync(DASHBOARD_PATH, "utf8"));
const panels: Panel[] = dashboard.panels.flatMap((p: Panel) => [p, ...(p.panels ?? [])]);
const queryPanels = panels.filter((p) => p.type !== "row");
const exprs = queryPanels.flatMap((p) =>
  (p.targets ?? []).map((t) => ({ panel: p, expr: t.expr })),
);

describe("deploy/grafana/kp-rotor-dashboard.json", () => {
  it("is a Grafana dashboard of the current schema with a datasource variable", () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.uid).toBe("kp-rotor");
    expect(dashboard.templating.list.map((v: { name: string }) => v.name)).toContain("datasource");
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
    }
  });

  it("gives every query panel at least one query, each on the templated datasource", () => {
    for (const p of queryPanels) {
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) {
        expect(t.datasource.uid).toBe(DATASOURCE_VARIABLE);
      }
    }
  });

  it("queries only the metrics the service exports, and all of them", () => {
    const used = new Set<string>();
    for (const { panel, expr } of exprs) {
      const names = metricNames(expr);
      expect(names.length, `${panel.title}: ${expr}`).toBeGreaterThan(0);
      for (const name of names) {
        expect(METRICS.has(name), `${panel.title}: unknown metric ${name}`).toBe(true);
        used.add(name.replace(/_(bucket|sum|count)$/, ""));
      }
    }
    const families = new Set([...METRICS].map((m) => m.replace(/_(bucket|sum|count)$/, "")));
    expect([...used].sort()).toEqual([...families].sort());
  });

  it("shows wake-up lateness as p50 and p99 from the histogram's buckets", () => {
    const lateness = exprs.filter(({ expr }) => expr.includes("kp_rotor_wakeup_lateness"));
    const quantiles = lateness.map(({ expr }) => /histogram_quantile\((0\.\d+),/.exec(expr)?.[1]);
    expect(new Set(quantiles)).toEqual(new Set(["0.5", "0.99"]));
    for (const { expr } of lateness) expect(expr).toMatch(/sum by \(le\)/);
  });

  it.skipIf(!promtool)("every query is valid PromQL (promtool)", () => {
    // Grafana's $__rate_interval becomes a fixed range; each query is checked as a recording rule.
    const rules = {
      groups: [
        {
          name: "dashboard",
          rules: exprs.map(({ expr }, i) => ({
            record: `dashboard:query_${i}`,
            expr: expr.replaceAll("$__rate_interval", "5m"),
          })),
        },
      ],
    };
    const dir = mkdtempSync(join(tmpdir(), "kp-dashboard-"));
    try {
      const file = join(dir, "dashboard-rules.yaml");
      writeFileSync(file, stringify(rules));
      expect(runPromtool(["check", "rules", file])).toContain("SUCCESS");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

interface Rule {
  alert: string;
  expr: string;
  for: string;
  labels: { severity: string };
  annotations: { summary: string; description?: string };
}

describe("deploy/prometheus/alerts.yaml", () => {
  const file = parse(readFileSync(ALERTS_PATH, "utf8"));
  const rules: Rule[] = file.groups.flatMap((g: { rules: Rule[] }) => g.rules);
  const byName = new Map(rules.map((r) => [r.alert, r]));

  it("is a rules file: named groups of alerts with for, severity and a summary", () => {
    expect(file.groups.length).toBeGreaterThan(0);
    for (const group of file.groups) expect(group.name).toMatch(/\S/);
    for (const rule of rules) {
      expect(rule.alert).toMatch(/^KpRotor[A-Za-z]+$/);
      expect(rule.expr).toMatch(/\S/);
      expect(parseDuration(rule.for), `${rule.alert}: for`).toBeGreaterThan(0);
      expect(["warning", "critical"]).toContain(rule.labels.severity);
      expect(rule.annotations.summary).toMatch(/\S/);
    }
    expect(new Set(byName.keys()).size).toBe(rules.length);
  });

  it("alerts on failing, late and stuck rotations, a backlog, missing workers and failing heals", () => {
    expect([...byName.keys()].sort()).toEqual([
      "KpRotorHealFailing",
      "KpRotorKeyPackageNearExpiry",
      "KpRotorNoWorkers",
      "KpRotorRotationBacklog",
      "KpRotorWakeUpsFailing",
      "KpRotorWakeUpsLate",
    ]);
    for (const rule of rules) {
      const allowed = rule.alert === "KpRotorNoWorkers" ? new Set(["up"]) : METRICS;
      for (const name of metricNames(rule.expr)) {
        expect(allowed.has(name), `${rule.alert}: ${name}`).toBe(true);
      }
    }
    expect(byName.get("KpRotorWakeUpsFailing")?.for).toBe("15m");
    expect(byName.get("KpRotorWakeUpsLate")?.expr).toMatch(
      /histogram_quantile\(0\.99,[\s\S]*> 60$/,
    );
    expect(byName.get("KpRotorRotationBacklog")?.expr).toContain(
      'max by (shard) (kp_rotor_queue_jobs{queue="rotation", state="waiting"})) > 1000',
    );
  });

  it("warns a week before the oldest key package expires", () => {
    const expr = byName.get("KpRotorKeyPackageNearExpiry")?.expr ?? "";
    const [, days, perDay] = /> (\d+) \* (\d+)$/.exec(expr) ?? [];
    expect(Number(days) * Number(perDay) * 1000).toBe(KEY_PACKAGE_LIFETIME_MS - 7 * 86_400_000);
  });

  it.skipIf(!promtool)("passes promtool check rules", () => {
    expect(runPromtool(["check", "rules", ALERTS_PATH])).toContain("SUCCESS: 6 rules found");
  });

  it.skipIf(!promtool)("fires exactly as deploy/prometheus/alerts.test.yaml expects", () => {
    expect(runPromtool(["test", "rules", ALERT_TESTS_PATH])).toContain("SUCCESS");
  });
});

describe("deploy/prometheus/prometheus.example.yml", () => {
  const config = parse(readFileSync(PROMETHEUS_CONFIG_PATH, "utf8"));

  it("loads the alerts and names the worker scrape job as KpRotorNoWorkers expects", () => {
    expect(config.rule_files).toEqual(["alerts.yaml"]);
    const [job] = config.scrape_configs;
    const relabel = job.relabel_configs.find(
      (r: { target_label?: string }) => r.target_label === "job",
    );
    expect(relabel).toMatchObject({
      source_labels: ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
      replacement: "kp-rotor-$1",
    });
    const alerts = parse(readFileSync(ALERTS_PATH, "utf8"));
    const noWorkers = alerts.groups[0].rules.find((r: Rule) => r.alert === "KpRotorNoWorkers");
    // component "worker" (deploy/k8s/worker-deployment.yaml) -> job "kp-rotor-worker".
    expect(noWorkers.expr).toContain(`job="${relabel.replacement.replace("$1", "worker")}"`);
  });

  it.skipIf(!promtool)("passes promtool check config", () => {
    // Debian's Prometheus is built without Kubernetes discovery: the job is checked with a
    // static target in its place (relabelling, rule files and all the rest unchanged).
    const checked = structuredClone(config);
    for (const job of checked.scrape_configs) {
      delete job.kubernetes_sd_configs;
      job.static_configs = [{ targets: ["127.0.0.1:9464"] }];
    }
    checked.rule_files = [ALERTS_PATH];
    const dir = mkdtempSync(join(tmpdir(), "kp-prometheus-"));
    try {
      const file = join(dir, "prometheus.yml");
      writeFileSync(file, stringify(checked));
      expect(runPromtool(["check", "config", file])).toContain("SUCCESS: 6 rules found");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("metricNames", () => {
  it.each([
    [
      'sum by (kind) (rate(kp_rotor_wake_failures_total{kind="x"}[5m])) > 0',
      ["kp_rotor_wake_failures_total"],
    ],
    ["histogram_quantile(0.99, sum by (le) (rate(a_bucket[$__rate_interval])))", ["a_bucket"]],
    ["max(a) / 86400 > 77 * 86400", ["a"]],
    ['absent(up{job="w"} == 1)', ["up"]],
    ["sum(rate(a[5m])) by (x) / on(x) group_left b", ["a", "b"]],
  ])("%s", (expr, expected) => {
    expect(metricNames(expr)).toEqual(expected);
  });
});

function runPromtool(args: string[]): string {
  try {
    return execFileSync("promtool", args, { encoding: "utf8", stdio: "pipe" });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    throw new Error(`promtool ${args.join(" ")} failed:\n${e.stdout ?? ""}${e.stderr ?? ""}`);
  }
}
