/**
 * SessionOptions.retainFreedMemory (native/addon/allocator.cc): glibc keeps blocks up to 32 MiB, and up to 2 GiB of
 * free heap top, for the next run instead of handing them back to the kernel. Each case runs in a fresh process,
 * because the setting is process-wide and one-way. The blocks here are Node buffers (malloc'd like onnxruntime's
 * tensors without an arena): three of 20 MiB at once, freed together, six rounds.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { glibcVersion, transparentHugePages } from '../../lib/pipeline/huge-pages';
import { retainFreedMemory } from '../../lib/pipeline/ort';
import { REPO_ROOT } from '../helpers/fixtures';

const BLOCK_MIB = 20;

/** Minor page faults of each round of allocating, touching and freeing three blocks, in a fresh process. */
function faultsPerRound(retain: boolean): number[] {
  // V8 may free a buffer's memory on a background thread after gc(): wait a little before the next round.
  const script = `
    const { retainFreedMemory } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist/lib/pipeline/ort.js'))});
    if (${retain} && !retainFreedMemory()) throw new Error('not applied');
    (async () => {
      const faults = [];
      for (let round = 0; round < 6; round++) {
        const before = process.resourceUsage().minorPageFault;
        let blocks = [0, 1, 2].map(() => Buffer.allocUnsafeSlow(${BLOCK_MIB} << 20).fill(1));
        faults.push(process.resourceUsage().minorPageFault - before);
        blocks = null;
        global.gc();
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      console.log(JSON.stringify(faults));
    })();`;
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', cwd: REPO_ROOT });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as number[];
}

/** Pages of 4 KiB one fault brings in: 512 where transparent huge pages back every anonymous mapping. */
const pagesPerFault = transparentHugePages() === 'always' ? 512 : 1;

const glibc = glibcVersion() !== undefined;

test('retainFreedMemory applies on glibc and is a no-op elsewhere; asking again changes nothing', (t) => {
  t.is(retainFreedMemory(), glibc);
  t.is(retainFreedMemory(), glibc);
});

test('with freed memory retained, freed blocks serve the next round instead of being faulted in again', (t) => {
  if (!glibc) {
    t.pass('not glibc: nothing to retain');
    return;
  }
  const retained = faultsPerRound(true);
  const released = faultsPerRound(false);
  t.log(
    `minor page faults per round (3 × ${BLOCK_MIB} MiB = ${(3 * BLOCK_MIB * 256).toLocaleString('en')} pages): retained ${retained.join(' ')}; glibc's default ${released.join(' ')}`,
  );
  // Rounds 3-6 (the first ones grow the heap); one round in four may be disturbed (a late free, the test runner).
  const later = (xs: number[]) => xs.slice(2);
  const reused = later(retained).filter((f) => f < 256).length;
  t.true(reused >= 3, `retained: ${reused} of rounds 3-6 faulted in less than 1 MiB, expected at least 3`);
  // glibc's default trims the freed heap top (above twice the largest freed mapping) or maps the blocks afresh:
  // at least one block's pages come back every round.
  const blockFaults = (BLOCK_MIB * 256) / pagesPerFault;
  const refaulted = later(released).filter((f) => f >= 0.9 * blockFaults).length;
  t.true(refaulted >= 3, `glibc's default: ${refaulted} of rounds 3-6 faulted in a ${BLOCK_MIB} MiB block again, expected at least 3`);
});
