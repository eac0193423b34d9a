/**
 * `npm run bench`: every benchmark, each in its own process (so one's allocations and thread pools do not skew
 * the next), results as JSON (and Markdown where a table helps) under bench/results/.
 *   loss      native vs TS loss core (SD 512² tv_bind, head-averaged, small model) + memcpy bandwidth floor
 *   vjp       VJP ÷ forward time of the reference UNet, recompute vs residuals, peak RSS
 *   prepare   peak RSS and time of `prepare`, raw vs head-averaged attention outputs
 *   pipeline  seconds per image per mode on the bundled model, D&B ÷ plain SD, per-phase breakdown
 * Pass names to run a subset: `npm run bench -- loss pipeline`.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const ALL = ['loss', 'vjp', 'prepare', 'pipeline'] as const;

function main(): void {
  const asked = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const names = asked.length ? asked : [...ALL];
  for (const n of names) {
    if (!(ALL as readonly string[]).includes(n)) {
      console.error(`unknown benchmark '${n}' (known: ${ALL.join(', ')})`);
      process.exit(2);
    }
  }
  let failed = 0;
  for (const name of names) {
    console.log(`\n=== ${name} ===`);
    const file = path.join(__dirname, `${name}.bench.js`);
    const r = spawnSync(process.execPath, ['--expose-gc', file], { stdio: 'inherit' });
    if (r.status !== 0) {
      console.error(`benchmark ${name} failed (exit ${r.status})`);
      failed++;
    }
  }
  console.log(`\nresults in ${path.resolve(__dirname, '..', '..', 'bench', 'results')}`);
  process.exit(failed ? 1 : 0);
}

main();
