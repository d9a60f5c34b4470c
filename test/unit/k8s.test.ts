import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import { Job } from "kubernetes-models/batch/v1/Job";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicy";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { loadConfig } from "../../src/config.js";
import { parseDuration } from "../../src/core/duration.js";
import { configNames } from "../helpers/config-env.js";
import { lastOf, parseDockerfile } from "../helpers/dockerfile.js";

// The manifests in deploy/k8s are checked as data: each object against the Kubernetes OpenAPI
// schema (kubernetes-models' validators: types, required fields, formats), then for fields the
// schema does not know (a typo such as `livenesProbe` is silently dropped by the API server),
// then for consistency across files. No cluster, and no kubeconform, is needed.

const DIR = new URL("../../deploy/k8s/", import.meta.url);
const EXAMPLE_SECRET = "secret.example.yaml";
const SECRET_NAME = "kp-rotor-secrets";
const CONFIG_MAP_NAME = "kp-rotor-config";
/** Valid stand-ins for the example Secret's placeholders (a new required secret shows up here). */
const SAMPLE_SECRET: Record<string, string> = {
  DATABASE_URL: "postgres://kp_rotor:pw@postgres.example.internal:5432/kp_rotor",
  REDIS_URL: "redis://:pw@redis.example.internal:6379",
  API_TOKEN: "0123456789abcdef0123456789abcdef",
  KEY_ENCRYPTION_KEY: Buffer.from(Array.from({ length: 32 }, (_, i) => i + 7)).toString("base64"),
};
/** Settings that never go in the ConfigMap. */
const SECRET_KEYS = [
  ...Object.keys(SAMPLE_SECRET),
  "KEY_ENCRYPTION_KEY_PREVIOUS",
  "BOARD_PASSWORD",
  "PUBLISH_WEBHOOK_SECRET",
];

// biome-ignore lint/suspicious/noExplicitAny: manifests are untyped data until validated
type Manifest = { apiVersion: string; kind: string; metadata: { name: string }; [k: string]: any };

/** apiVersion/kind -> the validating model and its TypeScript interface. */
const MODELS: Record<string, { model: new (data: never) => { validate(): void }; type: string }> = {
  "v1/ConfigMap": { model: ConfigMap, type: "v1/ConfigMap#IConfigMap" },
  "v1/Secret": { model: Secret, type: "v1/Secret#ISecret" },
  "v1/Service": { model: Service, type: "v1/Service#IService" },
  "v1/Namespace": { model: Namespace, type: "v1/Namespace#INamespace" },
  "networking.k8s.io/v1/NetworkPolicy": {
    model: NetworkPolicy,
    type: "networking.k8s.io/v1/NetworkPolicy#INetworkPolicy",
  },
  "apps/v1/Deployment": { model: Deployment, type: "apps/v1/Deployment#IDeployment" },
  "batch/v1/Job": { model: Job, type: "batch/v1/Job#IJob" },
  "policy/v1/PodDisruptionBudget": {
    model: PodDisruptionBudget,
    type: "policy/v1/PodDisruptionBudget#IPodDisruptionBudget",
  },
  "autoscaling/v2/HorizontalPodAutoscaler": {
    model: HorizontalPodAutoscaler,
    type: "autoscaling/v2/HorizontalPodAutoscaler#IHorizontalPodAutoscaler",
  },
};

function loadFile(name: string): Manifest[] {
  const docs = parseAllDocuments(readFileSync(new URL(name, DIR), "utf8"));
  return docs.map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${name}: ${doc.errors[0]?.message}`);
    return doc.toJS() as Manifest;
  });
}

const files = readdirSync(DIR).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
const byFile = new Map(files.map((f) => [f, loadFile(f)]));
const kustomization = parse(readFileSync(new URL("kustomization.yaml", DIR), "utf8"));
/** What `kubectl apply -k deploy/k8s` applies. */
const applied = (kustomization.resources as string[]).flatMap((f) => byFile.get(f) ?? []);
const find = (kind: string, name: string): Manifest => {
  const found = applied.find((m) => m.kind === kind && m.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name} in kustomization.yaml's resources`);
  return found;
};
const api = find("Deployment", "kp-rotor-api");
const worker = find("Deployment", "kp-rotor-worker");
const migrateJob = find("Job", "kp-rotor-migrate");
const configMap = find("ConfigMap", CONFIG_MAP_NAME);
const hpa = find("HorizontalPodAutoscaler", "kp-rotor-worker");
const workloads = [api, worker, migrateJob];
const podSpec = (m: Manifest) => m.spec.template.spec;
const containerOf = (m: Manifest) => {
  const containers = podSpec(m).containers;
  expect(containers).toHaveLength(1);
  return containers[0];
};
const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.entries(selector).every(([k, v]) => labels[k] === v);

