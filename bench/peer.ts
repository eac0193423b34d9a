/**
 * Runs the PyTorch peer (bench/torch_peer.py) on the same model, latents, tokens and settings as the pipeline's
 * run, and sets its seconds per image beside the pipeline's. The final latents of both are compared: the same
 * model and loop give the same trajectory (float32 both sides; the relative L2 difference is reported, it is the
 * check that the peer runs the same weights).
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import type { GuidanceMode } from '../lib/pipeline/guidance';
import { readNpy } from '../lib/util/npy';

export interface PeerModeResult {
  secondsPerImage: number;
  /** PyTorch seconds ÷ the pipeline's, same mode and size. */
  torchOverNode: number;
  /** ‖z_torch − z_node‖₂ / ‖z_node‖₂ of the final latents. */
  finalLatentsRelL2: number;
}

export interface PeerResult {
  torch: string;
  threads: number;
  buildSeconds: number;
  modes: Record<string, PeerModeResult>;
}

export interface PeerRun {
  /** Which weights the peer builds: the SD 1.5-size bench folder's, or the tiny fixture's. */
  kind: 'sd15' | 'tiny';
  size: number;
  modes: GuidanceMode[];
  settings: { steps: number; maxIterToAlter: number; warmupSteps: number; threads: number; prompt: string };
  latentsFile: string;
  tokens: { tokenIndices: number[]; attributeIndices: Array<number | null> | null } | null;
  /** The pipeline's final latents and seconds per image, per mode. */
  nodeLatents: Record<string, string>;
  nodeSeconds: Record<string, { secondsPerImage: number }>;
  scratch: string;
}

const PYTHON = process.env.PYTHON ?? '/usr/bin/python3';

function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

function peerArgs(p: PeerRun): string[] {
  const args = [
    path.resolve(__dirname, '../../bench/torch_peer.py'),
    '--model',
    p.kind,
    '--modes',
    p.modes.join(','),
    '--latents',
    p.latentsFile,
    '--prompt',
    p.settings.prompt,
    '--steps',
    String(p.settings.steps),
    '--max-iter',
    String(p.settings.maxIterToAlter),
    '--warmup-steps',
    String(p.settings.warmupSteps),
    '--threads',
    String(p.settings.threads),
    '--out-dir',
    p.scratch,
  ];
  if (p.tokens !== null) args.push('--token-indices', p.tokens.tokenIndices.join(','));
  if (p.tokens?.attributeIndices) args.push('--attribute-indices', p.tokens.attributeIndices.map((a) => a ?? 0).join(','));
  return args;
}

/** Runs the peer (its stderr passes through) and compares it with the pipeline's run. */
export function runPeer(p: PeerRun): Promise<PeerResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, peerArgs(p), { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`${PYTHON} bench/torch_peer.py exited with ${code}`));
      const raw = JSON.parse(out.trim().split('\n').pop()!) as {
        torch: string;
        threads: number;
        buildSeconds: number;
        modes: Record<string, { secondsPerImage: number; finalLatents: string }>;
      };
      const modes: Record<string, PeerModeResult> = {};
      for (const [mode, r] of Object.entries(raw.modes)) {
        const node = readNpy(p.nodeLatents[mode]!).data as Float32Array;
        modes[mode] = {
          secondsPerImage: r.secondsPerImage,
          torchOverNode: r.secondsPerImage / p.nodeSeconds[mode]!.secondsPerImage,
          finalLatentsRelL2: relL2(readNpy(r.finalLatents).data as Float32Array, node),
        };
        console.log(
          `torch peer ${p.kind} ${p.size}² ${mode}: ${r.secondsPerImage.toFixed(2)} s/image = ${modes[mode]!.torchOverNode.toFixed(2)}× the pipeline; ` +
            `final latents rel L2 ${modes[mode]!.finalLatentsRelL2.toExponential(2)}`,
        );
      }
      resolve({ torch: raw.torch, threads: raw.threads, buildSeconds: raw.buildSeconds, modes });
    });
  });
}
