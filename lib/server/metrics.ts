/**
 * Prometheus text exposition (format 0.0.4) of the queue: depth, jobs by state, and a histogram of denoising step
 * latency. The numbers come from the job store, so with Redis every API node reports the same cluster-wide values.
 */
import type { FinalState } from './jobs';

/** Upper bounds (seconds) of the step latency buckets: 64×64 on a laptop core up to SD 1.5 guided on a CPU. */
export const STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] as const;

/** Step latency as counts per bucket (not cumulative; the last entry is +Inf), their sum and count. */
export interface StepHistogram {
  buckets: number[];
  sum: number;
  count: number;
}

export function emptyHistogram(): StepHistogram {
  return { buckets: new Array(STEP_BUCKETS.length + 1).fill(0), sum: 0, count: 0 };
}

/** Index of the bucket a step of `seconds` falls in (STEP_BUCKETS.length = +Inf). */
export function bucketOf(seconds: number): number {
  const i = STEP_BUCKETS.findIndex((le) => seconds <= le);
  return i < 0 ? STEP_BUCKETS.length : i;
}

export function observe(h: StepHistogram, seconds: number): void {
  h.buckets[bucketOf(seconds)] += 1;
  h.sum += seconds;
  h.count += 1;
}

export interface MetricsSnapshot {
  queued: number;
  running: number;
  finished: Record<FinalState, number>;
  steps: StepHistogram;
  /** Worker processes connected (Redis mode), else undefined. */
  workers?: number;
}

function family(name: string, type: string, help: string, samples: string[]): string {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...samples].join('\n');
}

function number(v: number): string {
  return Number.isFinite(v) ? String(v) : v > 0 ? '+Inf' : v < 0 ? '-Inf' : 'NaN';
}

export function renderMetrics(m: MetricsSnapshot): string {
  let cumulative = 0;
  const bucketLines = STEP_BUCKETS.map((le, i) => {
    cumulative += m.steps.buckets[i];
    return `divbind_step_duration_seconds_bucket{le="${le}"} ${cumulative}`;
  });
  bucketLines.push(`divbind_step_duration_seconds_bucket{le="+Inf"} ${m.steps.count}`);
  const parts = [
    family('divbind_queue_depth', 'gauge', 'Jobs waiting for a worker.', [`divbind_queue_depth ${m.queued}`]),
    family('divbind_jobs', 'gauge', 'Jobs not finished, by state.', [`divbind_jobs{state="queued"} ${m.queued}`, `divbind_jobs{state="running"} ${m.running}`]),
    family(
      'divbind_jobs_finished_total',
      'counter',
      'Jobs finished, by final state (each counted once).',
      (['succeeded', 'failed', 'cancelled'] as const).map((s) => `divbind_jobs_finished_total{state="${s}"} ${m.finished[s]}`),
    ),
    family('divbind_step_duration_seconds', 'histogram', 'Wall time of one denoising step (guidance included).', [
      ...bucketLines,
      `divbind_step_duration_seconds_sum ${number(m.steps.sum)}`,
      `divbind_step_duration_seconds_count ${m.steps.count}`,
    ]),
  ];
  if (m.workers !== undefined) parts.push(family('divbind_workers', 'gauge', 'Worker processes connected to the queue.', [`divbind_workers ${m.workers}`]));
  return `${parts.join('\n')}\n`;
}
