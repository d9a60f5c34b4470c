import cliProgress from "cli-progress";

/** A progress bar on stderr (so stdout stays machine-readable); plain lines when not a TTY. */
export function progressBar(label: string) {
  if (!process.stderr.isTTY) {
    let lastPrinted = 0;
    return {
      update(done: number, total: number) {
        if (done - lastPrinted >= 10_000 || done === total) {
          lastPrinted = done;
          process.stderr.write(`${label}: ${done}/${total}\n`);
        }
      },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% {value}/{total} identities, eta {eta_formatted}`,
      stream: process.stderr,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done: number, total: number) {
      if (!started) {
        bar.start(total, done);
        started = true;
      } else bar.update(done, { total });
      bar.setTotal(total);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
