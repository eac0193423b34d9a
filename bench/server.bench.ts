/**
 * A bounded load benchmark of `divbind-native serve` on a model folder (default: the bundled model). Writes
 * bench/results/server.json with images/min and p50/p95 latency (submission → SSE `done`) for:
 *   direct API                          DivBindPipeline.generate in a loop, no server (the baseline)
 *   serve (embedded), 1 × T threads     the server's overhead against the direct API (target ≤ 5 %)
 *   serve --redis, 1 worker × 2 threads
 *   serve --redis, 2 workers × 1 thread ORT threads per worker compared at the same core count
 * Each server case is driven in a closed loop with as many jobs in flight as it has worker slots (so latency is
 * service time, not time spent waiting in the queue), after one warm-up job per worker. Every process it starts
 * (redis-server, API node, workers) is stopped at the end.
 *
 *   node dist/bench/server.bench.js [--model DIR] [--jobs 16] [--steps 50] [--mode tv_bind] [--threads 2] [--out DIR]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DivBindPipeline, type GenerateOptions, defaultModelDir } from '../lib/index';
import { http, readEvents, startRedis, startServe, startWorker, stopAll } from '../test/server/harness';

export interface ServerBenchOptions {
  modelDir?: string;
  /** Measured jobs per case (after the warm-up). */
  jobs?: number;
  steps?: number;
  mode?: GenerateOptions['mode'];
  /** Cores to use: threads of the single worker; the two-worker case uses threads / 2 each. */
  threads?: number;
  prompt?: string;
  out?: string;
  log?: (line: string) => void;
}

