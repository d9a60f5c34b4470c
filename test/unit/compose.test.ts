import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { loadConfig } from "../../src/config.js";
import { configNames, interpolate } from "../helpers/config-env.js";

// No Docker engine (nor the compose plugin) runs where the tests run, so the compose file is
// checked as data: the parts the service's guarantees depend on.
const compose = parse(readFileSync(new URL("../../docker-compose.yml", import.meta.url), "utf8"));

describe("docker-compose.yml", () => {
  it("has the stack: postgres, redis, one-shot migrate, api, three workers", () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      "api",
      "migrate",
      "postgres",
      "redis",
      "worker",
    ]);
    expect(compose.services.worker.deploy.replicas).toBe(3);
    expect(compose.services.migrate.restart).toBe("no");
    expect(compose.services.worker.depends_on.migrate.condition).toBe(
      "service_completed_successfully",
    );
    expect(compose.services.api.depends_on.migrate.condition).toBe(
      "service_completed_successfully",
    );
  });

  it("keeps Redis data and never evicts a wake-up", () => {
    const args: string[] = compose.services.redis.command;
    const argAfter = (flag: string) => args[args.indexOf(flag) + 1];
    expect(argAfter("--appendonly")).toBe("yes");
    expect(argAfter("--maxmemory-policy")).toBe("noeviction");
    expect(compose.services.redis.volumes).toEqual(["redis-data:/data"]);
  });

  it("gives every stateful service a healthcheck and a volume", () => {
    for (const name of ["postgres", "redis"]) {
      expect(compose.services[name].healthcheck.test.length).toBeGreaterThan(0);
      expect(compose.services[name].volumes).toHaveLength(1);
    }
  });

  it("lets workers finish active jobs before they are killed", () => {
    const seconds = Number.parseInt(compose.services.worker.stop_grace_period, 10);
    expect(seconds).toBeGreaterThan(30);
  });

  it("refuses to come up without an API token or a key-encryption key", () => {
    // `${VAR:?message}`: compose stops with the message when VAR is unset or empty.
    // Every service merges these settings (YAML anchor x-service-env).
    const env = compose["x-service-env"];
    expect(compose.services.api.environment["<<"]).toEqual(env);
    expect(env.API_TOKEN).toMatch(/^\$\{API_TOKEN:\?.+\}$/);
    expect(env.KEY_ENCRYPTION_KEY).toMatch(/^\$\{KEY_ENCRYPTION_KEY:\?.+\}$/);
    expect(env.ALLOW_UNAUTHENTICATED).toBeUndefined();
  });
});

describe("docker-compose.yml: the services' environment", () => {
  // With YAML merge keys resolved, as Compose does (x-service-env is merged into each service).
  const merged = parse(readFileSync(new URL("../../docker-compose.yml", import.meta.url), "utf8"), {
    merge: true,
  });
  const built = Object.entries<{ build?: string; environment?: Record<string, string> }>(
    merged.services,
  ).filter(([, s]) => s.build !== undefined);
  // What the operator's shell gives compose: the two secrets it requires.
  const shell = {
    KEY_ENCRYPTION_KEY: Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1)).toString("base64"),
    API_TOKEN: "compose-test-token-0123456789",
  };

  it("gives every service built from the image an environment the config loader accepts", () => {
    expect(built.map(([name]) => name).sort()).toEqual(["api", "migrate", "worker"]);
    for (const [name, service] of built) {
      const env = Object.fromEntries(
        Object.entries(service.environment ?? {}).map(([k, v]) => [
          k,
          interpolate(String(v), shell),
        ]),
      );
      expect(() => loadConfig(env), name).not.toThrow();
      // Every name is one the service reads: a misspelt one would be ignored silently.
      const known = configNames(env);
      for (const key of Object.keys(env)) expect(known.has(key), `${name}: ${key}`).toBe(true);
      // The Compose network's Postgres and Redis, not the development defaults.
      expect(loadConfig(env).databaseUrl).toMatch(/@postgres:5432\//);
      expect(loadConfig(env).redisUrl).toBe("redis://redis:6379");
    }
  });

  it("refuses to start without KEY_ENCRYPTION_KEY instead of sealing keys with a default", () => {
    const [, api] = built.find(([name]) => name === "api") ?? [];
    const raw = String(api?.environment?.KEY_ENCRYPTION_KEY);
    expect(() => interpolate(raw, {})).toThrow(/KEY_ENCRYPTION_KEY/);
  });

  it("the API's PORT is the port it publishes and checks", () => {
    const api = merged.services.api;
    expect(api.ports).toEqual([`${api.environment.PORT}:${api.environment.PORT}`]);
    expect(api.healthcheck.test.join(" ")).toContain(`127.0.0.1:${api.environment.PORT}/readyz`);
  });
});
