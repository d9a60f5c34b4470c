import { parseDuration } from "../core/duration.js";
import { INSECURE_DEV_KEY, parseKey } from "./encryption.js";
import { DEFAULT_CIPHERSUITE } from "./key-package.js";

/** Key material and publishing settings (read through loadConfig, like everything else). */
export interface KeysConfig {
  ciphersuite: string;
  /** The key-encryption key new material is sealed with. */
  encryptionKey: Uint8Array;
  /** A previous key-encryption key, still accepted for reading. */
  previousEncryptionKey: Uint8Array | undefined;
  /** True when running on the public development key (KP_ROTOR_INSECURE_DEV_KEY). */
  insecureDevKey: boolean;
  publisher:
    | { kind: "directory" }
    | { kind: "webhook"; url: string; secret: string; timeoutMs: number };
}

/** Reads the KEYS/PUBLISH variables, pushing a line per problem onto `problems`. */
export function loadKeysConfig(
  env: Record<string, string | undefined>,
  problems: string[],
): KeysConfig {
  const set = (name: string) => (env[name] ?? "") !== "";
  const key = (name: string): Uint8Array | undefined => {
    if (!set(name)) return undefined;
    try {
      return parseKey(name, env[name] as string);
    } catch (err) {
      problems.push((err as Error).message);
      return undefined;
    }
  };
  const insecureDevKey =
    env.KP_ROTOR_INSECURE_DEV_KEY === "1" || env.KP_ROTOR_INSECURE_DEV_KEY === "true";
  let encryptionKey = key("KEY_ENCRYPTION_KEY");
  const previousEncryptionKey = key("KEY_ENCRYPTION_KEY_PREVIOUS");
  if (encryptionKey === undefined && !set("KEY_ENCRYPTION_KEY")) {
    if (insecureDevKey) encryptionKey = INSECURE_DEV_KEY;
    else {
      problems.push(
        'KEY_ENCRYPTION_KEY: required (32 bytes in base64, e.g. from "openssl rand -base64 32"); for local development only, set KP_ROTOR_INSECURE_DEV_KEY=1 to use a public, insecure key',
      );
    }
  }

  let publisher: KeysConfig["publisher"] = { kind: "directory" };
  const kind = env.PUBLISHER ?? "directory";
  if (kind === "webhook") {
    const url = env.PUBLISH_WEBHOOK_URL ?? "";
    const secret = env.PUBLISH_WEBHOOK_SECRET ?? "";
    const timeoutMs = parseDuration(env.PUBLISH_WEBHOOK_TIMEOUT ?? "5s");
    if (!/^https?:\/\//.test(url))
      problems.push("PUBLISH_WEBHOOK_URL: expected an http:// or https:// URL");
    if (secret.length < 16)
      problems.push("PUBLISH_WEBHOOK_SECRET: expected at least 16 characters");
    if (timeoutMs === undefined || timeoutMs < 1 || timeoutMs > 600_000) {
      problems.push("PUBLISH_WEBHOOK_TIMEOUT: expected a duration from 1ms to 10m, e.g. 5s");
    }
    publisher = { kind: "webhook", url, secret, timeoutMs: timeoutMs ?? 5_000 };
  } else if (kind !== "directory" && kind !== "") {
    problems.push(`PUBLISHER=${JSON.stringify(kind)}: expected directory or webhook`);
  }

  return {
    ciphersuite: env.MLS_CIPHERSUITE || DEFAULT_CIPHERSUITE,
    encryptionKey: encryptionKey ?? new Uint8Array(32),
    previousEncryptionKey,
    insecureDevKey: insecureDevKey && !set("KEY_ENCRYPTION_KEY"),
    publisher,
  };
}
