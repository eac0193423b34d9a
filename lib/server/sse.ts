/**
 * Server-Sent Events of one job: the current state first (queued with its position, running with the last step,
 * or the final events of a finished job), then live events, closing after done, failed or cancelled. A comment
 * line every 15 s keeps proxies from closing an idle stream. Open streams are ended when the server closes.
 */
import type { FastifyReply } from 'fastify';
import { type JobEvent, type JobStatus, finalEvents } from './jobs';
import type { JobQueue } from './queue';

const KEEPALIVE_MS = 15_000;

/** The SSE `data` of an event (event name = its type). */
export type EventPayload = (event: JobEvent) => Record<string, unknown>;

export class EventStreams {
  private readonly open = new Set<() => void>();

  /** Streams job `id`'s events to the client; `status` is the job's state when the request came. */
  stream(reply: FastifyReply, queue: JobQueue, status: JobStatus, payload: EventPayload): void {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      clearInterval(keepalive);
      unsubscribe();
      this.open.delete(end);
      res.end();
    };
    const send = (event: JobEvent) => {
      if (ended) return;
      res.write(`event: ${event.type}\ndata: ${JSON.stringify(payload(event))}\n\n`);
      if (event.type === 'done' || event.type === 'failed' || event.type === 'cancelled') end();
    };
    // Subscribed before the snapshot is sent, so nothing between the two is lost; `ended` drops a second ending.
    const unsubscribe = queue.subscribe(status.id, send);
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), KEEPALIVE_MS);
    this.open.add(end);
    // The response closes when the client goes away (the request's own 'close' comes as soon as its body is read).
    res.on('close', end);
    for (const event of snapshot(status)) send(event);
  }

  /** Registers another long request to end on shutdown (a txt2img waiting for its job); returns the release. */
  track(end: () => void): () => void {
    this.open.add(end);
    return () => this.open.delete(end);
  }

  /** Ends every open stream and long request (server shutdown). */
  closeAll(): void {
    for (const end of [...this.open]) end();
  }
}

function snapshot(status: JobStatus): JobEvent[] {
  if (status.record) return finalEvents(status.record);
  if (status.state === 'queued') return [{ type: 'queued', ...(status.position !== undefined ? { position: status.position } : {}) }];
  if (status.state === 'failed') return [{ type: 'failed', error: status.error ?? { code: 'FAILED', message: 'failed' } }];
  if (status.state === 'running') return [{ type: 'running' }, ...(status.progress ? [{ type: 'step' as const, progress: status.progress }] : [])];
  return [];
}
