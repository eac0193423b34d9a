/**
 * The job store in Redis, so that every API node serves every result. Keys (all expire after the result TTL):
 *   divbind:result:<id>       the final record, JSON
 *   divbind:image:<id>:<n>    PNG n
 * and, kept: divbind:finished (hash: jobs per final state), divbind:steps (hash: step latency buckets, sum, count).
 * A final record, its PNGs and its count are written by one Lua script, only when no record exists yet: a job
 * run twice (a worker presumed dead that finishes after all) is delivered once.
 */
import type { Redis } from 'ioredis';
import { FINAL_STATES, type JobRecord } from './jobs';
import { STEP_BUCKETS, bucketOf, emptyHistogram } from './metrics';
import { zeroFinished, type JobStore, type StoreStats } from './store';

export const KEY = {
  result: (id: string) => `divbind:result:${id}`,
  image: (id: string, n: number) => `divbind:image:${id}:${n}`,
  finished: 'divbind:finished',
  steps: 'divbind:steps',
} as const;

// KEYS: record, finished-counter hash, image 0..n-1. ARGV: record JSON, TTL s, final state, PNG 0..n-1.
const FINISH_ONCE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 1`;

type FinishOnce = (numKeys: number, ...args: Array<string | Buffer | number>) => Promise<number>;

export class RedisStore implements JobStore {
  private readonly finishOnce: FinishOnce;

  constructor(
    private readonly redis: Redis,
    private readonly ttlSeconds: number,
  ) {
    redis.defineCommand('divbindFinishOnce', { lua: FINISH_ONCE });
    this.finishOnce = (redis as unknown as { divbindFinishOnce: FinishOnce }).divbindFinishOnce.bind(redis);
  }

  async finish(record: JobRecord, images: Buffer[]): Promise<boolean> {
    const keys = [KEY.result(record.id), KEY.finished, ...images.map((_, n) => KEY.image(record.id, n))];
    const written = await this.finishOnce(keys.length, ...keys, JSON.stringify(record), this.ttlSeconds, record.state, ...images);
    return written === 1;
  }

  async record(id: string): Promise<JobRecord | null> {
    const text = await this.redis.get(KEY.result(id));
    return text === null ? null : (JSON.parse(text) as JobRecord);
  }

  /** Final records of several jobs at once (null where none). */
  async records(ids: string[]): Promise<Array<JobRecord | null>> {
    if (ids.length === 0) return [];
    const texts = await this.redis.mget(...ids.map(KEY.result));
    return texts.map((t) => (t === null ? null : (JSON.parse(t) as JobRecord)));
  }

  async image(id: string, n: number): Promise<Buffer | null> {
    return this.redis.getBuffer(KEY.image(id, n));
  }

  async observeStep(seconds: number): Promise<void> {
    await this.redis
      .multi()
      .hincrby(KEY.steps, `b${bucketOf(seconds)}`, 1)
      .hincrbyfloat(KEY.steps, 'sum', seconds)
      .hincrby(KEY.steps, 'count', 1)
      .exec();
  }

  async stats(): Promise<StoreStats> {
    const [finished, steps] = await Promise.all([this.redis.hgetall(KEY.finished), this.redis.hgetall(KEY.steps)]);
    const out: StoreStats = { finished: zeroFinished(), steps: emptyHistogram() };
    for (const s of FINAL_STATES) out.finished[s] = Number(finished[s] ?? 0);
    for (let i = 0; i <= STEP_BUCKETS.length; i++) out.steps.buckets[i] = Number(steps[`b${i}`] ?? 0);
    out.steps.sum = Number(steps.sum ?? 0);
    out.steps.count = Number(steps.count ?? 0);
    return out;
  }
}
