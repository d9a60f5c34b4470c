import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
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
 * A benchmark's usage, as the script itself prints it (`bench/<name>.ts --help`), so
 * `kp-rotor bench --help` says what the scripts accept and nothing is kept twice.
 */
export function benchmarkUsage(name: Benchmark): string {
  const file = benchmarkFile(name);
  if (!existsSync(file)) return `  ${name}: not in this checkout (bench/${name}.ts)`;
  const run = spawnSync(
    process.execPath,
    ["--import", import.meta.resolve("tsx"), file, "--help"],
    {
      encoding: "utf8",
      timeout: 30_000,
    },
  );
  return run.status === 0 ? run.stdout.trimEnd() : `  ${name}: bench/${name}.ts --help failed`;
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
