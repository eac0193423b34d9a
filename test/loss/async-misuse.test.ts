/**
 * Issue 10 fault 3: attentionLossAsync while JavaScript transfers, detaches or shrinks the buffers the call
 * uses. Before the fix the addon's pool thread wrote into gradOut memory that had been freed or unmapped:
 * SIGSEGV in 3 of 3 runs (transfer) and 1 of 3 (an input shrunk). Now misuse must reject the promise with a
 * TypeError naming the buffer, or (inputs, which the addon reads before returning) resolve with the right result.
 *
 * Each scenario runs in a child process (test/loss/misuse-child.ts; a crash would end the child, not ava) with
 * --expose-gc, so the transferred copies are collected while the call is pending: 25 calls per scenario, SD-sized
 * buffers for the addon (large allocations are unmapped when freed, so a late write faults at once).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import type { ChildReport, Scenario, Target } from './misuse-child';

const CHILD = path.join(__dirname, 'misuse-child.js');
const ITERATIONS = 25;
const { binding } = tryLoadNativeBinding();
const TARGETS: Target[] = binding ? ['native', 'raw', 'js'] : ['js'];

/** Node flags that give ArrayBuffer.prototype.transfer (a flag before Node 21), or null when unavailable. */
function transferFlags(): string[] | null {
  if (typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === 'function') return [];
  const probe = spawnSync(process.execPath, [
    '--harmony-rab-gsab-transfer',
    '-e',
    'process.exit(typeof ArrayBuffer.prototype.transfer === "function" ? 0 : 1)',
  ]);
  return probe.status === 0 ? ['--harmony-rab-gsab-transfer'] : null;
}

function runChild(target: Target, scenario: Scenario): { report: ChildReport | null; status: number | null; signal: string | null; stderr: string } {
  const flags = scenario === 'transfer' ? (transferFlags() ?? []) : [];
  const child = spawnSync(process.execPath, ['--expose-gc', ...flags, CHILD, target, scenario, String(ITERATIONS)], {
    encoding: 'utf8',
    timeout: 300_000,
  });
  const line = child.stdout.trim().split('\n').pop() ?? '';
  let report: ChildReport | null = null;
  try {
    report = JSON.parse(line) as ChildReport;
  } catch {
    report = null;
  }
  return { report, status: child.status, signal: child.signal, stderr: child.stderr.slice(-2000) };
}

const DETACHED =
  'was detached or resized while the async call was running; keep output buffers attached and at their length ' +
  '(do not transfer, postMessage or resize them) until the promise settles';

/** The one rejection every call of a deterministic scenario must end with, or null: each call resolves correctly. */
function expected(target: Target, scenario: Scenario): string | null {
  const gradients = target === 'raw' ? 'grads[0]' : 'gradOut[0]';
  switch (scenario) {
    case 'clone':
    case 'transfer':
    case 'port':
    case 'shrink-out':
      return `TypeError: ${gradients}: ${DETACHED}`;
    case 'shrink-in':
    case 'clone-in':
      // The addon reads the layers before it returns; the js twin reads them across event-loop turns.
      return target === 'js' ? `TypeError: layers[0].data: ${DETACHED.replace('output buffers', 'input and output buffers')}` : null;
    case 'late':
      return null;
  }
}

const SCENARIOS: Scenario[] = ['clone', 'transfer', 'port', 'shrink-out', 'shrink-in', 'clone-in', 'late'];

for (const target of TARGETS) {
  for (const scenario of SCENARIOS) {
    test(`${target}: ${scenario} while attentionLossAsync runs is an error, never a crash`, (t) => {
      if (scenario === 'transfer' && transferFlags() === null) {
        t.pass('ArrayBuffer.prototype.transfer is not available in this Node');
        return;
      }
      const { report, status, signal, stderr } = runChild(target, scenario);
      t.is(signal, null, `the child died of ${signal}\n${stderr}`);
      t.is(status, 0, stderr);
      t.truthy(report, `no report from the child\n${stderr}`);
      if (!report) return;
      t.is(report.wrong, 0, `${report.wrong} calls resolved with a wrong loss`);
      const want = expected(target, scenario);
      if (scenario === 'late') {
        // Detached after 0..6 event-loop turns: mid-write (rejected) or after the call finished (resolved).
        for (const text of Object.keys(report.rejected)) t.true(text.endsWith(DETACHED), text);
        t.is(report.resolved + Object.values(report.rejected).reduce((a, b) => a + b, 0), ITERATIONS);
      } else if (want === null) {
        t.deepEqual(report.rejected, {});
        t.is(report.resolved, ITERATIONS);
      } else {
        t.deepEqual(report.rejected, { [want]: ITERATIONS });
      }
      t.log(`${report.resolved} resolved, ${ITERATIONS - report.resolved} rejected`);
    });
  }
}