describe("deploy/k8s: every object is a valid Kubernetes object", () => {
  const all = [...byFile.entries()].flatMap(([file, ms]) => ms.map((m) => ({ file, m })));

  it.each(all.map(({ file, m }) => [`${file}: ${m.kind} ${m.metadata?.name}`, m] as const))(
    "%s matches its OpenAPI schema",
    (_, m) => {
      const entry = MODELS[`${m.apiVersion}/${m.kind}`];
      expect(entry, `${m.apiVersion} ${m.kind} is not a kind this test knows`).toBeDefined();
      expect(m.metadata.name).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
      expect(() =>
        new (entry as NonNullable<typeof entry>).model(m as never).validate(),
      ).not.toThrow();
    },
  );

  it("has no field the schema does not know", () => {
    const unknown = all.flatMap(({ file, m }) =>
      unknownFields(m, `${m.apiVersion}/${m.kind}`).map((path) => `${file}: ${path}`),
    );
    expect(unknown).toEqual([]);
  });

  it("catches a misspelt field (the check itself works)", () => {
    const typo = structuredClone(api);
    typo.spec.template.spec.containers[0].livenesProbe = {};
    expect(unknownFields(typo, "apps/v1/Deployment")).toEqual([
      "Deployment kp-rotor-api: spec.template.spec.containers[0].livenesProbe",
    ]);
  });

  it("kustomization.yaml lists every manifest but the example Secret", () => {
    const expected = files.filter((f) => f !== EXAMPLE_SECRET).sort();
    expect([...kustomization.resources].sort()).toEqual(expected);
    const kinds = new Set(applied.map((m) => m.kind));
    for (const kind of ["ConfigMap", "Deployment", "Service", "Job", "HorizontalPodAutoscaler"]) {
      expect(kinds).toContain(kind);
    }
  });

  it.skipIf(!hasCommand("kubectl"))("kubectl kustomize renders the same objects", () => {
    const rendered = parseAllDocuments(
      execFileSync("kubectl", ["kustomize", DIR.pathname], { encoding: "utf8" }),
    ).map((d) => d.toJS() as Manifest);
    const names = (ms: Manifest[]) => ms.map((m) => `${m.kind}/${m.metadata.name}`).sort();
    expect(names(rendered)).toEqual(names(applied));
  });
});

