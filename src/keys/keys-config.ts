import { parseDuration } from "../core/duration.js";
import { INSECURE_DEV_KEY, isDegenerateKey, parseKey } from "./encryption.js";
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
    | { kind: "webhook"; url: string; secrets: string[]; timeoutMs: number };
  /**
   * Where a published package is read back to check it: the directory itself, a URL template
   * (PUBLISH_VERIFY_URL, `{identityId}` replaced), or nowhere (a webhook without the template).
   */
  verify: { kind: "directory" } | { kind: "url"; template: string } | { kind: "none" };
  /** PUBLISH_CHECK_MIDWAY: also check at about half the rotation interval (early wake). */
  verifyMidway: boolean;
  /** Device custody: notifications and the upload policy (docs/device-custody.md). */
  device: {
    /** DEVICE_NOTIFY_SECRET's bytes; undefined: derived from the key-encryption key. */
    notifySecret: Uint8Array | undefined;
    notifyTimeoutMs: number;
    allowHttp: boolean;
    allowedCiphersuites: string[];
    marginMs: number;
    maxLifetimeMs: number;
  };
}

/** Reads the KEYS/PUBLISH variables, pushing a line per problem onto `problems`. */
export function loadKeysConfig(
  env: Record<string, string | undefined>,
  problems: string[],
): KeysConfig {
  const set = (name: string) => (env[name] ?? "") !== "";
  const production = env.NODE_ENV === "production";
  const key = (name: string): Uint8Array | undefined => {
    if (!set(name)) return undefined;
    try {
      const parsed = parseKey(name, env[name] as string);
      if (isDegenerateKey(parsed)) {
        problems.push(
          `${name}: refusing a degenerate key (one byte repeated); use "openssl rand -base64 32"`,
        );
      } else if (production && Buffer.from(parsed).equals(Buffer.from(INSECURE_DEV_KEY))) {
        problems.push(`${name}: the public development key is refused with NODE_ENV=production`);
      }
      return parsed;
    } catch (err) {
      problems.push((err as Error).message);
      return undefined;
    }
  };
  const insecureDevKey =
    env.KP_ROTOR_INSECURE_DEV_KEY === "1" || env.KP_ROTOR_INSECURE_DEV_KEY === "true";
  if (insecureDevKey && production && !set("KEY_ENCRYPTION_KEY")) {
    problems.push(
      "KP_ROTOR_INSECURE_DEV_KEY: refused with NODE_ENV=production (the development key is public); set KEY_ENCRYPTION_KEY",
    );
  }
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
    // Several secrets, separated by spaces, while receivers move from one to the next.
    const secrets = (env.PUBLISH_WEBHOOK_SECRET ?? "").split(/\s+/).filter((s) => s !== "");
    const timeoutMs = parseDuration(env.PUBLISH_WEBHOOK_TIMEOUT ?? "5s");
    const allowHttp = env.PUBLISH_WEBHOOK_ALLOW_HTTP === "true";
    const problem = webhookUrlProblem(url, allowHttp);
    if (problem !== undefined) problems.push(`PUBLISH_WEBHOOK_URL: ${problem}`);
    if (secrets.length === 0 || secrets.some((s) => s.length < 16))
      problems.push(
        "PUBLISH_WEBHOOK_SECRET: expected one or more space-separated secrets of at least 16 characters",
      );
    if (timeoutMs === undefined || timeoutMs < 1 || timeoutMs > 600_000) {
      problems.push("PUBLISH_WEBHOOK_TIMEOUT: expected a duration from 1ms to 10m, e.g. 5s");
    }
    publisher = { kind: "webhook", url, secrets, timeoutMs: timeoutMs ?? 5_000 };
  } else if (kind !== "directory" && kind !== "") {
    problems.push(`PUBLISHER=${JSON.stringify(kind)}: expected directory or webhook`);
  }

  const ciphersuite = env.MLS_CIPHERSUITE || DEFAULT_CIPHERSUITE;
  const durationOf = (name: string, fallback: string, min: number): number => {
    const raw = env[name] || fallback;
    const ms = parseDuration(raw);
    if (ms === undefined || ms < min) {
      problems.push(`${name}=${JSON.stringify(raw)}: expected a duration such as 7d`);
      return min;
    }
    return ms;
  };
  const notifySecret = env.DEVICE_NOTIFY_SECRET ?? "";
  if (notifySecret !== "" && notifySecret.length < 16) {
    problems.push("DEVICE_NOTIFY_SECRET: expected at least 16 characters");
  }
  const device: KeysConfig["device"] = {
    notifySecret: notifySecret === "" ? undefined : new TextEncoder().encode(notifySecret),
    notifyTimeoutMs: durationOf("DEVICE_NOTIFY_TIMEOUT", "5s", 1),
    allowHttp: env.DEVICE_NOTIFY_ALLOW_HTTP === "true",
    allowedCiphersuites: (env.MLS_ALLOWED_CIPHERSUITES || ciphersuite)
      .split(/[\s,]+/)
      .filter((s) => s !== ""),
    marginMs: durationOf("KEY_PACKAGE_MARGIN", "7d", 0),
    maxLifetimeMs: durationOf("MAX_KEY_PACKAGE_LIFETIME", "90d", 1),
  };
  const verifyUrl = env.PUBLISH_VERIFY_URL ?? "";
  let verify: KeysConfig["verify"] =
    publisher.kind === "directory" ? { kind: "directory" } : { kind: "none" };
  if (verifyUrl !== "") {
    const problem = webhookUrlProblem(
      verifyUrl.replaceAll("{identityId}", "x"),
      env.PUBLISH_WEBHOOK_ALLOW_HTTP === "true",
    );
    if (problem !== undefined) problems.push(`PUBLISH_VERIFY_URL: ${problem}`);
    else if (!verifyUrl.includes("{identityId}")) {
      problems.push("PUBLISH_VERIFY_URL: expected a template containing {identityId}");
    }
    verify = { kind: "url", template: verifyUrl };
  }
  return {
    device,
    verify,
    verifyMidway: env.PUBLISH_CHECK_MIDWAY === "true",
    ciphersuite,
    encryptionKey: encryptionKey ?? new Uint8Array(32),
    previousEncryptionKey,
    insecureDevKey: insecureDevKey && !set("KEY_ENCRYPTION_KEY"),
    publisher,
  };
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|\[::1\])$/i;

/**
 * Why a webhook URL is refused, or undefined: https:// always works; http:// only to a loopback
 * address, or anywhere with PUBLISH_WEBHOOK_ALLOW_HTTP=true (the key package and its signature
 * would otherwise cross the network in clear, and an HTTP to HTTPS redirect is never followed).
 */
export function webhookUrlProblem(url: string, allowHttp: boolean): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "expected an https:// URL";
  }
  if (parsed.protocol === "https:") return undefined;
  if (parsed.protocol !== "http:") return "expected an https:// URL";
  if (allowHttp || LOOPBACK.test(parsed.hostname)) return undefined;
  return "expected an https:// URL (http:// only to a loopback address, or with PUBLISH_WEBHOOK_ALLOW_HTTP=true)";
}
