import { describe, expect, it } from "vitest";
import type { PullInResult } from "../../src/services/identities.service.js";
import { createPullInBatcher, type PullInMany } from "../../src/services/pull-in-batcher.js";

/** A pullInMany over an in-memory table of deadlines, recording every batch it was given. */
function fakeStore(known: string[], now = 1_000) {
  const deadlines = new Map(known.map((id) => [id, now + 30_000]));
  const batches: { ids: string[]; delayMs: number }[] = [];
  let failNext = false;
  const pullInMany: PullInMany = async (ids, delayMs) => {
    batches.push({ ids: [...ids], delayMs });
    await new Promise((resolve) => setImmediate(resolve));
    if (failNext) {
      failNext = false;
      throw new Error("connection lost");
    }
    const results: PullInResult[] = [];
    const notFound: string[] = [];
    for (const id of new Set(ids)) {
      const current = deadlines.get(id);
      if (current === undefined) {
        notFound.push(id);
        continue;
      }
      const candidate = now + delayMs;
      const changed = candidate < current;
      if (changed) deadlines.set(id, candidate);
      results.push({ identityId: id, rotationDeadline: Math.min(candidate, current), changed });
    }
    return { results, notFound };
  };
  return { pullInMany, batches, failOnce: () => (failNext = true) };
}

describe("pull-in batcher (group commit of single welcomes)", () => {
  it("commits a lone request at once, and groups the ones that arrive while it commits", async () => {
    const ids = Array.from({ length: 50 }, (_, i) => `id-${i}`);
    const store = fakeStore(ids);
    const batcher = createPullInBatcher(store.pullInMany, { concurrency: 1 });
    const answers = await Promise.all(ids.map((id) => batcher.pullIn(id, 5_000)));
    expect(answers.map((a) => a.identityId)).toEqual(ids);
    expect(answers.every((a) => a.changed && a.rotationDeadline === 6_000)).toBe(true);
    // The first request went alone; the 49 that queued behind it went as one batch.
    expect(store.batches.map((b) => b.ids.length)).toEqual([1, 49]);
  });

  it("splits at the batch limit and never mixes delays in one batch", async () => {
    const ids = Array.from({ length: 10 }, (_, i) => `id-${i}`);
    const store = fakeStore(ids);
    const batcher = createPullInBatcher(store.pullInMany, { maxBatch: 4, concurrency: 1 });
    await Promise.all([
      ...ids.map((id) => batcher.pullIn(id, 5_000)),
      batcher.pullIn("id-0", 0),
      batcher.pullIn("id-1", 0),
    ]);
    for (const batch of store.batches) expect(batch.ids.length).toBeLessThanOrEqual(4);
    const byDelay = (d: number) => store.batches.filter((b) => b.delayMs === d);
    expect(
      byDelay(5_000)
        .flatMap((b) => b.ids)
        .sort(),
    ).toEqual([...ids].sort());
    expect(byDelay(0).flatMap((b) => b.ids)).toEqual(["id-0", "id-1"]);
  });

  it("reports a deadline as moved to the first of two requests for one identity only", async () => {
    const store = fakeStore(["alice", "bob"]);
    const batcher = createPullInBatcher(store.pullInMany, { concurrency: 1 });
    const [, first, second] = await Promise.all([
      batcher.pullIn("bob", 5_000),
      batcher.pullIn("alice", 5_000),
      batcher.pullIn("alice", 5_000),
    ]);
    expect(store.batches.map((b) => b.ids)).toEqual([["bob"], ["alice", "alice"]]);
    expect(first).toMatchObject({ identityId: "alice", changed: true });
    expect(second).toMatchObject({ identityId: "alice", changed: false });
    expect(second?.rotationDeadline).toBe(first?.rotationDeadline);
  });

  it("commits at most `concurrency` batches at once, and groups the rest behind them", async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `id-${i}`);
    const store = fakeStore(ids);
    let open = 0;
    let mostOpen = 0;
    const counted: PullInMany = async (batch, delayMs) => {
      open++;
      mostOpen = Math.max(mostOpen, open);
      try {
        return await store.pullInMany(batch, delayMs);
      } finally {
        open--;
      }
    };
    const batcher = createPullInBatcher(counted, { concurrency: 3 });
    const answers = await Promise.all(ids.map((id) => batcher.pullIn(id, 5_000)));
    expect(answers.every((a) => a.changed)).toBe(true);
    expect(mostOpen).toBe(3);
    // Three went alone, at once; the 27 queued behind them went together.
    expect(store.batches.map((b) => b.ids.length)).toEqual([1, 1, 1, 27]);
  });

  it("rejects unknown identities alone and a failed batch as a whole, then carries on", async () => {
    const store = fakeStore(["alice", "bob", "carol"]);
    const batcher = createPullInBatcher(store.pullInMany, { concurrency: 1 });
    await expect(batcher.pullIn("nobody", 5_000)).rejects.toThrow(/"nobody" is not registered/);
    await expect(batcher.pullIn("bad id!", 5_000)).rejects.toThrow(/may contain only/);
    expect(store.batches.flatMap((b) => b.ids)).not.toContain("bad id!");

    store.failOnce();
    const outcomes = await Promise.allSettled([
      batcher.pullIn("alice", 5_000),
      batcher.pullIn("bob", 5_000),
      batcher.pullIn("carol", 5_000),
    ]);
    // "alice" went alone and failed; bob and carol queued behind it and committed together.
    expect(outcomes.map((o) => o.status)).toEqual(["rejected", "fulfilled", "fulfilled"]);
    expect(store.batches.at(-1)?.ids).toEqual(["bob", "carol"]);
    const retry = await batcher.pullIn("alice", 5_000);
    expect(retry.changed).toBe(true);
  });
});
