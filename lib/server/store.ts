/**
 * Where finished jobs live: the final record (state, error, JSON log) and the PNGs, written once per job, and the
 * counters /metrics reports. The embedded server keeps them in this process's memory (MemoryStore: bounded in
 * bytes and age, gone on restart); with Redis every API node reads them from Redis (redis-store.ts).
 */
import { FINAL_STATES, type FinalState, type JobRecord } from './jobs';
import { emptyHistogram, observe, type StepHistogram } from './metrics';

export interface StoreStats {
  finished: Record<FinalState, number>;
  steps: StepHistogram;
}

export interface JobStore {
  /**
   * Writes a job's final record and PNGs unless the job has a final record already: true when this call wrote
   * them. A job that runs twice (a worker presumed dead finishes after all) is delivered once.
   */
  finish(record: JobRecord, images: Buffer[]): Promise<boolean>;
  record(id: string): Promise<JobRecord | null>;
  image(id: string, n: number): Promise<Buffer | null>;
  observeStep(seconds: number): Promise<void>;
  stats(): Promise<StoreStats>;
}

export function zeroFinished(): Record<FinalState, number> {
  return Object.fromEntries(FINAL_STATES.map((s) => [s, 0])) as Record<FinalState, number>;
}

interface Entry {
  record: JobRecord;
  images: Buffer[];
  bytes: number;
  expiresAt: number;
}

export class MemoryStore implements JobStore {
  private readonly entries = new Map<string, Entry>();
  private bytes = 0;
  private readonly finished = zeroFinished();
  private readonly steps = emptyHistogram();

  /**
   * @param ttlMs how long a result is kept
   * @param maxBytes PNG bytes kept at most; the oldest results go first
   */
  constructor(
    private readonly ttlMs: number,
    private readonly maxBytes: number,
  ) {}

  async finish(record: JobRecord, images: Buffer[]): Promise<boolean> {
    this.evict();
    if (this.entries.has(record.id)) return false;
    const bytes = images.reduce((sum, png) => sum + png.length, 0);
    this.entries.set(record.id, { record, images, bytes, expiresAt: Date.now() + this.ttlMs });
    this.bytes += bytes;
    this.finished[record.state] += 1;
    this.evict(record.id);
    return true;
  }

  async record(id: string): Promise<JobRecord | null> {
    return this.live(id)?.record ?? null;
  }

  async image(id: string, n: number): Promise<Buffer | null> {
    return this.live(id)?.images[n] ?? null;
  }

  async observeStep(seconds: number): Promise<void> {
    observe(this.steps, seconds);
  }

  async stats(): Promise<StoreStats> {
    return { finished: { ...this.finished }, steps: structuredClone(this.steps) };
  }

  private live(id: string): Entry | undefined {
    const entry = this.entries.get(id);
    if (entry && entry.expiresAt <= Date.now()) {
      this.drop(id, entry);
      return undefined;
    }
    return entry;
  }

  private drop(id: string, entry: Entry): void {
    this.entries.delete(id);
    this.bytes -= entry.bytes;
  }

  /** Expired results, then the oldest while over the byte budget (Map order is insertion order); never `keep`. */
  private evict(keep?: string): void {
    const now = Date.now();
    for (const [id, entry] of this.entries) {
      if ((entry.expiresAt > now && this.bytes <= this.maxBytes) || id === keep) break;
      this.drop(id, entry);
    }
  }
}
