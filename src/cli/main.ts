import { type ParseArgsConfig, parseArgs } from "node:util";
import { KpRotorError } from "../errors.js";
import { BENCHMARKS, benchmarkUsage, isBenchmark, runBenchmarks } from "./bench.js";

interface CommandSpec {
  usage: string;
  summary: string;
  /** More lines for `kp-rotor <command> --help`. */
  details?: string;
  /** Options besides --help. */
  options?: NonNullable<ParseArgsConfig["options"]>;
}

const COMMANDS: Record<string, CommandSpec> = {
  start: {
    usage: "start",
    summary: "migrate, then run the API and a worker in one process",
    details: "Metrics on METRICS_PORT (GET /metrics). SIGTERM/SIGINT stop it gracefully.",
  },
  api: {
    usage: "api",
    summary: "run the HTTP API",
    details:
      "Listens on HOST:PORT; metrics on METRICS_PORT (GET /metrics). With API_PROCESSES above 1\nit forks that many API processes sharing the port and serves their metrics, summed.",
  },
  worker: {
    usage: "worker",
    summary: "run the rotation and deletion workers",
    details:
      "Metrics on METRICS_PORT (GET /metrics). On SIGTERM it takes no new wake-ups and waits for\nthe active ones, at most WORKER_LOCK_DURATION.",
  },
  dev: {
    usage: "dev [--embedded]",
    summary: "start for development: local or private Postgres and Redis, open board",
    details:
      "Loopback only, with the public development key. Uses Postgres and Redis on their default\naddresses when they answer (database kp_rotor_dev), else starts private ones with their data\nin .kp-rotor/ (embedded Postgres, redis-server from PATH). Bull Board needs no credentials.\n\noptions:\n  --embedded    private Postgres and Redis even when others answer",
    options: { embedded: { type: "boolean" } },
  },
  migrate: { usage: "migrate", summary: "apply the database migrations in drizzle/" },
  reconcile: {
    usage: "reconcile [--quiet]",
    summary: "rebuild every wake-up from Postgres",
    details:
      "Prints a JSON summary of the repairs on stdout, progress on stderr.\n\noptions:\n  -q, --quiet   no progress, only the summary",
    options: { quiet: { type: "boolean", short: "q" } },
  },
  reshard: {
    usage: "reshard --from <K> [--quiet]",
    summary: "move every wake-up from QUEUE_SHARDS=<K> to the QUEUE_SHARDS now set",
    details:
      "Run it once no process with the old QUEUE_SHARDS runs (docs/cluster.md): a reconcile arms\nevery wake-up in the new queues, then the jobs left in the old ones are removed. Prints a\nJSON summary on stdout; exits 1 if a job could not be removed (run it again).\n\noptions:\n  --from <K>    the previous QUEUE_SHARDS\n  -q, --quiet   no progress, only the summary",
    options: { from: { type: "string" }, quiet: { type: "boolean", short: "q" } },
  },
  rewrap: {
    usage: "rewrap [--quiet]",
    summary: "re-seal every private key under the current KEY_ENCRYPTION_KEY",
    details:
      "Opens each sealed key with KEY_ENCRYPTION_KEY or KEY_ENCRYPTION_KEY_PREVIOUS and seals it\nagain under KEY_ENCRYPTION_KEY (format version 2). Idempotent: what is done already is\nskipped, so it can be run again after an interruption. Prints a JSON summary on stdout,\nprogress on stderr; exits 1 when some key could not be opened. Once it reports nothing\nleft under the previous key, KEY_ENCRYPTION_KEY_PREVIOUS can be removed.\n\noptions:\n  -q, --quiet   no progress, only the summary",
    options: { quiet: { type: "boolean", short: "q" } },
  },
  status: {
    usage: "status <identityId>",
    summary: "print an identity's deadlines and key packages",
    details: "Prints JSON: deadlines from Postgres, wake-ups as they stand in Redis.",
  },
  rotate: {
    usage: "rotate <identityId>",
    summary: "rotate an identity's key package as soon as possible",
    details: "Pulls the rotation deadline in to now and prints it; a worker does the rotation.",
  },
  bench: {
    usage: "bench [<name> [options]]",
    summary: "run a benchmark in bench/, or all of them",
  },
};

const USAGE_WIDTH = Math.max(...Object.values(COMMANDS).map((c) => c.usage.length)) + 1;
const sentence = (text: string) => `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;

const HELP = `kp-rotor: durable MLS key-package rotation timers

usage: kp-rotor <command> [options]
       kp-rotor <command> --help

commands:
${Object.values(COMMANDS)
  .map((c) => `  ${c.usage.padEnd(USAGE_WIDTH)} ${c.summary}`)
  .join("\n")}

