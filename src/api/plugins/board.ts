/**
 * Bull Board at /admin/queues. Isolated here: the one file of the API that touches the queues
 * (through Bull Board's BullMQ adapter); routes never do. Auth is in ./auth.ts.
 */
import { createBullBoard } from "@bull-board/api";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { FastifyAdapter } from "@bull-board/fastify";
import type { FastifyInstance } from "fastify";
import type { WakeupQueues } from "../../queue/wakeup-queues.js";
import { BOARD_PREFIX } from "./auth.js";

export interface BoardOptions {
  /** Every shard's queues, by shard number. */
  queues: WakeupQueues["shardQueues"];
  /** Show the queues, offer no action (retry, remove, promote, clean, pause). */
  readOnly: boolean;
}

/** Mounts the board; call it only when credentials protect BOARD_PREFIX (see registerAuth). */
export async function registerBoard(app: FastifyInstance, options: BoardOptions): Promise<void> {
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(BOARD_PREFIX);
  createBullBoard({
    // With several shards every queue pair is listed, named by its shard ("shard3-rotation");
    // one shard keeps the plain names.
    queues: options.queues.flatMap((queues, shard) =>
      Object.values(queues).map(
        (queue) =>
          new BullMQAdapter(queue, {
            readOnlyMode: options.readOnly,
            ...(options.queues.length > 1 ? { prefix: `shard${shard}-` } : {}),
          }),
      ),
    ),
    serverAdapter,
    options: { uiConfig: { boardTitle: "kp-rotor", hideDocsLink: true } },
  });
  // The board's page links a web font from Google: a third party would learn who opens the
  // board, when, and from where. The link goes; the CSP allows no other origin anyway.
  app.addHook("onSend", async (request, reply, payload) => {
    if (typeof payload !== "string" || !request.url.startsWith(BOARD_PREFIX)) return payload;
    if (!String(reply.getHeader("content-type") ?? "").startsWith("text/html")) return payload;
    return payload.replace(EXTERNAL_STYLESHEET, "");
  });
  await app.register(serverAdapter.registerPlugin(), { prefix: BOARD_PREFIX });
}

/** A `<link>` to a stylesheet on another origin (the board's is on fonts.googleapis.com). */
const EXTERNAL_STYLESHEET = /<link[^>]*href="https?:\/\/[^"]*"[^>]*>/g;
