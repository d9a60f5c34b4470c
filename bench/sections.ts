/**
 * The sections of BENCHMARKS.md that their own benchmarks write, each between two markers and
 * stored in bench/results/<name>.md, and kept when `npm run bench` rewrites the rest of the file
 * (bench/peers.ts appends every stored section, in the order below):
 * - ingest: `npx tsx bench/ingest.ts` (single-welcome ingest against pgbench, API_PROCESSES);
 * - scale: `npx tsx bench/scale.ts` (ten million identities, one Redis and a cluster);
 * - reconcile-loss: `npx tsx bench/reconcile-loss.ts` (reconcile after FLUSHALL, view skipped);
 * - simulation: `npm run simulate` (a year of a fleet).
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./lib.js";

const SECTIONS = {
  ingest: "npx tsx bench/ingest.ts",
  scale: "npx tsx bench/scale.ts",
  "reconcile-loss": "npx tsx bench/reconcile-loss.ts",
  simulation: "npm run simulate",
} as const;
export type SectionName = keyof typeof SECTIONS;

const begin = (name: SectionName) =>
  `<!-- ${name}: written by ${SECTIONS[name]}; do not edit by hand -->`;
const end = (name: SectionName) => `<!-- /${name} -->`;
const file = (name: SectionName) => join(ROOT, `bench/results/${name}.md`);

/** One section as stored by its benchmark's last run, between its markers; "" if none. */
export function storedSection(name: SectionName): string {
  if (!existsSync(file(name))) return "";
  return `\n${begin(name)}\n${readFileSync(file(name), "utf8").trimEnd()}\n${end(name)}\n`;
}

/** Every stored section, in order (what bench/peers.ts appends to the file it writes). */
export const storedSections = (): string =>
  (Object.keys(SECTIONS) as SectionName[]).map(storedSection).join("");

/** Stores `section` and puts it into BENCHMARKS.md in place of the previous one (or at the end). */
export function writeSection(name: SectionName, section: string): void {
  writeFileSync(file(name), section);
  const path = join(ROOT, "BENCHMARKS.md");
  const text = readFileSync(path, "utf8");
  const start = text.indexOf(begin(name));
  const stop = text.indexOf(end(name));
  const found = start >= 0 && stop > start;
  const before = found ? text.slice(0, start) : `${text.trimEnd()}\n`;
  const after = found ? text.slice(stop + end(name).length).replace(/^\n/, "") : "";
  writeFileSync(path, `${before.trimEnd()}\n${storedSection(name)}${after}`);
}
