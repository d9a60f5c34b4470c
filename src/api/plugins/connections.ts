import type { Server } from "node:http";
import type { Socket } from "node:net";

/**
 * At most `max` open connections per client address; the next one is closed as soon as it
 * opens, before a byte of it is read. Behind a proxy every connection comes from the proxy's
 * address: raise MAX_CONNECTIONS_PER_CLIENT (or set 0) there and let the proxy limit clients.
 */
export function limitConnectionsPerAddress(server: Server, max: number): void {
  if (max <= 0) return;
  const open = new Map<string, number>();
  server.on("connection", (socket: Socket) => {
    const address = socket.remoteAddress ?? "unknown";
    const count = (open.get(address) ?? 0) + 1;
    if (count > max) {
      socket.destroy();
      return;
    }
    open.set(address, count);
    socket.once("close", () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left <= 0) open.delete(address);
      else open.set(address, left);
    });
  });
}

/** Server timeouts (Node's and Fastify's defaults let a request take forever). */
export function serverTimeouts(requestTimeoutMs: number) {
  return {
    /** Whole request, headers and body, from its first byte. */
    requestTimeout: requestTimeoutMs,
    /** An idle keep-alive connection between requests (above common load balancers' 60 s). */
    keepAliveTimeout: 65_000,
    /** Any connection with no traffic at all. */
    connectionTimeout: 70_000,
    http: {
      /** The request line and headers; a slow-headers client is cut off sooner. */
      headersTimeout: Math.min(requestTimeoutMs, 5_000),
      /** How often Node checks the two above (default 30 s: a timeout could run 30 s late). */
      connectionsCheckingInterval: 1_000,
    },
  };
}
