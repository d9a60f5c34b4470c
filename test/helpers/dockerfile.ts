/**
 * Reads a Dockerfile into stages and instructions, and replays a build without a Docker engine:
 * each stage is a directory standing for its WORKDIR, COPY copies exactly what it names (from the
 * build context, minus .dockerignore, or from an earlier stage's directory), RUN runs in that
 * directory with the stage's ENV. Only what this project's Dockerfile uses is supported; anything
 * else throws, so a new instruction cannot be skipped silently.
 */
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, posix, relative } from "node:path";

export interface Instruction {
  keyword: string;
  /** Flags such as --from=deps, by name. */
  flags: Record<string, string>;
  /** The arguments: the JSON array's items (exec form) or whitespace-separated words. */
  args: string[];
  /** The text after the keyword and its flags (shell form), continuation lines joined. */
  text: string;
  /** Exec form: a JSON array. */
  exec: boolean;
}

export interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Parses a Dockerfile: comments dropped, `\` continuations joined, one Stage per FROM. */
export function parseDockerfile(source: string): Stage[] {
  const lines: string[] = [];
  let pending = "";
  for (const raw of source.split("\n")) {
    if (pending === "" && /^\s*#/.test(raw)) continue;
    if (pending !== "" && /^\s*#/.test(raw)) continue;
    const line = raw.trimEnd();
    if (line.endsWith("\\")) {
      pending += `${line.slice(0, -1).trim()} `;
      continue;
    }
    const full = (pending + line.trim()).trim();
    pending = "";
    if (full !== "") lines.push(full);
  }
  const stages: Stage[] = [];
  for (const line of lines) {
    const instruction = parseInstruction(line);
    if (instruction.keyword === "FROM") {
      const [image, as, name] = instruction.args;
      if (image === undefined || (as !== undefined && as.toUpperCase() !== "AS")) {
        throw new Error(`cannot read ${line}`);
      }
      stages.push({ from: image, name, instructions: [] });
    } else {
      const stage = stages.at(-1);
      if (!stage) throw new Error(`${instruction.keyword} before FROM`);
      stage.instructions.push(instruction);
    }
  }
  return stages;
}

function parseInstruction(line: string): Instruction {
  const [, keyword = "", rest = ""] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
  let text = rest;
  const flags: Record<string, string> = {};
  for (;;) {
    const flag = /^--([a-z-]+)=(\S+)\s*/.exec(text);
    if (!flag) break;
    flags[flag[1] as string] = flag[2] as string;
    text = text.slice(flag[0].length);
  }
  const exec = text.startsWith("[");
  const args = exec ? (JSON.parse(text) as string[]) : text.split(/\s+/).filter(Boolean);
  return { keyword: keyword.toUpperCase(), flags, args, text, exec };
}

/** The last value an instruction gives in a stage (ENTRYPOINT, CMD, USER, HEALTHCHECK...). */
export const lastOf = (stage: Stage, keyword: string): Instruction | undefined =>
  stage.instructions.filter((i) => i.keyword === keyword).at(-1);

/** ENV instructions of a stage, in the `ENV KEY=value ...` form. */
export function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of stage.instructions.filter((x) => x.keyword === "ENV")) {
    for (const pair of i.args) {
      const eq = pair.indexOf("=");
      if (eq <= 0) throw new Error(`ENV ${i.text}: only KEY=value is supported`);
      env[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
  }
  return env;
}

/** A .dockerignore pattern as a test on a context-relative path (Go filepath.Match rules). */
function ignoreMatcher(contextDir: string): (path: string) => boolean {
  const file = join(contextDir, ".dockerignore");
  if (!existsSync(file)) return () => false;
  const patterns = readFileSync(file, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  if (patterns.some((p) => p.startsWith("!"))) throw new Error(".dockerignore: ! is not supported");
  const regexes = patterns.map((p) => {
    const body = posix
      .normalize(p.replace(/^\/+/, ""))
      .split("**")
      .map((part) =>
        part
          .replace(/[.+^${}()|[\]\\]/g, "\\$&")
          .replace(/\*/g, "[^/]*")
          .replace(/\?/g, "[^/]"),
      )
      .join(".*");
    // A pattern that names a directory excludes everything under it.
    return new RegExp(`^${body}(/.*)?$`);
  });
  return (path) => regexes.some((r) => r.test(path));
}

export interface Replay {
  /** Each stage's directory, by name and by index. */
  dirs: Map<string, string>;
  final: Stage;
  finalDir: string;
}

/**
 * Replays every stage under `root`. `runEnv` is the environment of RUN steps (the base image's
 * PATH with its node and npm); the stages' ENV goes on top. Each RUN's output is returned in
 * `log` order; a failing RUN throws with its output.
 */
export function replayBuild(
  stages: Stage[],
  contextDir: string,
  root: string,
  runEnv: NodeJS.ProcessEnv,
  log: (line: string) => void = () => {},
): Replay {
  const ignored = ignoreMatcher(contextDir);
  const dirs = new Map<string, string>();
  const workdirs = new Map<string, string>();
  stages.forEach((stage, index) => {
    const dir = join(root, stage.name ?? `stage-${index}`);
    mkdirSync(dir, { recursive: true });
    let workdir: string | undefined;
    const env: Record<string, string> = {};
    const at = (target: string) => {
      if (workdir === undefined) throw new Error(`${stage.name}: a path before WORKDIR`);
      if (target.startsWith("/") && !target.startsWith(`${workdir}/`) && target !== workdir) {
        throw new Error(`${stage.name}: ${target} is outside WORKDIR ${workdir}`);
      }
      return join(dir, target.startsWith("/") ? relative(workdir, target) : target);
    };
    for (const i of stage.instructions) {
      switch (i.keyword) {
        case "WORKDIR":
          if (workdir !== undefined) throw new Error("one WORKDIR per stage is supported");
          workdir = i.args[0];
          break;
        case "ENV":
          Object.assign(env, envOf({ ...stage, instructions: [i] }));
          break;
        case "COPY": {
          const sources = i.args.slice(0, -1);
          const dest = i.args.at(-1) as string;
          const intoDir = dest.endsWith("/") || sources.length > 1;
          const from = i.flags.from;
          const base = from === undefined ? contextDir : dirs.get(from);
          if (base === undefined) throw new Error(`COPY --from=${from}: no such stage`);
          for (const source of sources) {
            // An absolute source in another stage is under that stage's WORKDIR (its directory).
            const fromWorkdir = from === undefined ? undefined : workdirs.get(from);
            const inStage =
              fromWorkdir !== undefined && source.startsWith(`${fromWorkdir}/`)
                ? relative(fromWorkdir, source)
                : source;
            const path = join(base, inStage);
            if (!existsSync(path))
              throw new Error(`COPY ${source}: not found in ${from ?? "the context"}`);
            const target = intoDir ? join(at(dest), posix.basename(source)) : at(dest);
            mkdirSync(dirname(target), { recursive: true });
            cpSync(path, target, {
              recursive: true,
              verbatimSymlinks: true,
              filter: (src) => from !== undefined || !ignored(relative(contextDir, src)),
            });
            if (statSync(path).isDirectory()) log(`COPY ${source} -> ${relative(dir, target)}/`);
            else log(`COPY ${source} -> ${relative(dir, target)}`);
          }
          break;
        }
        case "RUN": {
          if (workdir === undefined) throw new Error("RUN before WORKDIR");
          log(`RUN ${i.text}`);
          const result = spawnSync("sh", ["-c", i.text], {
            cwd: dir,
            env: { ...runEnv, ...env },
            encoding: "utf8",
            maxBuffer: 64 * 1024 * 1024,
          });
          if (result.status !== 0) {
            throw new Error(
              `RUN ${i.text} exited ${result.status}:\n${result.stdout}${result.stderr}`,
            );
          }
          break;
        }
        case "USER":
        case "EXPOSE":
        case "HEALTHCHECK":
        case "ENTRYPOINT":
        case "CMD":
          break;
        default:
          throw new Error(`${i.keyword}: not supported by the replay`);
      }
    }
    dirs.set(stage.name ?? String(index), dir);
    if (workdir !== undefined) workdirs.set(stage.name ?? String(index), workdir);
  });
  const final = stages.at(-1) as Stage;
  return { dirs, final, finalDir: dirs.get(final.name ?? String(stages.length - 1)) as string };
}
