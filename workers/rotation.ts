// A worker process serving only the rotation queue (scale it apart from deletions).
import { createRotationHandler } from "../src/runtime/handlers.js";
import { runWorkerProcess } from "../src/runtime/worker-process.js";

await runWorkerProcess({ rotation: createRotationHandler });
