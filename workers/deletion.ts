// A worker process serving only the deletion queue.
import { createDeletionHandler } from "../src/runtime/handlers.js";
import { runWorkerProcess } from "../src/runtime/worker-process.js";

await runWorkerProcess({ deletion: createDeletionHandler });
