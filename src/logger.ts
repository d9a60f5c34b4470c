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

/** JSON lines to stdout; components narrow it with `.child({ component })`. */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino({ level, redact: { paths: REDACT, censor: "[redacted]" } }, destination);
}