export interface ServerBenchRow {
  name: string;
  workers: number;
  threadsPerWorker: number;
  inFlight: number;
  jobs: number;
  imagesPerMinute: number;
  latencySeconds: { p50: number; p95: number; mean: number };
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function row(name: string, shape: Pick<ServerBenchRow, 'workers' | 'threadsPerWorker' | 'inFlight'>, latenciesMs: number[], elapsedMs: number): ServerBenchRow {
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  return {
    name,
    ...shape,
    jobs: sorted.length,
    imagesPerMinute: (sorted.length / elapsedMs) * 60_000,
    latencySeconds: {
      p50: percentile(sorted, 50) / 1000,
      p95: percentile(sorted, 95) / 1000,
      mean: sorted.reduce((a, b) => a + b, 0) / sorted.length / 1000,
    },
  };
}

/** Runs `count` jobs through `run`, `inFlight` at a time; latencies (ms) and the elapsed wall time. */
async function closedLoop(count: number, inFlight: number, run: (n: number) => Promise<void>): Promise<{ latencies: number[]; elapsedMs: number }> {
  const latencies: number[] = [];
  let next = 0;
  const start = performance.now();
  const lane = async () => {
    while (next < count) {
      const n = next++;
      const t0 = performance.now();
      await run(n);
      latencies.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  return { latencies, elapsedMs: performance.now() - start };
}

/** One job through the HTTP API: POST, then its SSE stream until `done`. */
async function serverJob(base: string, request: GenerateOptions): Promise<void> {
  const submitted = await http('POST', `${base}/v1/generations`, request);
  if (submitted.status !== 202) throw new Error(`submission refused: ${submitted.status} ${JSON.stringify(submitted.body)}`);
  const events = await readEvents(`${base}/v1/generations/${submitted.body.id}/events`);
  if (events.at(-1)?.event !== 'done') throw new Error(`job ${submitted.body.id} ended with ${JSON.stringify(events.at(-1))}`);
}

async function directCase(o: Required<Omit<ServerBenchOptions, 'out' | 'log'>>, request: (n: number) => GenerateOptions): Promise<ServerBenchRow> {
  const pipe = await DivBindPipeline.load(o.modelDir, { prepare: true, session: { intraOpNumThreads: o.threads } });
  try {
    await pipe.generate(request(-1));
    const { latencies, elapsedMs } = await closedLoop(o.jobs, 1, async (n) => {
      await pipe.generate(request(n));
    });
    return row('direct API', { workers: 1, threadsPerWorker: o.threads, inFlight: 1 }, latencies, elapsedMs);
  } finally {
    await pipe.release();
  }
}

async function serverCase(
  name: string,
  base: string,
  workers: number,
  threadsPerWorker: number,
  jobs: number,
  request: (n: number) => GenerateOptions,
): Promise<ServerBenchRow> {
  await Promise.all(Array.from({ length: workers }, (_, w) => serverJob(base, request(-1 - w))));
  const { latencies, elapsedMs } = await closedLoop(jobs, workers, (n) => serverJob(base, request(n)));
  return row(name, { workers, threadsPerWorker, inFlight: workers }, latencies, elapsedMs);
}

const SERVE_FLAGS = ['--rate-limit', '0', '--prepare'];

async function embeddedCase(o: Required<Omit<ServerBenchOptions, 'out' | 'log'>>, request: (n: number) => GenerateOptions): Promise<ServerBenchRow> {
  const serve = await startServe(['--model', o.modelDir, '--threads', String(o.threads), ...SERVE_FLAGS]);
  try {
    return await serverCase(`serve (embedded), 1 × ${o.threads} threads`, serve.url, 1, o.threads, o.jobs, request);
  } finally {
    serve.signal('SIGTERM');
    await serve.exited;
  }
}

async function redisCase(
  o: Required<Omit<ServerBenchOptions, 'out' | 'log'>>,
  workers: number,
  request: (n: number) => GenerateOptions,
): Promise<ServerBenchRow> {
  const threads = Math.max(1, Math.floor(o.threads / workers));
  const redis = await startRedis();
  const api = await startServe(['--redis', redis.url, '--no-worker', '--model', o.modelDir, ...SERVE_FLAGS]);
  const procs = await Promise.all(
    Array.from({ length: workers }, () => startWorker(['--redis', redis.url, '--model', o.modelDir, '--threads', String(threads), '--prepare'])),
  );
  try {
    return await serverCase(`serve --redis, ${workers} worker(s) × ${threads} thread(s)`, api.url, workers, threads, o.jobs, request);
  } finally {
    for (const p of [...procs, api, redis.proc]) p.signal('SIGTERM');
    await Promise.all([...procs, api, redis.proc].map((p) => p.exited));
  }
}

export async function runServerBench(
  options: ServerBenchOptions = {},
): Promise<{ rows: ServerBenchRow[]; meta: Record<string, unknown>; overhead: Record<string, unknown> }> {
  const log = options.log ?? ((line: string) => console.log(line));
  const o = {
    modelDir: path.resolve(options.modelDir ?? defaultModelDir()),
    jobs: options.jobs ?? 16,
    steps: options.steps ?? 50,
    mode: options.mode ?? 'tv_bind',
    threads: options.threads ?? Math.min(2, os.cpus().length),
    prompt: options.prompt ?? 'a red circle and a blue square',
  };
  // The same requests in every case: seed n for the n-th measured job, negative seeds for warm-ups.
  const request = (n: number): GenerateOptions => ({ prompt: o.prompt, mode: o.mode, steps: o.steps, seed: 1000 + n });
  const rows: ServerBenchRow[] = [];
  const report = (r: ServerBenchRow) => {
    rows.push(r);
    log(
      `${r.name.padEnd(44)} ${r.imagesPerMinute.toFixed(1).padStart(7)} images/min  p50 ${r.latencySeconds.p50.toFixed(2)} s  p95 ${r.latencySeconds.p95.toFixed(2)} s`,
    );
  };
  try {
    report(await directCase(o, request));
    report(await embeddedCase(o, request));
    report(await redisCase(o, 1, request));
    report(await redisCase(o, 2, request));
  } finally {
    await stopAll();
  }
  const [direct, embedded, redisOne] = rows;
  const percent = (server: ServerBenchRow) => ({
    latencyP50: (server.latencySeconds.p50 / direct.latencySeconds.p50 - 1) * 100,
    throughput: (1 - server.imagesPerMinute / direct.imagesPerMinute) * 100,
  });
  const overhead = {
    targetPercent: 5,
    embedded: { ...percent(embedded), withinTarget: percent(embedded).latencyP50 <= 5 },
    redisOneWorker: percent(redisOne),
  };
  const meta = {
    date: new Date().toISOString(),
    model: o.modelDir,
    jobs: o.jobs,
    steps: o.steps,
    mode: o.mode,
    prompt: o.prompt,
    threads: o.threads,
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    node: process.version,
  };
  const out = options.out ?? path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'server.json'), `${JSON.stringify({ meta, rows, overhead }, null, 2)}\n`);
  log(
    `server overhead against the direct API: p50 latency ${overhead.embedded.latencyP50.toFixed(1)} %, throughput ${overhead.embedded.throughput.toFixed(1)} % (target ≤ 5 %)`,
  );
  return { rows, meta, overhead };
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const get = (k: string) => {
    const i = args.indexOf(k);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const num = (k: string) => (get(k) === undefined ? undefined : Number(get(k)));
  runServerBench({
    modelDir: get('--model'),
    jobs: num('--jobs'),
    steps: num('--steps'),
    mode: get('--mode') as GenerateOptions['mode'],
    threads: num('--threads'),
    out: get('--out'),
  }).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
