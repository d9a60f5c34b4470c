import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { freePort } from "./env.js";

const run = promisify(execFile);
const SCRIPT = join(import.meta.dirname, "../../scripts/redis-cluster.sh");

/** A private three-primary Redis Cluster (scripts/redis-cluster.sh) on free ports. */
export interface TestCluster {
  /** REDIS_CLUSTER_NODES for it. */
  nodes: string;
  /** A REDIS_URL naming its first node (the cluster connection takes scheme and auth from it). */
  url: string;
  ports: number[];
  /** The port of the primary that serves `key`'s slot. */
  primaryOf(key: string): Promise<number>;
  /** Restarts one primary empty (no persistence): every key in its slots is gone. */
  wipe(port: number): Promise<void>;
  /** SIGKILLs every node: the whole cluster is down (for the last test of a file). */
  killAll(): void;
  stop(): Promise<void>;
}

/**
 * Starts the cluster. Ports (three clients, three buses) are taken free from the system, so
 * test files running side by side never meet.
 */
export async function startTestCluster(): Promise<TestCluster> {
  const dir = await mkdtemp(join(tmpdir(), "kp-cluster-"));
  const ports: number[] = [];
  const specs: string[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const bus = await freePort();
    ports.push(port);
    specs.push(`${port}:${bus}`);
  }
  const stop = async () => {
    process.off("exit", killAll);
    await run(SCRIPT, ["stop", join(dir, "c")]).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  };
  // The servers run as daemons: if this process dies without stop(), kill them on its way out.
  const killAll = () => {
    for (const port of ports) {
      try {
        process.kill(
          Number(readFileSync(join(dir, "c", String(port), "redis.pid"), "utf8")),
          "SIGKILL",
        );
      } catch {
        // not started, or gone
      }
    }
  };
  process.once("exit", killAll);
  try {
    await run(SCRIPT, ["start", join(dir, "c"), ...specs], { timeout: 60_000 });
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    nodes: ports.map((p) => `127.0.0.1:${p}`).join(","),
    url: `redis://127.0.0.1:${ports[0]}`,
    ports,
    killAll,
    async primaryOf(key) {
      const admin = new Redis(ports[0] as number, "127.0.0.1");
      try {
        const slot = Number(await admin.call("cluster", "keyslot", key));
        const ranges = (await admin.call("cluster", "slots")) as [
          number,
          number,
          [string, number],
        ][];
        const owner = ranges.find(([from, to]) => slot >= from && slot <= to);
        if (owner === undefined) throw new Error(`no primary serves slot ${slot}`);
        return owner[2][1];
      } finally {
        admin.disconnect();
      }
    },
    async wipe(port) {
      await run(SCRIPT, ["restart", join(dir, "c"), String(port)], { timeout: 60_000 });
    },
    stop,
  };
}