Configuration comes from the environment (DATABASE_URL, REDIS_URL, KEY_ENCRYPTION_KEY, PORT,
METRICS_PORT, API_TOKEN, WORKER_LOCK_DURATION and more); see README.md, "Configuration".
Exit status: 0 on success, 1 on an error, 2 on a usage error.`;

/** A mistake in the command line: exit status 2. */
class UsageError extends Error {}

function commandHelp(name: string, spec: CommandSpec): string {
  if (name === "bench") {
    return `usage: kp-rotor ${spec.usage}\n\n${sentence(spec.summary)} <name> is ${BENCHMARKS.join(" or ")}; the options go to it:\n\n${BENCHMARKS.map(benchmarkUsage).join("\n\n")}`;
  }
  return `usage: kp-rotor ${spec.usage}\n\n${sentence(spec.summary)}${spec.details ? `\n${spec.details}` : ""}`;
}

async function main(command: string | undefined, rest: string[]): Promise<number> {
  if (command === undefined) {
    console.error(HELP);
    return 2;
  }
  if (command === "--help" || command === "-h") {
    console.log(HELP);
    return 0;
  }
  if (command === "help") {
    const [topic] = rest;
    const spec = topic === undefined ? undefined : COMMANDS[topic];
    if (topic !== undefined && spec === undefined) throw unknownCommand(topic);
    console.log(topic && spec ? commandHelp(topic, spec) : HELP);
    return 0;
  }
  const spec = COMMANDS[command];
  if (spec === undefined) throw unknownCommand(command);
  if (command === "bench") return bench(spec, rest);

  const { values, positionals } = parseCommandLine(command, spec, rest);
  if (values.help) {
    console.log(commandHelp(command, spec));
    return 0;
  }
  const expected = spec.usage.includes("<identityId>") ? 1 : 0;
  if (positionals.length !== expected) {
    const takes = expected === 1 ? "one argument, <identityId>" : "no arguments";
    throw new UsageError(`${command} takes ${takes}; see kp-rotor ${command} --help`);
  }
  // Loaded only now: the service's modules take a second or more to load, --help should not.
  const { runCommand } = await import("./commands.js");
  // Only reconcile and rewrap declare --quiet, only dev --embedded; parseArgs has refused them
  // elsewhere.
  const flags = values as { quiet?: boolean; embedded?: boolean; from?: string };
  if (command === "reshard" && !/^\d+$/.test(flags.from ?? "")) {
    throw new UsageError("reshard needs --from <K>, the previous QUEUE_SHARDS (1 to 64)");
  }
  return runCommand(command, positionals[0], {
    quiet: flags.quiet === true,
    embedded: flags.embedded === true,
    ...(flags.from === undefined ? {} : { from: Number(flags.from) }),
  });
}

const unknownCommand = (name: string) =>
  new UsageError(
    name.startsWith("-")
      ? `unknown option ${name}; see kp-rotor --help`
      : `unknown command "${name}"; see kp-rotor --help`,
  );

/** parseArgs, with its several-sentence errors cut to one line that points at the help. */
function parseCommandLine(command: string, spec: CommandSpec, args: string[]) {
  try {
    return parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: { help: { type: "boolean", short: "h" }, ...spec.options },
    });
  } catch (err) {
    const first = (err instanceof Error ? err.message : String(err)).split(/\.\s/)[0] ?? "";
    const message = first.charAt(0).toLowerCase() + first.slice(1);
    throw new UsageError(`${message}; see kp-rotor ${command} --help`);
  }
}

async function bench(spec: CommandSpec, args: string[]): Promise<number> {
  const [first, ...rest] = args;
  if (first === "--help" || first === "-h") {
    console.log(commandHelp("bench", spec));
    return 0;
  }
  if (first === undefined) return runBenchmarks(BENCHMARKS, []);
  if (isBenchmark(first)) return runBenchmarks([first], rest);
  throw new UsageError(
    first.startsWith("-")
      ? `options go to one benchmark: kp-rotor bench <${BENCHMARKS.join("|")}> ${first}`
      : `unknown benchmark "${first}"; expected ${BENCHMARKS.join(" or ")}`,
  );
}

/**
 * One line for an operator: the message of a KpRotorError as written (a configuration error
 * lists each problem on a line of its own), the first line of anything else. Connection errors
 * arrive as AggregateErrors with an empty message (one error per address tried).
 */
function describeError(err: unknown): string {
  if (err instanceof KpRotorError) return err.message;
  if (err instanceof AggregateError && err.errors.length > 0) {
    return [...new Set(err.errors.map(describeError))].join("; ");
  }
  if (err instanceof Error) {
    const text = err.message || (err as NodeJS.ErrnoException).code || err.name;
    return text.split("\n")[0] ?? text;
  }
  return String(err);
}

const [command, ...rest] = process.argv.slice(2);
main(command, rest).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const usage = err instanceof UsageError;
    const where = usage || command === undefined ? "kp-rotor" : `kp-rotor ${command}`;
    console.error(`${where}: ${usage ? err.message : describeError(err)}`);
    process.exitCode = usage ? 2 : 1;
  },
);
