import { Cluster, Redis } from "ioredis";

/** A connection to a single Redis or to a Redis Cluster; BullMQ and our scripts take either. */
export type RedisConnection = Redis | Cluster;

/** Where Redis is: a URL (a single server) or the seed nodes of a cluster (`host:port`). */
export type RedisTarget = string | { url: string; clusterNodes?: readonly string[] | undefined };

/**
 * A Redis connection. Request paths ("client") fail fast, so an API call answers 503 instead of
 * waiting for Redis forever; BullMQ workers ("worker") require commands that never give up. With
 * cluster nodes it is an ioredis Cluster (slots discovered from the seeds; no `keyPrefix`, which
 * BullMQ does not allow; the password and TLS of the URL apply to every node).
 */
export function createRedis(
  target: RedisTarget,
  mode: "client" | "worker" = "client",
): RedisConnection {
  const url = typeof target === "string" ? target : target.url;
  const nodes = typeof target === "string" ? undefined : target.clusterNodes;
  const options =
    mode === "worker"
      ? { maxRetriesPerRequest: null }
      : { maxRetriesPerRequest: 1, commandTimeout: 5_000, connectTimeout: 5_000 };
  if (nodes === undefined || nodes.length === 0) return new Redis(url, options);
  const parsed = new URL(url);
  const auth = {
    ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
    ...(parsed.password ? { password: decodeURIComponent(parsed.password) } : {}),
    ...(parsed.protocol === "rediss:" ? { tls: {} } : {}),
  };
  return new Cluster(
    nodes.map((node) => {
      const at = node.lastIndexOf(":");
      return { host: node.slice(0, at), port: Number(node.slice(at + 1)) };
    }),
    {
      redisOptions: { ...options, ...auth },
      // Every command (blocking, scripts, reads) goes to the primary that owns the slot.
      scaleReads: "master",
      // While a primary fails over, retry instead of failing at once.
      retryDelayOnClusterDown: 300,
      retryDelayOnFailover: 200,
      // Request paths fail fast while no node is reachable: the Cluster's offline queue has no
      // timeout (the nodes' commandTimeout starts only once a command is sent), so a request
      // would wait for the cluster to come back. Workers keep the queue and never give up.
      ...(mode === "client" ? { enableOfflineQueue: false } : {}),
    },
  );
}

/**
 * Resolves once the connection can take commands (at once for a single Redis, whose offline
 * queue holds the first commands; a client Cluster refuses commands until it is ready).
 */
export async function whenReady(redis: RedisConnection, timeoutMs = 10_000): Promise<void> {
  if (!(redis instanceof Cluster) || redis.status === "ready") return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      redis.off("ready", onReady);
      reject(new Error(`the Redis Cluster was not ready within ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      clearTimeout(timer);
      resolve();
    };
    redis.once("ready", onReady);
  });
}

/** The primaries to run a keyspace SCAN on: every primary of a cluster, or the one server. */
export function scanTargets(redis: RedisConnection): Redis[] {
  return redis instanceof Cluster ? redis.nodes("master") : [redis];
}
