/**
 * A typed client of the kp-rotor API for message ingest, on the platform's fetch (Node 20+,
 * browsers, Deno, Bun). Its types come from the API's contract (src/contract/api.ts) as type-only
 * imports, so at run time it needs nothing of the service.
 *
 *   const rotor = createClient({ baseUrl: "http://kp-rotor:3000", token: process.env.KP_ROTOR_TOKEN });
 *   await rotor.register("alice");
 *   await rotor.welcomeBatch(["alice", "bob"]);
 *
 * Every failure is a KpRotorClientError with the HTTP status and the server's `{error, message}`;
 * `retryable` tells whether the same call may simply be repeated (the API's writes are
 * idempotent, and a 503 means nothing was acknowledged).
 */

import type {
  ApiErrorCode as ServerErrorCode,
  IdentityStatus,
  KeyPackageStatus,
  PulledIn,
  Registered,
  Uploaded,
  WakeupView,
  WelcomeBatchResult,
} from "../contract/api.js";

export type {
  IdentityStatus,
  KeyPackageStatus,
  PulledIn,
  Registered,
  Uploaded,
  WakeupView,
  WelcomeBatchResult,
};

/** Options of a registration; none are needed for custody "service". */
export interface RegisterOptions {
  custody?: "service" | "device";
  /** Custody device (required): the device's notification endpoint. */
  notifyUrl?: string;
  /** Custody device: the signature public key every upload must carry (base64). */
  signaturePublicKey?: string;
}

/**
 * Every code the API answers with (src/contract/api.ts, API_ERRORS; a refused upload's code
 * names the check, KP_*), and the client's own for a call that got no answer (`NETWORK`,
 * `TIMEOUT`) or an answer that was not the API's (`HTTP_<status>`).
 */
export type ApiErrorCode = ServerErrorCode | "NETWORK" | "TIMEOUT" | `HTTP_${number}`;

/** A call that did not succeed: an HTTP error answer, or no answer at all (status 0). */
export class KpRotorClientError extends Error {
  constructor(
    /** HTTP status; 0 when the request never got an answer (network error, timeout). */
    readonly status: number,
    /** The server's error code, `NETWORK` or `TIMEOUT` when there was no answer. */
    readonly error: ApiErrorCode,
    message: string,
    /** Seconds the server asked to wait (Retry-After on a 503). */
    readonly retryAfter?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "KpRotorClientError";
  }

  /** Repeating the same call may succeed: the service or the network was unavailable. */
  get retryable(): boolean {
    return this.status === 0 || this.status === 503 || this.status === 502 || this.status === 504;
  }
}

export interface ClientOptions {
  /** Where the API is, e.g. http://kp-rotor:3000 (a path prefix is kept). */
  baseUrl: string | URL;
  /** The API_TOKEN, if the service has one. */
  token?: string | undefined;
  /** Per-request timeout; default 10 s. */
  timeoutMs?: number;
  /** Another fetch (tests, proxies); default the global one. */
  fetch?: typeof fetch;
}

export interface KpRotorClient {
  /** Registers an identity (idempotent); `{ custody: "device", notifyUrl }` for a device. */
  register(identityId: string, options?: RegisterOptions): Promise<Registered>;
  /** Custody device: uploads a new key package (a TLS-encoded MLSMessage). 422: refused. */
  uploadKeyPackage(identityId: string, keyPackage: Uint8Array): Promise<Uploaded>;
  /** A welcome consumed the identity's key package: rotate within the welcome delay. */
  welcome(identityId: string): Promise<PulledIn>;
  /** Welcomes for up to 1,000 identities in one transaction; unknown ids come back apart. */
  welcomeBatch(identityIds: readonly string[]): Promise<WelcomeBatchResult>;
  /** Rotate as soon as a worker is free. */
  rotate(identityId: string): Promise<PulledIn>;
  /** Deadlines, key packages and wake-ups. */
  status(identityId: string): Promise<IdentityStatus>;
  /** Deregisters: key material and wake-ups gone. */
  deregister(identityId: string): Promise<void>;
}

export function createClient(options: ClientOptions): KpRotorClient {
  const base = String(options.baseUrl).replace(/\/+$/, "");
  const doFetch = options.fetch ?? fetch;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const identity = (id: string) => `/v1/identities/${encodeURIComponent(id)}`;

  async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
    const binary = body instanceof Uint8Array;
    if (body !== undefined) headers["content-type"] = binary ? "message/mls" : "application/json";
    let response: Response;
    try {
      response = await doFetch(`${base}${path}`, {
        method,
        headers,
        body:
          body === undefined
            ? null
            : binary
              ? new Blob([body as Uint8Array<ArrayBuffer>])
              : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const timedOut = err instanceof Error && err.name === "TimeoutError";
      throw new KpRotorClientError(
        0,
        timedOut ? "TIMEOUT" : "NETWORK",
        timedOut
          ? `${method} ${path}: no answer within ${timeoutMs} ms`
          : `${method} ${path}: ${err instanceof Error ? err.message : String(err)}`,
        undefined,
        { cause: err },
      );
    }
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    const parsed = parseJson(text);
    if (response.ok) return parsed as T;
    const problem = isProblem(parsed) ? parsed : undefined;
    const retryAfter = Number(response.headers.get("retry-after") ?? Number.NaN);
    throw new KpRotorClientError(
      response.status,
      problem?.error ?? (`HTTP_${response.status}` as const),
      problem?.message ?? `${method} ${path}: HTTP ${response.status}`,
      Number.isFinite(retryAfter) ? retryAfter : undefined,
    );
  }

  return {
    register: (id, registerOptions) =>
      call("PUT", identity(id), registerOptions === undefined ? undefined : registerOptions),
    uploadKeyPackage: (id, keyPackage) => call("PUT", `${identity(id)}/key-package`, keyPackage),
    welcome: (id) => call("POST", `${identity(id)}/welcome`),
    welcomeBatch: (ids) => call("POST", "/v1/welcomes", { identityIds: ids }),
    rotate: (id) => call("POST", `${identity(id)}/rotate`),
    status: (id) => call("GET", identity(id)),
    deregister: (id) => call("DELETE", identity(id)),
  };
}

function parseJson(text: string): unknown {
  try {
    return text === "" ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isProblem(value: unknown): value is { error: ServerErrorCode; message: string } {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { error?: unknown }).error === "string" &&
    typeof (value as { message?: unknown }).message === "string"
  );
}
