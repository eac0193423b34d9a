/**
 * Child process of async-misuse.test.ts: runs `iterations` async loss calls and misuses their buffers while each
 * call is pending (transfer, detach, shrink), then prints one JSON line with the outcome counts. A crash shows up
 * in the parent as a signal or a non-zero exit status; every call must instead resolve with the reference result
 * or reject with the expected TypeError.
 *
 *   node --expose-gc [--harmony-rab-gsab-transfer] misuse-child.js <target> <scenario> <iterations>
 *   target: native | js | raw (the addon's attentionLossAsync without the TS layer)
 */
import { MessageChannel } from 'node:worker_threads';
import { attentionLoss, attentionLossAsync } from '../../lib/loss/index';
import { tryLoadNativeBinding } from '../../lib/loss/binding';
import { normalizeLossOptions } from '../../lib/loss/validate';
import type { AttentionLayer, LossOptions } from '../../lib/loss/types';
import { makeUniformLayers, type LayerSpec } from '../helpers/attention';

export type Scenario = 'clone' | 'transfer' | 'port' | 'shrink-out' | 'shrink-in' | 'clone-in' | 'late';
export type Target = 'native' | 'js' | 'raw';

export interface ChildReport {
  iterations: number;
  resolved: number;
  /** Resolved calls whose loss differs from the synchronous reference. */
  wrong: number;
  /** Rejection messages, with counts. */
  rejected: Record<string, number>;
}

const [target, scenario, count] = process.argv.slice(2) as [Target, Scenario, string];
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
const OPTIONS: LossOptions = { mode: 'tv_bind', tokenIndices: [3, 7], attributeIndices: [2, 6], stepIndex: 10, attributeResolutions: [64] };
// SD-sized layers for the addon (large buffers: freed memory is unmapped, so a late write faults); small for js.
const SPECS: LayerSpec[] =
  target === 'js'
    ? [
        { resolution: 32, heads: 2 },
        { resolution: 16, heads: 2 },
        { resolution: 64, heads: 1, place: 'up' },
      ]
    : [
        { resolution: 64, heads: 8 },
        { resolution: 16, heads: 8, place: 'mid' },
        { resolution: 64, heads: 8, place: 'up' },
      ];

/** ES2024 resizable ArrayBuffer (Node 20 has it; the project's TS lib is ES2022). */
type ResizableArrayBuffer = ArrayBuffer & { resize(byteLength: number): void };
const Resizable = ArrayBuffer as unknown as new (byteLength: number, options: { maxByteLength: number }) => ResizableArrayBuffer;

/** The layers again, each on its own resizable ArrayBuffer (to shrink them mid-call). */
function resizable(layers: AttentionLayer[]): AttentionLayer[] {
  return layers.map((l) => {
    const data = new Float32Array(new Resizable(l.data.byteLength, { maxByteLength: l.data.byteLength }));
    data.set(l.data);
    return { ...l, data };
  });
}

function detach(buffer: ArrayBufferLike, how: 'clone' | 'transfer' | 'port'): void {
  if (how === 'clone') structuredClone(buffer, { transfer: [buffer as ArrayBuffer] });
  if (how === 'transfer') (buffer as ArrayBuffer & { transfer(n: number): ArrayBuffer }).transfer(16);
  if (how === 'port') {
    const { port1, port2 } = new MessageChannel();
    port1.postMessage(buffer, [buffer as ArrayBuffer]);
    port1.close();
    port2.close();
  }
}

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Starts one async call on fresh buffers and misuses them per scenario; resolves to the call's loss. */
async function oneCall(k: number, reference: AttentionLayer[]): Promise<number> {
  const layers =
    scenario === 'shrink-in' ? resizable(reference) : scenario === 'clone-in' ? reference.map((l) => ({ ...l, data: Float32Array.from(l.data) })) : reference;
  const gradOut = layers.map(
    (l) =>
      new Float32Array(scenario === 'shrink-out' ? new Resizable(l.data.byteLength, { maxByteLength: l.data.byteLength }) : new ArrayBuffer(l.data.byteLength)),
  );
  let pending: Promise<number>;
  if (target === 'raw') {
    const binding = tryLoadNativeBinding().binding!;
    const normalized = normalizeLossOptions(layers, OPTIONS);
    pending = binding.attentionLossAsync(layers, normalized, gradOut, null, null).then((r) => r.loss);
  } else {
    pending = attentionLossAsync(layers, OPTIONS, { backend: target, gradOut }).then((r) => r.loss);
  }
  switch (scenario) {
    case 'clone':
    case 'transfer':
    case 'port':
      for (const g of gradOut) detach(g.buffer, scenario);
      break;
    case 'shrink-out':
      for (const g of gradOut) (g.buffer as ResizableArrayBuffer).resize(0);
      break;
    case 'shrink-in':
      for (const l of layers) (l.data.buffer as ResizableArrayBuffer).resize(0);
      break;
    case 'clone-in':
      for (const l of layers) detach(l.data.buffer, 'clone');
      break;
    case 'late':
      await turns(k % 7);
      for (const g of gradOut) detach(g.buffer, 'clone');
      break;
  }
  gc(); // the transferred copies are garbage: free their memory while the call may still use it
  return pending;
}

async function main(): Promise<void> {
  const reference = makeUniformLayers(11, SPECS, 77);
  const want = attentionLoss(reference, OPTIONS, { backend: target === 'js' ? 'js' : 'native' }).loss;
  const report: ChildReport = { iterations: Number(count), resolved: 0, wrong: 0, rejected: {} };
  for (let k = 0; k < report.iterations; k++) {
    try {
      const loss = await oneCall(k, reference);
      report.resolved++;
      if (loss !== want) report.wrong++;
    } catch (error) {
      const text = `${(error as Error).constructor.name}: ${(error as Error).message}`;
      report.rejected[text] = (report.rejected[text] ?? 0) + 1;
    }
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

void main();
