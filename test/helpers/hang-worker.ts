/**
 * A real worker process whose key generation never returns once started, so the parent test can
 * SIGKILL it in the middle of a rotation (inside the rotation's transaction, job active).
 * It prints "generating <identityId>" when it gets there.
 */
import { loadConfig } from "../../src/config.js";
import { createContext } from "../../src/context.js";
import { createLogger } from "../../src/logger.js";
import { startWorkerRuntime } from "../../src/runtime/worker-process.js";
import { ALL_HANDLERS } from "../../src/runtime/handlers.js";

const config = loadConfig();
const ctx = await createContext(config, createLogger(config.logLevel));
ctx.rotor.keys = {
  ...ctx.rotor.keys,
  generate: async (input) => {
    process.stdout.write(`generating ${new TextDecoder().decode(input.identity)}\n`);
    return new Promise(() => {});
  },
};
startWorkerRuntime(ctx, ALL_HANDLERS);
process.stdout.write("ready\n");
