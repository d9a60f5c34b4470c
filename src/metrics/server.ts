import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "../logger.js";
import type { Metrics } from "./metrics.js";

export interface MetricsServer {
  /** The port it listens on (useful when started on port 0). */
  readonly port: number;
  close(): Promise<void>;
}

/**
 * A process's Prometheus endpoint: GET /metrics on its own small HTTP server (workers have no
 * API; an API cluster's primary serves its children's aggregate). Anything else is a 404. Close is idempotent and drops idle keep-alive sockets.
 */
export async function startMetricsServer(
  metrics: Pick<Metrics, "scrape">,
  options: { port: number; host: string; log: Logger },
): Promise<MetricsServer> {
  const log = options.log.child({ component: "metrics-server" });
  const server = createServer((request, response) => {
    const path = (request.url ?? "").split("?")[0];
    if (path !== "/metrics" || (request.method !== "GET" && request.method !== "HEAD")) {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    metrics.scrape().then(
      ({ contentType, body }) => {
        response.writeHead(200, { "content-type": contentType });
        response.end(request.method === "HEAD" ? undefined : body);
      },
      (err: unknown) => {
        log.error({ err }, "metrics scrape failed");
        response.writeHead(500, { "content-type": "text/plain" }).end("scrape failed\n");
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (err) => log.error({ err }, "metrics server error"));
  const { port } = server.address() as AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}
