/**
 * Test harness of the server: a real redis-server on a free port in a temp dir, `divbind-native serve` and
 * `worker` as child processes of the compiled CLI, a prepared private copy of the tiny model, and small HTTP/SSE
 * clients. Everything started here is stopped by stopAll() (call it in test.after.always).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { request as httpRequest } from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO_ROOT } from '../helpers/fixtures';
import { copyFixtureModel, removeDir } from '../pipeline/prepared-model';

export const CLI = path.join(REPO_ROOT, 'dist', 'lib', 'cli', 'index.js');
export const REDIS_SERVER = '/usr/bin/redis-server';

const children = new Set<ChildProcess>();
const dirs = new Set<string>();

export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  dirs.add(dir);
  return dir;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a value other than undefined; throws after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 300_000, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** A private copy of the tiny model with its UNet prepared (by the CLI, as a user would). */
export function preparedTinyModel(): string {
  const dir = copyFixtureModel('tiny-sd');
  dirs.add(dir);
  const r = spawnSync(process.execPath, [CLI, 'prepare', dir], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`prepare failed (${r.status}): ${r.stderr}`);
  return dir;
}

export interface Proc {
  child: ChildProcess;
  /** Everything written to stderr so far. */
  output(): string;
  /** Resolves with the exit code (or the signal name). */
  exited: Promise<number | string>;
  /** Resolves with the first match of `pattern` in stderr. */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  signal(sig: NodeJS.Signals): void;
}

export function startProcess(command: string, args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.add(child);
  let text = '';
  child.stdout?.on('data', (d: Buffer) => {
    text += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    text += d.toString();
  });
  const exited = new Promise<number | string>((resolve) => {
    child.on('exit', (code, sig) => {
      children.delete(child);
      resolve(code ?? sig ?? 'unknown');
    });
  });
  return {
    child,
    output: () => text,
    exited,
    signal: (sig) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    },
    waitForOutput: async (pattern, timeoutMs = 300_000) => {
      let done = false;
      void exited.then(() => {
        done = true;
      });
      return waitFor(
        `${pattern} in the output of ${path.basename(command)} ${args[1] ?? ''}`,
        () => {
          const m = pattern.exec(text);
          if (m) return m;
          if (done) throw new Error(`process exited before printing ${pattern}:\n${text}`);
          return undefined;
        },
        timeoutMs,
        100,
      );
    },
  };
}

/** `divbind-native serve …` on a free port; resolves when it listens, with its base URL. */
export async function startServe(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Proc & { url: string }> {
  const proc = startProcess(process.execPath, [CLI, 'serve', '--port', '0', ...args], env);
  const m = await proc.waitForOutput(/listening on (http:\/\/\S+)/);
  return { ...proc, url: m[1] };
}

/** `divbind-native worker …`; resolves when it is connected and its models are loaded. */
export async function startWorker(args: string[]): Promise<Proc> {
  const proc = startProcess(process.execPath, [CLI, 'worker', ...args]);
  await proc.waitForOutput(/worker: ready/);
  return proc;
}

export interface RedisServer {
  url: string;
  port: number;
  dir: string;
  proc: Proc;
  /** Stops it: SIGTERM (saves) or SIGKILL (a crash). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and directory (the AOF brings the data back). */
  restart(): Promise<void>;
}

/** redis-server on a free port in a temp dir; `appendonly` with fsync on every write when `aof`. */
export async function startRedis(options: { aof?: boolean } = {}): Promise<RedisServer> {
  const port = await freePort();
  const dir = tempDir('divbind-redis-');
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--dir',
    dir,
    '--save',
    '',
    '--logfile',
    path.join(dir, 'redis.log'),
    ...(options.aof ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
  ];
  const server: RedisServer = {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    proc: startProcess(REDIS_SERVER, args),
    async stop(signal = 'SIGTERM') {
      server.proc.signal(signal);
      await server.proc.exited;
    },
    async restart() {
      server.proc = startProcess(REDIS_SERVER, args);
      await waitForRedis(port);
    },
  };
  await waitForRedis(port);
  return server;
}

async function waitForRedis(port: number): Promise<void> {
  await waitFor(
    `redis-server on port ${port}`,
    () =>
      new Promise<true | undefined>((resolve) => {
        const socket = net.connect(port, '127.0.0.1');
        socket.once('connect', () => socket.write('PING\r\n'));
        socket.once('data', (d) => {
          socket.destroy();
          resolve(d.toString().startsWith('+PONG') ? true : undefined);
        });
        socket.once('error', () => resolve(undefined));
      }),
    60_000,
    100,
  );
}

/** Stops every child process started here that still runs: SIGTERM, then SIGKILL after 20 s. */
export async function stopProcesses(): Promise<void> {
  await Promise.all(
    [...children].map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    }),
  );
}