describe("deploy/k8s: the objects fit together", () => {
  it("each Deployment's selector matches its pod labels, and nothing else's", () => {
    for (const d of [api, worker]) {
      const selector = d.spec.selector.matchLabels;
      expect(matches(selector, d.spec.template.metadata.labels)).toBe(true);
      const other = d === api ? worker : api;
      expect(matches(selector, other.spec.template.metadata.labels)).toBe(false);
      expect(matches(selector, migrateJob.spec.template.metadata.labels)).toBe(false);
    }
  });

  it("the Service selects the API pods and targets a declared port", () => {
    const service = find("Service", "kp-rotor-api");
    expect(matches(service.spec.selector, api.spec.template.metadata.labels)).toBe(true);
    expect(matches(service.spec.selector, worker.spec.template.metadata.labels)).toBe(false);
    const ports = containerOf(api).ports.map((p: { name: string }) => p.name);
    for (const port of service.spec.ports) expect(ports).toContain(port.targetPort);
  });

  it("each PodDisruptionBudget covers exactly one Deployment's pods", () => {
    const pdbs = applied.filter((m) => m.kind === "PodDisruptionBudget");
    const covered = pdbs.map((pdb) =>
      [api, worker]
        .filter((d) => matches(pdb.spec.selector.matchLabels, d.spec.template.metadata.labels))
        .map((d) => d.metadata.name),
    );
    expect(covered.sort()).toEqual([["kp-rotor-api"], ["kp-rotor-worker"]]);
  });

  it("probes use ports the container declares", () => {
    for (const d of [api, worker]) {
      const c = containerOf(d);
      const ports = c.ports.flatMap((p: { name: string; containerPort: number }) => [
        p.name,
        p.containerPort,
      ]);
      for (const probe of [c.readinessProbe, c.livenessProbe]) {
        const port = (probe.httpGet ?? probe.tcpSocket).port;
        expect(ports, `${d.metadata.name} probe port ${port}`).toContain(port);
      }
    }
  });

  it("the API is ready on /readyz and alive on /healthz, on the configured PORT", () => {
    const c = containerOf(api);
    expect(c.readinessProbe.httpGet.path).toBe("/readyz");
    expect(c.livenessProbe.httpGet.path).toBe("/healthz");
    const http = c.ports.find((p: { name: string }) => p.name === "http");
    expect(String(http.containerPort)).toBe(configMap.data.PORT);
  });

  it("serves metrics on METRICS_PORT, port name metrics, where the pods say they do", () => {
    expect(configMap.data.METRICS_PORT).toBe("9464");
    for (const d of [api, worker]) {
      expect(containerOf(d).ports).toContainEqual({
        name: "metrics",
        containerPort: 9464,
        protocol: "TCP",
      });
      expect(d.spec.template.metadata.annotations).toEqual({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9464",
        "prometheus.io/path": "/metrics",
      });
    }
    // Workers serve no HTTP API: they are ready once their metrics listener is.
    expect(containerOf(worker).readinessProbe.tcpSocket.port).toBe("metrics");
  });

  it("runs the CLI subcommand through the image's entrypoint (args, not command)", () => {
    const expected: [Manifest, string][] = [
      [api, "api"],
      [worker, "worker"],
      [migrateJob, "migrate"],
    ];
    for (const [m, subcommand] of expected) {
      const c = containerOf(m);
      expect(c.command, `${m.metadata.name} must not replace the entrypoint`).toBeUndefined();
      expect(c.args).toEqual([subcommand]);
      expect(c.image).toBe("kp-rotor:latest");
    }
    expect(podSpec(migrateJob).restartPolicy).toBe("Never");
  });

  it("the image's entry point takes those args: exec-form ENTRYPOINT running the compiled CLI", () => {
    // A shell-form ENTRYPOINT would ignore args; CMD is only the default (start) they replace.
    // test/image/dockerfile.test.ts builds the image and runs each subcommand through it.
    const stages = parseDockerfile(readFileSync(new URL("../../Dockerfile", import.meta.url), "utf8"));
    const image = stages.at(-1) as NonNullable<ReturnType<typeof stages.at>>;
    const entrypoint = lastOf(image, "ENTRYPOINT");
    expect(entrypoint?.exec).toBe(true);
    expect(entrypoint?.args).toEqual(["node", "dist/src/cli/main.js"]);
    expect(lastOf(image, "CMD")?.args).toEqual(["start"]);
    // The probes' ports are ones the image exposes.
    const exposed = (lastOf(image, "EXPOSE")?.args ?? []).map(Number);
    for (const d of [api, worker]) {
      for (const p of containerOf(d).ports) expect(exposed).toContain(p.containerPort);
    }
    // The manifests' image is the one kustomization.yaml retags.
    const names = (kustomization.images as { name: string }[]).map((i) => i.name);
    for (const m of workloads) expect(names).toContain(containerOf(m).image.split(":")[0]);
  });

  it("gives workers time to finish active wake-ups before SIGKILL", () => {
    expect(worker.spec.replicas).toBe(3);
    const lockMs = parseDuration(configMap.data.WORKER_LOCK_DURATION);
    expect(lockMs).toBeDefined();
    const graceSeconds = podSpec(worker).terminationGracePeriodSeconds;
    expect(graceSeconds).toBe(45);
    // The worker waits up to the lock duration; the CLI gives up by itself 10 s after that.
    expect(graceSeconds * 1000).toBeGreaterThan((lockMs as number) + 10_000);
  });

  it("autoscales the worker Deployment on waiting rotation jobs", () => {
    expect(hpa.spec.scaleTargetRef).toEqual({
      apiVersion: "apps/v1",
      kind: "Deployment",
      name: worker.metadata.name,
    });
    expect(hpa.spec.minReplicas).toBe(worker.spec.replicas);
    expect(hpa.spec.maxReplicas).toBeGreaterThan(hpa.spec.minReplicas);
    expect(hpa.spec.metrics).toHaveLength(1);
    const [metric] = hpa.spec.metrics;
    expect(metric.type).toBe("External");
    expect(metric.external.metric).toEqual({
      name: "kp_rotor_queue_jobs",
      selector: { matchLabels: { queue: "rotation", state: "waiting" } },
    });
  });

  it("the HPA's External metric is what the prometheus-adapter rule serves", () => {
    const values = parse(
      readFileSync(
        new URL("../../deploy/prometheus/prometheus-adapter-values.yaml", import.meta.url),
        "utf8",
      ),
    );
    const [rule] = values.rules.external;
    const { metric } = hpa.spec.metrics[0].external;
    expect(rule.name.as).toBe(metric.name);
    expect(rule.seriesQuery).toMatch(new RegExp(`^'?${metric.name}\\{`));
    // One series per label set the HPA selects on. Every process reports the same count per
    // queue shard: max per shard over processes, then the sum over shards.
    const grouped = /by \(([^)]*)\)$/.exec(rule.metricsQuery)?.[1]?.split(/,\s*/);
    expect(grouped?.sort()).toEqual(Object.keys(metric.selector.matchLabels).sort());
    expect(rule.metricsQuery).toMatch(/^sum\(max\(.*\) by \(queue, state, shard\)\) by/);
  });

  it("every pod runs as non-root, without privileges, with resources set", () => {
    for (const m of workloads) {
      const spec = podSpec(m);
      expect(spec.securityContext.runAsNonRoot).toBe(true);
      // The image's user is the name "node": the kubelet can only verify a numeric uid.
      expect(spec.securityContext.runAsUser).toBeGreaterThan(0);
      const c = containerOf(m);
      expect(c.securityContext).toMatchObject({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ["ALL"] },
      });
      // A read-only root leaves no writable temp directory: a volume at /tmp gives one.
      const tmp = c.volumeMounts.find((v: { mountPath: string }) => v.mountPath === "/tmp");
      expect(spec.volumes.map((v: { name: string }) => v.name)).toContain(tmp?.name);
      expect(Object.keys(c.resources.requests).sort()).toEqual(["cpu", "memory"]);
      expect(c.resources.limits.memory).toBeDefined();
    }
  });
});

