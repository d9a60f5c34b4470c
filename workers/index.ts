// A worker process serving both queues: `npm run worker` runs the same, any number of times on
// any number of machines.
import { ALL_HANDLERS } from "../src/runtime/handlers.js";
import { runWorkerProcess } from "../src/runtime/worker-process.js";

await runWorkerProcess(ALL_HANDLERS);
