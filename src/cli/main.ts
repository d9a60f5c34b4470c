import { parseArgs } from "node:util";
import closeWithGrace from "close-with-grace";
import { type Config, loadConfig } from "../config.js";
import { type Context, createContext } from "../context.js";
import { createDatabase, runMigrations } from "../db/client.js";
import { KpRotorError } from "../errors.js";
import { createLogger } from "../logger.js";
import { startApi } from "../server.js";
import * as identities from "../services/identities.service.js";
import { reconcile } from "../services/reconcile.service.js";
import { startWorkerRuntime } from "../worker-process.js";
import { ALL_HANDLERS } from "../../workers/index.js";
import { progressBar } from "./progress.js";

const COMMANDS: Record<string, { usage: string; summary: string }> = {
  start: { usage: "start", summary: "migrate, then run the API and a worker in one process" },
  api: { usage: "api", summary: "run the HTTP API" },
  worker: { usage: "worker", summary: "run the rotation and deletion workers" },
  migrate: { usage: "migrate", summary: "apply the database migrations in drizzle/" },
  reconcile: { usage: "reconcile [--quiet]", summary: "rebuild every wake-up from Postgres" },
  status: {
    usage: "status <identityId>",
    summary: "print an identity's deadlines and key packages",
  },
  rotate: {
    usage: "rotate <identityId>",
    summary: "rotate an identity's key package as soon as possible",
  },
};

const HELP = `kp-rotor: durable MLS key-package rotation timers

usage: kp-rotor <command> [options]

commands:
${Object.values(COMMANDS)
  .map((c) => `  ${c.usage.padEnd(22)} ${c.summary}`)
  .join("\n")}

Configuration comes from the environment (DATABASE_URL, REDIS_URL, PORT, API_TOKEN,
ROTATION_INTERVAL, WELCOME_ROTATION_DELAY, DELETION_GRACE, QUEUE_PREFIX, WORKER_CONCURRENCY,
WATCHDOG_INTERVAL, LOG_LEVEL); see README.md.`;

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(HELP);
    return command === undefined ? 2 : 0;
  }
  const spec = COMMANDS[command];
  if (spec === undefined) throw new UsageError(`unknown command "${command}"; see kp-rotor --help`);
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: { help: { type: "boolean", short: "h" }, quiet: { type: "boolean", short: "q" } },
  });
  if (values.help) {
    console.log(`usage: kp-rotor ${spec.usage}\n\n${spec.summary}`);
    return 0;
  }
  const expected = spec.usage.includes("<identityId>") ? 1 : 0;
  if (positionals.length !== expected) {
    throw new UsageError(`usage: kp-rotor ${spec.usage}`);
  }
  const config = loadConfig();
  switch (command) {
    case "migrate":
      return migrate(config);
    case "start":
    case "api":
    case "worker":
      return serve(config, command);
    default:
      return oneShot(config, command, positionals[0], values.quiet === true);
  }
}

async function migrate(config: Config): Promise<number> {
  const database = createDatabase(config.databaseUrl, { max: 1 });
  try {
    await runMigrations(database);
    console.log("migrations applied");
    return 0;
  } finally {
    await database.close();
  }
}

/** Long-running processes; SIGTERM/SIGINT close them in reverse order of start. */
async function serve(config: Config, command: "start" | "api" | "worker"): Promise<number> {
  const log = createLogger(config.logLevel);
  const ctx = await createContext(config, log, { migrate: command !== "api" });
  const stops: (() => Promise<void>)[] = [() => ctx.close()];
  if (command !== "api") stops.push(startWorkerRuntime(ctx, ALL_HANDLERS).close);
  if (command !== "worker") {
    const api = await startApi(ctx);
    stops.push(api.close);
    log.info({ address: api.address }, "api listening");
  }
  closeWithGrace({ delay: 40_000 }, async ({ signal, err }) => {
    if (err) log.error({ err }, "fatal error");
    log.info({ signal }, "shutting down");
    for (const stop of stops.reverse()) await stop();
  });
  return new Promise<number>(() => {});
}

async function oneShot(
  config: Config,
  command: string,
  identityId: string | undefined,
  quiet: boolean,
): Promise<number> {
  const log = createLogger(command === "reconcile" && !quiet ? "warn" : "error");
  const ctx: Context = await createContext(config, log, { migrate: true });
  try {
    if (command === "reconcile") {
      const bar = quiet ? undefined : progressBar("reconcile");
      const report = await reconcile(ctx.rotor, {
        onProgress: (done, total) => bar?.update(done, total),
      });
      bar?.stop();
      console.log(JSON.stringify(report, null, 2));
    } else if (command === "status") {
      console.log(
        JSON.stringify(await identities.status(ctx.rotor, identityId as string), null, 2),
      );
    } else if (command === "rotate") {
      const result = await identities.rotateSoon(ctx.rotor, identityId as string);
      console.log(
        `rotation of ${result.identityId} due at ${new Date(result.rotationDeadline).toISOString()}`,
      );
    }
    return 0;
  } finally {
    await ctx.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const message =
      err instanceof UsageError || err instanceof KpRotorError
        ? err.message
        : `error: ${err instanceof Error ? err.message : String(err)}`;
    console.error(message);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
