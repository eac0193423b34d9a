/**
 * Process memory as Linux counts it (/proc/<pid>/status and smaps_rollup), for the benchmarks.
 *
 * Two peaks are reported, because they disagree once weights are shared: VmHWM (peak RSS) counts a page once per
 * mapping, and onnxruntime maps the weights file once per session, so three sessions on the same 3.4 GB file count
 * it three times although the pages exist once; Pss counts every physical page once (split between the processes
 * that share it). Pss has no kernel-kept peak, so it is sampled, from another process: an onnxruntime run blocks
 * the Node thread that called it, and a timer in that process would not fire during the run.
 */
import * as fs from 'node:fs';

export interface MemorySample {
  rssMB: number;
  /** Peak RSS of the process so far (VmHWM). */
  hwmMB: number;
  anonMB: number;
  /** Resident pages of mapped files (the weights, when shared). */
  fileMB: number;
  /** Proportional set size: physical memory, each shared page counted once overall. */
  pssMB: number;
}

function field(text: string, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return m === null ? Number.NaN : Number(m[1]) / 1024;
}

/** The memory of process `pid` (default: this one), or null where /proc is not readable (not Linux, process gone). */
export function readMemory(pid: number = process.pid): MemorySample | null {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    return {
      rssMB: field(status, 'VmRSS'),
      hwmMB: field(status, 'VmHWM'),
      anonMB: field(status, 'RssAnon'),
      fileMB: field(status, 'RssFile'),
      pssMB: field(rollup, 'Pss'),
    };
  } catch {
    return null;
  }
}

/** Samples another process's memory every `intervalMs` until stopped: the peaks of Pss and VmHWM seen. */
export class MemoryPeaks {
  private pss = 0;
  private hwm = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly pid: number,
    intervalMs = 200,
  ) {
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.sample();
  }

  private sample(): void {
    const m = readMemory(this.pid);
    if (m === null) return;
    this.pss = Math.max(this.pss, m.pssMB);
    this.hwm = Math.max(this.hwm, m.hwmMB);
  }

  /** Stops sampling; the peaks (MB; 0 where nothing could be read). */
  stop(): { peakPssMB: number; peakRssMB: number } {
    this.sample();
    clearInterval(this.timer);
    return { peakPssMB: this.pss, peakRssMB: this.hwm };
  }
}
