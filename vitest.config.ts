import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The Dockerfile replay runs alone after these (vitest.image.config.ts).
    exclude: ["test/image/**", "**/node_modules/**"],
    pool: "forks",
    // Two cores: two test files at a time; each has its own database and queue prefix.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
