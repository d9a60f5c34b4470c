import { defineConfig } from "vitest/config";

/**
 * The Dockerfile replay (test/image): two npm installs, a tsc build and the built image's
 * processes. The last step of `npm test`, alone, so that its load does not slow the timing-
 * sensitive tests (browser, backpressure) that vitest.config.ts runs two at a time.
 */
export default defineConfig({
  test: {
    include: ["test/image/**/*.test.ts"],
    pool: "forks",
    maxWorkers: 1,
    testTimeout: 180_000,
    hookTimeout: 10 * 60_000,
  },
});
