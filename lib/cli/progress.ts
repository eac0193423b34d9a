/** Progress display on stderr: a redrawn bar on a TTY, one line per step otherwise. */
import type { StepEvent } from '../pipeline/sampler';

export interface Progress {
  note(message: string): void;
  step(e: StepEvent & { image?: number }): void;
  done(): void;
}

export function createProgress(silent: boolean, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (silent) return { note() {}, step() {}, done() {} };
  const tty = stream.isTTY === true;
  let open = false;
  const clear = () => {
    if (open && tty) stream.write('\r\x1b[K');
    open = false;
  };
  return {
    note(message) {
      clear();
      stream.write(`${message}\n`);
    },
    step(e) {
      const width = 24;
      const filled = Math.round(((e.index + 1) / e.total) * width);
      const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
      const guidance =
        e.loss === null ? '' : ` L=${e.loss.toFixed(4)} θ=${(e.indicator ?? 0).toFixed(4)}${e.refinementIterations ? ` refine=${e.refinementIterations}` : ''}`;
      const img = e.image !== undefined && e.image > 0 ? ` img ${e.image + 1}` : '';
      const line = `[${bar}] ${e.index + 1}/${e.total}${img} t=${e.timestep}${guidance} ${e.ms.total.toFixed(0)} ms`;
      if (tty) {
        stream.write(`\r\x1b[K${line}`);
        open = true;
      } else {
        stream.write(`${line}\n`);
      }
    },
    done() {
      if (open && tty) stream.write('\n');
      open = false;
    },
  };
}
