/**
 * The simulation's section of BENCHMARKS.md: written by `npm run simulate` between two markers,
 * and kept when `npm run bench` rewrites the rest of the file (bench/peers.ts appends it from
 * bench/results/simulation.md).
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../lib.js";

const BEGIN = "<!-- simulation: written by npm run simulate; do not edit by hand -->";
const END = "<!-- /simulation -->";
const SECTION_FILE = join(ROOT, "bench/results/simulation.md");

/** The section as stored by the last `npm run simulate`, between its markers; "" if none. */
export function simulationSection(): string {
  if (!existsSync(SECTION_FILE)) return "";
  return `\n${BEGIN}\n${readFileSync(SECTION_FILE, "utf8").trimEnd()}\n${END}\n`;
}

/** Stores `section` and puts it into BENCHMARKS.md in place of the previous one (or at the end). */
export function writeSimulationSection(section: string): void {
  writeFileSync(SECTION_FILE, section);
  const path = join(ROOT, "BENCHMARKS.md");
  const text = readFileSync(path, "utf8");
  const start = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  const before = start >= 0 && end > start ? text.slice(0, start) : `${text.trimEnd()}\n`;
  const after = start >= 0 && end > start ? text.slice(end + END.length).replace(/^\n/, "") : "";
  writeFileSync(path, `${before.trimEnd()}\n${simulationSection()}${after}`);
}
