import { settleAll } from "../settle.js";
import type { ArmAction } from "./deadlines.js";
import type { ArmItem } from "./ports.js";

/**
 * Wakeups.armMany when most jobs are probably missing (ArmManyOptions.expectMissing), over two
 * steps of an adapter: `addAll` sends every item with a wanted time to the arm script as an add,
 * which is planArm's answer for a missing job, and returns the script's code per item; the script
 * refuses the add of a job that exists (1, or 3 when a newer arm wrote it), and only those items,
 * with the ones that want no job (only a view tells a job to remove), go to `armViewing`, the
 * adapter's view-then-plan armMany. Both halves settle before this returns or throws: the
 * caller's row locks must outlive every Redis change made for them. The production adapter
 * (src/queue/shard-armer.ts) and the model's (test/model/memory-wakeups.ts) both run this.
 */
export async function armExpectingMissing(
  items: readonly ArmItem[],
  steps: {
    addAll(adds: readonly { identityId: string; fireAt: number }[]): Promise<number[]>;
    armViewing(items: readonly ArmItem[]): Promise<ArmAction[]>;
  },
): Promise<ArmAction[]> {
  const actions: ArmAction[] = items.map(() => ({ kind: "none" }));
  const adds: { identityId: string; fireAt: number; index: number }[] = [];
  const unwanted: number[] = [];
  items.forEach((item, index) => {
    if (item.desired === null) unwanted.push(index);
    else adds.push({ identityId: item.identityId, fireAt: item.desired, index });
  });
  const planned = async (indexes: readonly number[]) => {
    const done = await steps.armViewing(indexes.map((i) => items[i] as ArmItem));
    indexes.forEach((index, k) => {
      actions[index] = done[k] as ArmAction;
    });
  };
  await settleAll([
    planned(unwanted),
    steps.addAll(adds).then((results) => {
      adds.forEach((a, i) => {
        if (results[i] === 0) actions[a.index] = { kind: "add", fireAt: a.fireAt };
      });
      // 1: the job exists; 3: its last write is newer than this fence. Both are planned the
      // usual way: a finished job is replaced whatever its fence, as the viewing path does.
      return planned(adds.flatMap((a, i) => (results[i] === 0 ? [] : [a.index])));
    }),
  ]);
  return actions;
}
