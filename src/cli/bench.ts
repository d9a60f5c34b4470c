import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import { fileURLToPath } from "node:url";

/** The benchmarks in bench/, in the order `kp-rotor bench` runs them. */
export const BENCHMARKS = ["idle-cost", "lateness"] as const;
export type Benchmark = (typeof BENCHMARKS)[number];

export const isBenchmark = (name: string | undefined): name is Benchmark =>
  (BENCHMARKS as readonly string[]).includes(name ?? "");

export const benchmarkFile = (name: Benchmark) =>
  fileURLToPath(new URL(`../../bench/${name}.ts`, import.meta.url));

/**
 * The usage lines from a benchmark's header comment (the lines that name its file, up to the
 * next blank comment line), so `kp-rotor bench --help` stays in step with the scripts.
 */
export function benchmarkUsage(name: Benchmark): string {
  const file = benchmarkFile(name);
  if (!existsSync(file)) return `  ${name}: not in this checkout (bench/${name}.ts)`;
  const lines = readFileSync(file, "utf8").split("\n");
  const start = lines.findIndex((l) => l.includes(`bench/${name}.ts`));
  if (start < 0) return `  ${name}`;
  const usage: string[] = [];
  for (const line of lines.slice(start)) {
    const text = line.replace(/^\s*\*\s?/, "");
    if (text.trim() === "" || line.includes("*/")) break;
    usage.push(
      usage.length === 0
        ? `  ${text.trim().replace(/^npx tsx bench\/[\w-]+\.ts/, `kp-rotor bench ${name}`)}`
        : `      ${text.trim()}`,
    );
  }
  return usage.join("\n");
}

/**
 * Runs benchmarks one after the other in child processes (`node --import tsx bench/<name>.ts
 * ...args`), with this process's stdio; stops at the first that fails. Resolves with the exit
 * code to use: the child's, or 128 + signal number when it was killed.
 */
export async function runBenchmarks(names: readonly Benchmark[], args: string[]): Promise<number> {
  const missing = names.filter((name) => !existsSync(benchmarkFile(name)));
  if (missing.length > 0) {
    throw new Error(
      `benchmark ${missing.map((m) => `bench/${m}.ts`).join(", ")} not found in this checkout`,
    );
  }
  // Absolute, so the loader is found whatever the current directory.
  const tsx = import.meta.resolve("tsx");
  for (const name of names) {
    const code = await runChild(process.execPath, ["--import", tsx, benchmarkFile(name), ...args]);
    if (code !== 0) return code;
  }
  return 0;
}

function runChild(command: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: "inherit" });
    // Ctrl-C reaches the child through the terminal; this process waits for it to finish.
    // SIGTERM is passed on, since it is sent to this process alone.
    const onSigint = () => {};
    const onSigterm = () => child.kill("SIGTERM");
    process.on("SIGINT", onSigint);
    process.on("SIGTERM", onSigterm);
    const done = () => {
      process.off("SIGINT", onSigint);
      process.off("SIGTERM", onSigterm);
    };
    child.once("error", (err) => {
      done();
      reject(err);
    });
    child.once("exit", (code, signal) => {
      done();
      resolve(signal ? 128 + (constants.signals[signal] ?? 0) : (code ?? 1));
    });
  });
}
