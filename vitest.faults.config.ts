import { defineConfig } from "vitest/config";

/**
 * The fault-injection suite (npm run test:faults): real API and worker processes against a
 * private Postgres cluster and a private redis-server per scenario. Files are named *.fault.ts so
 * that vitest.config.ts (test/**\/*.test.ts) never picks them up. One scenario at a time: each
 * one loads the machine's two cores on its own and measures timing.
 */
export default defineConfig({
  test: {
    include: ["test/faults/**/*.fault.ts"],
    pool: "forks",
    maxWorkers: 1,
    fileParallelism: false,
    testTimeout: 15 * 60_000,
    hookTimeout: 2 * 60_000,
    teardownTimeout: 60_000,
  },
});
