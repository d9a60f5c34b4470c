import { pino, type Logger } from "pino";

export type { Logger };

/** Paths that could carry a secret; pino replaces them before a line is written. */
const REDACT = [
  "req.headers.authorization",
  "headers.authorization",
  "token",
  "apiToken",
  "privateKey",
  "signaturePrivateKey",
];

/**
 * JSON lines to stdout (pretty when stdout is a terminal); components narrow it with
 * `.child({ component })`.
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  const options = { level, redact: { paths: REDACT, censor: "[redacted]" } };
  if (destination === undefined && process.stdout.isTTY) {
    return pino({ ...options, transport: { target: "pino-pretty", options: { colorize: true } } });
  }
  return pino(options, destination);
}
