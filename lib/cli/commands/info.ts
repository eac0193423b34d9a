/** `divbind-native info`: the model (inputs, dtypes, prepared state), onnxruntime providers and loss backends. */
import { Command } from 'commander';
import * as ort from 'onnxruntime-node';
import { availableBackends } from '../../loss/index';
import { tryLoadNativeBinding } from '../../loss/binding';
import { defaultModelDir } from '../../pipeline/defaults';
import { readModelFolder } from '../../pipeline/model-folder';
import { loadPreparedUnet } from '../../pipeline/prepared';
import { handleCliError } from '../errors';

interface InfoOptions {
  model?: string;
  json: boolean;
}

async function describeSession(file: string): Promise<Record<string, unknown>> {
  const session = await ort.InferenceSession.create(file, { logSeverityLevel: 3, graphOptimizationLevel: 'disabled' });
  try {
    const io = (m: readonly ort.InferenceSession.ValueMetadata[]) => m.map((v) => (v.isTensor ? `${v.name}: ${v.type}[${v.shape.join(',')}]` : v.name));
    return { file, inputs: io(session.inputMetadata), outputs: io(session.outputMetadata) };
  } finally {
    await session.release();
  }
}

export async function collectInfo(modelDir: string): Promise<Record<string, unknown>> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const pkg = require('../../../../package.json') as { version: string };
  const native = tryLoadNativeBinding();
  const info: Record<string, unknown> = {
    version: pkg.version,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    onnxruntime: { version: ort.env.versions.common, executionProviders: ['cpu'] },
    loss: {
      backends: availableBackends(),
      native: native.binding ? native.binding.features : { error: native.error?.message ?? 'not loaded' },
      cuda: native.binding?.cudaDevices ? native.binding.cudaDevices() : { count: 0, error: 'addon built without CUDA' },
    },
  };
  try {
    const folder = readModelFolder(modelDir);
    const model: Record<string, unknown> = {
      dir: folder.dir,
      class: folder.index._class_name ?? null,
      divbindDefaults: folder.divbind,
      textEncoder: await describeSession(folder.textEncoderFile),
      unet: await describeSession(folder.unetFile),
      vaeDecoder: await describeSession(folder.vaeDecoderFile),
    };
    try {
      const prepared = await loadPreparedUnet(folder);
      model.prepared = {
        dir: prepared.dir,
        size: `${prepared.manifest.width}×${prepared.manifest.height}`,
        design: prepared.manifest.vjp.design,
        layers: prepared.manifest.attention.layers.map((l) => `${l.output} ${l.place} ${l.resolution}² heads=${l.heads}${l.headAveraged ? ' (averaged)' : ''}`),
      };
    } catch (err) {
      model.prepared = { error: (err as Error).message };
    }
    info.model = model;
  } catch (err) {
    info.model = { dir: modelDir, error: (err as Error).message };
  }
  return info;
}

function printTree(value: unknown, indent = ''): string {
  if (Array.isArray(value)) return value.map((v) => `${indent}- ${typeof v === 'object' && v !== null ? `\n${printTree(v, `${indent}  `)}` : String(v)}`).join('\n');
  if (typeof value === 'object' && value !== null) {
    return Object.entries(value).map(([k, v]) => (typeof v === 'object' && v !== null
      ? `${indent}${k}:\n${printTree(v, `${indent}  `)}`
      : `${indent}${k}: ${String(v)}`)).join('\n');
  }
  return `${indent}${String(value)}`;
}

export function makeInfoCommand(): Command {
  return new Command('info')
    .description('show the model, its inputs and prepared state, onnxruntime providers and loss backends')
    .option('-m, --model <dir>', 'Stable Diffusion ONNX folder (default: the bundled model)')
    .option('--json', 'print JSON', false)
    .action(async (o: InfoOptions) => {
      try {
        const info = await collectInfo(o.model ?? defaultModelDir());
        process.stdout.write(o.json ? `${JSON.stringify(info, null, 2)}\n` : `${printTree(info)}\n`);
      } catch (err) {
        handleCliError(err);
      }
    });
}
