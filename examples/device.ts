/**
 * A device with custody "device", against a running kp-rotor (`npm start`): it keeps its keys,
 * listens for signed notifications, and answers each `device.rotate` by building a key package
 * with ts-mls and uploading it. It runs the whole loop once and exits:
 *
 *   register -> (rotate notification) -> upload #1 -> welcome -> (rotate) -> upload #2, which
 *   supersedes #1 -> after DELETION_GRACE, (delete notification naming #1's ref) -> done.
 *
 *   KP_ROTOR_URL=http://127.0.0.1:3000 API_TOKEN=... npx tsx examples/device.ts [identity-id]
 *
 * Run the service with short settings to watch it in seconds, e.g.
 * WELCOME_ROTATION_DELAY=2s DELETION_GRACE=10s.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import {
  buildKeyPackage,
  generateSignatureKeys,
  verifyNotification,
} from "../src/client/device.js";
import { createClient } from "../src/client/index.js";

const baseUrl = process.env.KP_ROTOR_URL ?? "http://127.0.0.1:3000";
const client = createClient({ baseUrl, token: process.env.API_TOKEN });
const id = process.argv[2] ?? `device-${Date.now().toString(36)}`;
const log = (line: string) => console.log(`${new Date().toISOString().slice(11, 23)}  ${line}`);

const signatureKeys = await generateSignatureKeys();
/** Private halves by ref: they never leave this process. */
const privateKeys = new Map<string, unknown>();
const refs: string[] = [];
let secret = "";
let rotations = 0;
const seen = new Set<string>();
let done: () => void = () => {};
const finished = new Promise<void>((resolve) => {
  done = resolve;
});

const server = createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => {
    body += chunk;
  });
  req.on("end", async () => {
    let message: ReturnType<typeof verifyNotification>;
    try {
      message = verifyNotification(secret, body, req.headers);
    } catch (err) {
      log(`refused a notification: ${(err as Error).message}`);
      res.statusCode = 401;
      res.end();
      return;
    }
    res.statusCode = 204;
    res.end();
    const webhookId = String(req.headers["webhook-id"]);
    if (seen.has(webhookId)) return; // at least once: deduplicate on webhook-id
    seen.add(webhookId);
    if (message.type === "device.rotate") {
      log(
        `<- device.rotate (signed, verified) deadline ${message.data.deadline}, current ${short(message.data.currentRef)}`,
      );
      await rotate();
    } else {
      log(
        `<- device.delete (signed, verified) ref ${short(message.data.ref)}: private keys forgotten`,
      );
      privateKeys.delete(message.data.ref);
      done();
    }
  });
});
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}/kp-rotor`;

async function rotate(): Promise<void> {
  const built = await buildKeyPackage({ identity: new TextEncoder().encode(id), signatureKeys });
  privateKeys.set(built.ref, built.privatePackage);
  const uploaded = await client.uploadKeyPackage(id, built.keyPackage);
  refs.push(uploaded.ref);
  rotations++;
  log(
    `-> PUT key-package: ${short(uploaded.ref)} is current (generation ${uploaded.generation}), next rotation ${uploaded.nextRotationAt}`,
  );
  const status = await client.status(id);
  log(`   status: ${status.keyPackages.map((k) => `${short(k.ref)} ${k.state}`).join(", ")}`);
  if (rotations === 1) {
    const welcomed = await client.welcome(id);
    log(`-> POST welcome: rotation pulled in to ${welcomed.nextRotationAt}`);
  }
}

const registered = await client.register(id, { custody: "device", notifyUrl: endpoint });
secret = registered.notificationSecret ?? "";
log(
  `-> PUT /v1/identities/${id} custody=device: ${registered.created ? "201" : "200"}, no key package yet, first rotation due ${registered.nextRotationAt}`,
);
log(`   notifications go to ${endpoint}, signed with this identity's own secret`);

const timeout = setTimeout(() => {
  log("no delete notification within 5 minutes; giving up");
  process.exit(1);
}, 300_000);
await finished;
clearTimeout(timeout);
const status = await client.status(id);
log(
  `done: ${rotations} uploads, ${refs.length} refs, now ${status.keyPackages.map((k) => `${short(k.ref)} ${k.state}`).join(", ")}; private keys held: ${privateKeys.size}`,
);
server.close();

function short(ref: string | null | undefined): string {
  return ref ? `${ref.slice(0, 12)}…` : "(none)";
}
