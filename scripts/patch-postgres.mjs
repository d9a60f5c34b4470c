#!/usr/bin/env node
// Guards a crash in the postgres driver (3.4.x): a small write is deferred with setImmediate; if
// the connection closes before it runs, the socket is null and `socket.write` throws a TypeError
// outside any promise, which takes the whole process down (seen when Postgres restarts under
// load: the fault suite's Postgres-outage scenario). Reported upstream as porsager/postgres
// issues 1154 and 1208. The guard drops the deferred bytes of a connection that is already gone;
// its queries are failed by the driver's own close handling and retried by us.
// Runs on install (package.json "postinstall"); idempotent; a no-op once the driver fixes it.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "node_modules", "postgres");
const MARK = "/* kp-rotor: null-socket guard */";
const BEFORE = "  function nextWrite(fn) {\n    const x = socket.write(chunk, fn)";
const AFTER = `  function nextWrite(fn) {\n    ${MARK} if (!socket) { nextWriteTimer !== null && clearImmediate(nextWriteTimer); chunk = nextWriteTimer = null; return false }\n    const x = socket.write(chunk, fn)`;

let patched = 0;
for (const file of ["src/connection.js", "cjs/src/connection.js", "cf/src/connection.js"]) {
  const path = join(root, file);
  if (!existsSync(path)) continue;
  const source = readFileSync(path, "utf8");
  if (source.includes(MARK)) continue;
  if (!source.includes(BEFORE)) {
    console.warn(`patch-postgres: ${file} has changed shape; not patched (check whether the driver fixed it)`);
    continue;
  }
  writeFileSync(path, source.replace(BEFORE, AFTER));
  patched++;
}
if (patched > 0) console.log(`patch-postgres: guarded ${patched} file(s)`);
