/**
 * Load through the real HTTP API: registrations, then a steady stream of single and batch
 * welcomes. Every request's answer is recorded: a 2xx with the deadline it returned for each
 * identity (an acknowledged welcome), or the 5xx / connection error it got.
 */
import { sleep } from "./harness.js";

export interface WelcomeAck {
  identityId: string;
  /** nextRotationAt from the answer, epoch ms. */
  deadline: number;
  pulledIn: boolean;
  sentAt: number;
  answeredAt: number;
}

export interface RequestRecord {
  kind: "welcome" | "batch";
  size: number;
  sentAt: number;
  answeredAt: number;
  /** HTTP status, or 0 for a connection error / client timeout. */
  status: number;
  error?: string;
}

export interface LoadStats {
  requests: number;
  accepted: number;
  refused5xx: number;
  status500: number;
  connectionErrors: number;
  other: number;
  welcomesAcked: number;
}

const JSON_HEADERS = { "content-type": "application/json" };

export function pick<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)] as T;
}

export function sample<T>(items: readonly T[], n: number): T[] {
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [copy[i], copy[j]] = [copy[j] as T, copy[i] as T];
  }
  return copy.slice(0, n);
}

export class Recorder {
  readonly requests: RequestRecord[] = [];
  readonly acks: WelcomeAck[] = [];

  constructor(private readonly baseUrl: () => string) {}

  /** POST /v1/identities/:id/welcome */
  async welcome(id: string, timeoutMs = 15_000): Promise<RequestRecord> {
    return this.send("welcome", [id], `/v1/identities/${id}/welcome`, undefined, timeoutMs);
  }

  /** POST /v1/welcomes */
  async batch(ids: string[], timeoutMs = 15_000): Promise<RequestRecord> {
    return this.send("batch", ids, "/v1/welcomes", { identityIds: ids }, timeoutMs);
  }

  private async send(
    kind: RequestRecord["kind"],
    ids: string[],
    path: string,
    body: unknown,
    timeoutMs: number,
  ): Promise<RequestRecord> {
    const sentAt = Date.now();
    const record: RequestRecord = { kind, size: ids.length, sentAt, answeredAt: 0, status: 0 };
    try {
      const res = await fetch(`${this.baseUrl()}${path}`, {
        method: "POST",
        headers: body === undefined ? {} : JSON_HEADERS,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
      const text = await res.text();
      record.answeredAt = Date.now();
      record.status = res.status;
      if (res.status >= 200 && res.status < 300) {
        const json = JSON.parse(text) as
          | { identityId: string; nextRotationAt: string; pulledIn: boolean }
          | { accepted: { identityId: string; nextRotationAt: string; pulledIn: boolean }[] };
        const accepted = "accepted" in json ? json.accepted : [json];
        for (const a of accepted) {
          this.acks.push({
            identityId: a.identityId,
            deadline: Date.parse(a.nextRotationAt),
            pulledIn: a.pulledIn,
            sentAt,
            answeredAt: record.answeredAt,
          });
        }
      } else {
        record.error = text.slice(0, 200);
      }
    } catch (err) {
      record.answeredAt = Date.now();
      record.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    }
    this.requests.push(record);
    return record;
  }

  stats(): LoadStats {
    const r = this.requests;
    return {
      requests: r.length,
      accepted: r.filter((x) => x.status >= 200 && x.status < 300).length,
      refused5xx: r.filter((x) => x.status >= 500).length,
      status500: r.filter((x) => x.status === 500).length,
      connectionErrors: r.filter((x) => x.status === 0).length,
      other: r.filter((x) => x.status >= 300 && x.status < 500).length,
      welcomesAcked: this.acks.length,
    };
  }
}

export interface SteadyLoadOptions {
  /** Concurrent request loops. */
  loops: number;
  /** Pause between two requests of one loop. */
  pauseMs: number;
  /** Share of requests that are batches. */
  batchShare: number;
  batchMax: number;
}

/** A steady stream of welcomes and batch welcomes until `stop()`. */
export class SteadyLoad {
  private running = true;
  private readonly loops: Promise<void>[];

  constructor(
    readonly recorder: Recorder,
    ids: readonly string[],
    options: SteadyLoadOptions,
  ) {
    this.loops = Array.from({ length: options.loops }, async () => {
      while (this.running) {
        if (Math.random() < options.batchShare) {
          const n = 2 + Math.floor(Math.random() * (options.batchMax - 1));
          await recorder.batch(sample(ids, n));
        } else {
          await recorder.welcome(pick(ids));
        }
        await sleep(options.pauseMs * (0.5 + Math.random()));
      }
    });
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }
}

/** Registers identities through PUT /v1/identities/:id, retrying until each answers 2xx. */
export async function registerAll(
  baseUrl: string,
  ids: readonly string[],
  concurrency = 4,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < ids.length) {
        const id = ids[next++] as string;
        for (let attempt = 0; ; attempt++) {
          try {
            const res = await fetch(`${baseUrl}/v1/identities/${id}`, {
              method: "PUT",
              signal: AbortSignal.timeout(30_000),
            });
            const body = await res.text();
            if (res.ok && !body.includes("publishError")) break;
            if (attempt > 5) throw new Error(`register ${id}: ${res.status} ${body}`);
          } catch (err) {
            if (attempt > 5) throw err;
          }
          await sleep(500);
        }
      }
    }),
  );
}