describe("deploy/k8s: isolation", () => {
  it("runs in its own namespace under the restricted Pod Security Standard", () => {
    expect(kustomization.namespace).toBe("kp-rotor");
    const ns = find("Namespace", "kp-rotor") as Manifest & {
      metadata: { labels: Record<string, string> };
    };
    for (const mode of ["enforce", "audit", "warn"]) {
      expect(ns.metadata.labels[`pod-security.kubernetes.io/${mode}`]).toBe("restricted");
    }
  });

  it("admits ingress only to the API's port, and to metrics from the monitoring namespace", () => {
    const policies = applied.filter((m) => m.kind === "NetworkPolicy");
    const deny = policies.find((p) => Object.keys(p.spec.podSelector).length === 0);
    expect(deny?.spec).toEqual({ podSelector: {}, policyTypes: ["Ingress"] });
    const rulesFor = (d: Manifest) =>
      policies
        .filter((p) =>
          matches(p.spec.podSelector.matchLabels ?? {}, d.spec.template.metadata.labels),
        )
        .flatMap((p) => p.spec.ingress ?? []);
    const ports = (rules: Manifest[]) =>
      rules.flatMap((r) => r.ports.map((p: { port: string }) => p.port)).sort();
    expect(ports(rulesFor(api))).toEqual(["http", "metrics"]);
    expect(ports(rulesFor(worker))).toEqual(["metrics"]);
    for (const rule of [...rulesFor(api), ...rulesFor(worker)]) {
      if (rule.ports.some((p: { port: string }) => p.port === "metrics")) {
        expect(rule.from).toEqual([
          { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } },
        ]);
      }
    }
    // The unauthenticated metrics port listens beyond loopback only because of this policy.
    expect(configMap.data.METRICS_HOST).toBe("0.0.0.0");
  });
});

describe("deploy/k8s: configuration and secrets", () => {
  const example = loadFile(EXAMPLE_SECRET);

  it("the ConfigMap and a Secret with the example's keys make a valid configuration", () => {
    for (const key of SECRET_KEYS) {
      expect(configMap.data, `${key} belongs in the Secret`).not.toHaveProperty(key);
    }
    const [secret] = example as [Manifest];
    expect(Object.keys(secret.stringData).sort()).toEqual(Object.keys(SAMPLE_SECRET).sort());
    // The service's whole environment in the cluster: every value must pass loadConfig.
    expect(() => loadConfig({ ...configMap.data, ...SAMPLE_SECRET })).not.toThrow();
    // And every name in them is one the service reads (loadConfig ignores unknown ones).
    const known = configNames({ ...configMap.data, ...SAMPLE_SECRET });
    for (const key of [...Object.keys(configMap.data), ...SECRET_KEYS]) {
      expect(known.has(key), key).toBe(true);
    }
  });

  it("every workload takes its environment from the ConfigMap and the Secret, by name", () => {
    for (const m of workloads) {
      expect(containerOf(m).envFrom).toEqual([
        { configMapRef: { name: CONFIG_MAP_NAME } },
        { secretRef: { name: SECRET_NAME } },
      ]);
    }
  });

  it("commits no Secret but the example, whose values are placeholders", () => {
    const secrets = [...byFile.entries()].flatMap(([file, ms]) =>
      ms.filter((m) => m.kind === "Secret").map(() => file),
    );
    expect(secrets).toEqual([EXAMPLE_SECRET]);
    expect(kustomization.resources).not.toContain(EXAMPLE_SECRET);
    expect(example).toHaveLength(1);
    const [secret] = example as [Manifest];
    expect(secret.metadata.name).toBe(SECRET_NAME);
    expect(secret.data).toBeUndefined();
    for (const value of Object.values<string>(secret.stringData)) {
      expect(value).toContain("CHANGE-ME");
    }
  });
});

