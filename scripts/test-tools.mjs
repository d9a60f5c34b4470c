#!/usr/bin/env node
// The first step of `npm test`: the two programs the tests drive that npm cannot install.
//  - Debian's Chromium at /usr/bin/chromium, for the Bull Board browser test (playwright-core
//    drives it; no browser is ever downloaded);
//  - promtool, from Debian's prometheus package, for the alert-rule and dashboard-query tests.
// Whatever is missing is installed with apt-get, the same way on every machine, announced in one
// line; apt-get's own output goes to a log file that is shown only if it fails. Root runs
// apt-get itself, anyone else through `sudo -n`. Without apt-get it says what to install.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const CHROMIUM = "/usr/bin/chromium";
const onPath = (command) =>
  spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;

/** Debian package -> why the tests need it; only those whose program is missing. */
const missing = [
  !existsSync(CHROMIUM) && { pkg: "chromium", why: "Bull Board browser test" },
  !onPath("promtool") && { pkg: "prometheus", why: "promtool for the alert rules" },
].filter(Boolean);

if (missing.length === 0) process.exit(0);

const list = missing.map((m) => `${m.pkg} (${m.why})`).join(" and ");
if (!onPath("apt-get")) {
  console.error(
    `test tools: missing ${list}; install them (Debian/Ubuntu: apt-get install chromium prometheus) and run npm test again`,
  );
  process.exit(1);
}
const root = process.getuid?.() === 0;
if (!root && !onPath("sudo")) {
  console.error(
    `test tools: missing ${list}; run as root or install: apt-get install chromium prometheus`,
  );
  process.exit(1);
}

const log = join(mkdtempSync(join(tmpdir(), "kp-test-tools-")), "apt-get.log");
console.log(`test tools: installing ${list} with apt-get (log: ${log})`);
const fd = openSync(log, "a");
const apt = (args) => {
  const command = root ? "apt-get" : "sudo";
  const argv = root ? args : ["-n", "apt-get", ...args];
  const result = spawnSync(command, argv, {
    stdio: ["ignore", fd, fd],
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
  if (result.status !== 0) {
    process.stderr.write(readFileSync(log, "utf8").split("\n").slice(-30).join("\n"));
    console.error(`test tools: apt-get ${args.join(" ")} failed (log: ${log})`);
    process.exit(1);
  }
};
apt(["update", "-q"]);
// prometheus without its recommends: only promtool is needed, not exporters or a web UI.
for (const { pkg } of missing) {
  apt(["install", "-y", "-q", ...(pkg === "prometheus" ? ["--no-install-recommends"] : []), pkg]);
}
if (!existsSync(CHROMIUM) && missing.some((m) => m.pkg === "chromium")) {
  console.error(`test tools: chromium installed but ${CHROMIUM} is missing`);
  process.exit(1);
}
