#!/usr/bin/env node
// Guards two crashes of the postgres driver (3.4.x), both seen when Postgres restarts under load
// (the fault suite's Postgres-outage scenario), both taking the whole process down:
//  1. a small write is deferred with setImmediate; if the connection closes before it runs, the
//     socket is null and `socket.write` throws a TypeError outside any promise (reported upstream
//     as porsager/postgres issues 1154 and 1208). The guard drops the deferred bytes of a
//     connection that is already gone; its queries are failed by the driver's close handling.
//  2. on close the driver removes every listener of the old socket, including its 'error'
//     listener; a late ECONNRESET on that socket is then an unhandled 'error' event. The guard
//     leaves a no-op 'error' listener on the closed socket.
// Runs on install (package.json "postinstall"); idempotent; a no-op once the driver fixes it.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "node_modules", "postgres");
const MARK = "/* kp-rotor: null-socket guard */";
const PATCHES = [
  [
    "  function nextWrite(fn) {\n    const x = socket.write(chunk, fn)",
    `  function nextWrite(fn) {\n    ${MARK} if (!socket) { nextWriteTimer !== null && clearImmediate(nextWriteTimer); chunk = nextWriteTimer = null; return false }\n    const x = socket.write(chunk, fn)`,
  ],
  [
    "    socket.removeAllListeners()\n    socket = null",
    `    socket.removeAllListeners()\n    ${MARK} socket.on('error', () => {})\n    socket = null`,
  ],
];

let patched = 0;
for (const file of ["src/connection.js", "cjs/src/connection.js", "cf/src/connection.js"]) {
  const path = join(root, file);
  if (!existsSync(path)) continue;
  let source = readFileSync(path, "utf8");
  let changed = false;
  for (const [before, after] of PATCHES) {
    if (source.includes(after)) continue;
    if (!source.includes(before)) {
      console.warn(`patch-postgres: ${file} has changed shape; not patched (check whether the driver fixed it)`);
      continue;
    }
    source = source.replace(before, after);
    changed = true;
  }
  if (!changed) continue;
  writeFileSync(path, source);
  patched++;
}
if (patched > 0) console.log(`patch-postgres: guarded ${patched} file(s)`);