function hasCommand(name: string): boolean {
  try {
    execFileSync(name, ["version", "--client"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

let checker: ts.TypeChecker | undefined;
let kindTypes: Map<string, ts.Type> | undefined;

/**
 * Paths of fields that the object's kubernetes-models interface does not declare. The models'
 * JSON-schema validators allow unknown fields (as the API server does, dropping them), so the
 * TypeScript declarations serve as the closed schema: one small program, read with the checker.
 */
function unknownFields(m: Manifest, kind: string): string[] {
  if (!checker || !kindTypes) {
    const root = new URL("../k8s-kinds.virtual.ts", import.meta.url).pathname;
    const entries = Object.entries(MODELS).map(([k, { type }], i) => {
      const [module, name] = type.split("#");
      return { k, i, line: `import type { ${name} as T${i} } from "kubernetes-models/${module}";` };
    });
    const source = `${entries.map((e) => e.line).join("\n")}\nexport type Kinds = { ${entries
      .map((e) => `"${e.k}": T${e.i};`)
      .join(" ")} };\n`;
    const options: ts.CompilerOptions = {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: [],
    };
    const host = ts.createCompilerHost(options);
    const getSourceFile = host.getSourceFile;
    host.getSourceFile = (file, ...rest) =>
      file === root
        ? ts.createSourceFile(file, source, ts.ScriptTarget.ES2022)
        : getSourceFile.call(host, file, ...rest);
    const program = ts.createProgram([root], options, host);
    const problems = ts.getPreEmitDiagnostics(program);
    if (problems.length > 0) {
      throw new Error(ts.flattenDiagnosticMessageText(problems[0]?.messageText ?? "", "\n"));
    }
    checker = program.getTypeChecker();
    const file = program.getSourceFile(root) as ts.SourceFile;
    const kinds = checker.getTypeAtLocation(
      file.statements.find(ts.isTypeAliasDeclaration)?.name as ts.Node,
    );
    kindTypes = new Map(
      checker
        .getPropertiesOfType(kinds)
        .map((p) => [p.name, (checker as ts.TypeChecker).getTypeOfSymbol(p)]),
    );
  }
  const type = kindTypes.get(kind);
  if (!type) return [`${kind}: no interface`];
  const found: string[] = [];
  walk(checker, m, type, "", found);
  return found.map((p) => `${m.kind} ${m.metadata.name}: ${p.slice(1)}`);
}

function walk(tc: ts.TypeChecker, value: unknown, type: ts.Type, path: string, found: string[]) {
  const target = tc.getNonNullableType(type);
  if (Array.isArray(value)) {
    const element = tc.getIndexTypeOfType(target, ts.IndexKind.Number);
    if (element) {
      for (const [i, v] of value.entries()) walk(tc, v, element, `${path}[${i}]`, found);
    }
    return;
  }
  if (value === null || typeof value !== "object") return;
  // Unions (IntOrString and the like): use the object members.
  const members = target.isUnion()
    ? target.types.filter((t) => t.flags & ts.TypeFlags.Object)
    : [target];
  for (const [key, child] of Object.entries(value)) {
    const indexed = members.map((t) => tc.getIndexTypeOfType(t, ts.IndexKind.String)).find(Boolean);
    const property = members.map((t) => tc.getPropertyOfType(t, key)).find(Boolean);
    if (property) walk(tc, child, tc.getTypeOfSymbol(property), `${path}.${key}`, found);
    else if (indexed) walk(tc, child, indexed, `${path}.${key}`, found);
    else found.push(`${path}.${key}`);
  }
}
