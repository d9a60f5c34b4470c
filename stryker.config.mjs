// @ts-check
/**
 * Mutation run over the pure decisions (src/core) and the repositories, whose WHERE clauses and
 * fences are the guards the invariants rest on (DESIGN.md). `npm run test:mutation`; not in CI.
 * It needs the same Postgres and Redis as `npm test`. Two cores: at most two Stryker workers, and
 * only the tests of vitest.mutation.config.ts. Reports land in reports/mutation/.
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
export default {
  testRunner: "vitest",
  plugins: ["@stryker-mutator/vitest-runner"],
  vitest: { configFile: "vitest.mutation.config.ts" },
  mutate: ["src/core/**/*.ts", "src/db/identities.repo.ts", "src/db/key-packages.repo.ts"],
  coverageAnalysis: "perTest",
  // Module-level constants (BACKOFF, regexes) would run every test per mutant; the unit tests
  // pin them by value anyway.
  ignoreStatic: true,
  concurrency: Number(process.env.STRYKER_CONCURRENCY ?? 2),
  // Generous: on a loaded machine a slow test would otherwise count as a timeout, and every
  // timeout restarts a test runner.
  timeoutMS: 30_000,
  timeoutFactor: 3,
  reporters: ["clear-text", "progress-append-only", "html", "json"],
  htmlReporter: { fileName: "reports/mutation/index.html" },
  jsonReporter: { fileName: "reports/mutation/mutation.json" },
  clearTextReporter: { allowColor: false, logTests: false, reportMutants: true },
  tempDirName: ".stryker-tmp",
  cleanTempDir: true,
};
