import { runWorkerProcess, type HandlerFactories } from "../src/worker-process.js";
import { createDeletionHandler } from "./deletion.js";
import { createRotationHandler } from "./rotation.js";

/** Both processors; `npm run worker` runs this, any number of times on any number of machines. */
export const ALL_HANDLERS: HandlerFactories = {
  rotation: createRotationHandler,
  deletion: createDeletionHandler,
};

if (import.meta.url === `file://${process.argv[1]}`) {
  await runWorkerProcess(ALL_HANDLERS);
}
