/** Runs one simulation in a worker thread (bench/simulate.ts runs the jitter settings side by side). */
import { parentPort, workerData } from "node:worker_threads";
import { type SimOptions, simulate } from "./engine.js";

const options = workerData as Omit<SimOptions, "onDay">;
const result = simulate({
  ...options,
  onDay: (day) => parentPort?.postMessage({ kind: "day", day }),
});
parentPort?.postMessage({ kind: "done", result });
