import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";

// No Docker engine (nor the compose plugin) runs where the tests run, so the compose file is
// checked as data: the parts the service's guarantees depend on.
const compose = parse(readFileSync(new URL("../../docker-compose.yml", import.meta.url), "utf8"));

describe("docker-compose.yml", () => {
  it("has the stack: postgres, redis, one-shot migrate, api, three workers", () => {
    expect(Object.keys(compose.services).sort()).toEqual(["api", "migrate", "postgres", "redis", "worker"]);
    expect(compose.services.worker.deploy.replicas).toBe(3);
    expect(compose.services.migrate.restart).toBe("no");
    expect(compose.services.worker.depends_on.migrate.condition).toBe("service_completed_successfully");
    expect(compose.services.api.depends_on.migrate.condition).toBe("service_completed_successfully");
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
