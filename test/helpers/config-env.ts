import { loadConfig } from "../../src/config.js";

/**
 * Loads `env` with the service's config loader and returns the names it read. loadConfig ignores
 * variables it does not know, so a misspelt name in a deployment file would pass silently; the
 * names it reads are the ones it accepts. (Webhook settings are read only with PUBLISHER=webhook,
 * so those are read in a second pass with it.)
 */
export function configNames(env: Record<string, string>): Set<string> {
  const read = new Set<string>();
  const recording = (values: Record<string, string>) =>
    new Proxy(values, {
      get(target, name) {
        if (typeof name === "string") read.add(name);
        return target[name as string];
      },
    });
  loadConfig(recording(env));
  try {
    loadConfig(recording({ ...env, PUBLISHER: "webhook" }));
  } catch {
    // only the names matter here
  }
  return read;
}

/** Docker Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} from `env`. */
export function interpolate(value: string, env: Record<string, string>): string {
  return value.replace(/\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}/g, (_, name, op, arg) => {
    const set = env[name] !== undefined && env[name] !== "";
    if (op === "-") return set ? env[name] : arg;
    if (op === "?" && !set) throw new Error(`${name}: ${arg}`);
    return env[name] ?? "";
  });
}