/** Stops every child process and removes the temp dirs (test.after.always). */
export async function stopAll(): Promise<void> {
  await stopProcesses();
  for (const dir of dirs) removeDir(dir);
  dirs.clear();
}

// ------------------------------------------------------------------------------------------------- HTTP

/** A parsed JSON answer. Left untyped on purpose: each test asserts the fields it reads. */
export type Json = any;

export interface Answer<T = Json> {
  status: number;
  headers: Headers;
  body: T;
}

/** A JSON request; the answer's body is parsed JSON (or text when it is not JSON). */
export async function http<T = Json>(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer<T>> {
  const res = await fetch(url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, headers: res.headers, body: parsed as T };
}

/**
 * Announces a JSON body of `bytes` bytes (Content-Length) and waits for the answer before sending any of it: a
 * server enforcing a size limit answers 413 at once. (Sending the body too races the server closing the
 * connection after it answered, which a client may see as a write error instead of the answer.)
 */
export function postDeclaredSize(url: string, bytes: number, headers: Record<string, string> = {}): Promise<{ status: number; body: Json }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': bytes, ...headers } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => {
        text += d.toString();
      });
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) });
      });
    });
    req.on('error', reject);
    req.flushHeaders();
  });
}

export async function getBytes(url: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string | null; bytes: Buffer }> {
  const res = await fetch(url, { headers });
  return { status: res.status, type: res.headers.get('content-type'), bytes: Buffer.from(await res.arrayBuffer()) };
}

export interface SseEvent {
  event: string;
  data: Json;
  /** ms since the stream opened. */
  at: number;
}

/** Reads a job's SSE stream until the server ends it; `onEvent` sees each event as it comes. */
export async function readEvents(url: string, onEvent: (e: SseEvent) => void = () => {}, headers: Record<string, string> = {}): Promise<SseEvent[]> {
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers } });
  if (res.status !== 200 || !res.body) throw new Error(`SSE ${url}: status ${res.status}`);
  const start = Date.now();
  const events: SseEvent[] = [];
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let cut = buffer.indexOf('\n\n'); cut >= 0; cut = buffer.indexOf('\n\n')) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (event === undefined || data === undefined) continue;
      const e = { event, data: JSON.parse(data), at: Date.now() - start };
      events.push(e);
      onEvent(e);
    }
  }
  return events;
}

/** Waits for a job to reach a final state (polling its status; 503 while Redis is away is retried). */
export async function finalState(base: string, id: string, headers: Record<string, string> = {}, timeoutMs = 600_000): Promise<Json> {
  return waitFor(
    `job ${id} to finish`,
    async () => {
      const r = await http('GET', `${base}/v1/generations/${id}`, undefined, headers).catch(() => null);
      if (r && r.status === 200 && ['succeeded', 'failed', 'cancelled'].includes(r.body.state)) return r.body;
      return undefined;
    },
    timeoutMs,
    500,
  );
}

/** The samples of a Prometheus text page: "name{labels}" → value. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    out.set(m[1], Number(m[2]));
  }
  return out;
}
