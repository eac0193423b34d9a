/**
 * `divbind-native info`: the model (components with their inputs and dtypes, checked as the pipeline checks them;
 * the prepared state of every image size), onnxruntime providers and loss backends. A model that cannot be used
 * is reported and makes the exit code 4 (lib/cli/errors.ts).
 */
import { Command } from 'commander';
import * as ort from 'onnxruntime-node';
import { availableBackends } from '../../loss/index';
import { tryLoadNativeBinding } from '../../loss/binding';
import { checkSdxlTextEncoder, checkTextEncoder, checkUnet, checkVaeDecoder, openComponent } from '../../model/components';
import { familyResolutions, type ModelFamily } from '../../model/family';
import { readModelDefaults } from '../../options/model-defaults';
import { readModelFolder, type ComponentName, type ModelFolder } from '../../model/folder';
import { listPrepared, prepareCommand, sourceIdentity } from '../../model/prepared';
import { defaultImageSize, formatSize, sizeRule, type ImageSize } from '../../model/size';
import { defaultModelDir } from '../../pipeline/defaults';
import { installedExecutionProviders } from '../../pipeline/ort';
import { exitCodeFor, handleCliError, printCliError } from '../errors';
import { hugePagesState } from '../../pipeline/huge-pages';

interface InfoOptions {
  model?: string;
  json: boolean;
}

/** Opens one component as the pipeline does (so a damaged or misplaced file fails here too) and lists its I/O. */
async function describeComponent(file: string, component: ComponentName, check: (s: ort.InferenceSession, rel: string) => unknown) {
  const { session } = await openComponent(file, component, { graphOptimizationLevel: 'disabled', intraOpNumThreads: 1 }, check);
  try {
    const io = (m: readonly ort.InferenceSession.ValueMetadata[]) => m.map((v) => (v.isTensor ? `${v.name}: ${v.type}[${v.shape.join(',')}]` : v.name));
    return {
      info: { file, inputs: io(session.inputMetadata), outputs: io(session.outputMetadata) },
      sampleShape: session.inputMetadata.find((m) => m.name === 'sample'),
    };
  } finally {
    await session.release();
  }
}

/** The default size's prepared state (what generate uses without --height/--width) and every prepared size. */
function describePrepared(folder: ModelFolder, defaultSize: ImageSize): Record<string, unknown> {
  const sets = listPrepared(folder, sourceIdentity(folder));
  const preparedSizes = sets.map((s) => ({
    size: formatSize(s.size),
    batch: s.batch,
    state: s.state.state,
    dir: s.state.dir,
    ...(s.state.state === 'ready' ? {} : { reason: s.state.reason }),
  }));
  const mine = sets.find((s) => s.batch === 1 && s.size.height === defaultSize.height && s.size.width === defaultSize.width);
  const size = formatSize(defaultSize);
  let prepared: Record<string, unknown>;
  if (mine === undefined) {
    prepared = { state: 'not prepared', size, fix: `run \`${prepareCommand(folder.dir)}\`` };
  } else if (mine.state.state !== 'ready') {
    prepared = { state: mine.state.state, size, dir: mine.state.dir, reason: mine.state.reason, fix: `run \`${prepareCommand(folder.dir, { force: true })}\`` };
  } else {
    const m = mine.state.manifest;
    prepared = {
      state: 'ready',
      size,
      dir: mine.state.dir,
      design: m.vjp.design,
      layers: m.attention.layers.map((l) => `${l.output} ${l.place} ${l.resolution}² heads=${l.heads}${l.headAveraged ? ' (averaged)' : ''}`),
    };
  }
  return { prepared, preparedSizes };
}

/** The family, why, and the defaults generate uses on this folder at `size` (family rules under the folder's own). */
function describeFamily(folder: ModelFolder, family: ModelFamily, size: ImageSize): Record<string, unknown> {
  const generate = readModelDefaults(folder.divbind, family).all as { guidanceScale: number; loss: { tokenSlice: string } };
  return {
    name: family.name,
    label: family.label,
    evidence: family.evidence,
    defaults: {
      size: formatSize(size),
      ...familyResolutions(family, folder.divbind, size.height),
      tokenSlice: generate.loss.tokenSlice,
      guidanceScale: generate.guidanceScale,
    },
  };
}

async function describeModel(modelDir: string): Promise<Record<string, unknown>> {
  const folder = readModelFolder(modelDir);
  const dual = folder.textEncoder2File !== undefined;
  const textEncoder = await describeComponent(folder.textEncoderFile, 'text_encoder', dual ? checkSdxlTextEncoder(false) : checkTextEncoder);
  const textEncoder2 = dual ? await describeComponent(folder.textEncoder2File!, 'text_encoder_2', checkSdxlTextEncoder(true)) : undefined;
  const unet = await describeComponent(folder.unetFile, 'unet', checkUnet);
  const vaeDecoder = await describeComponent(folder.vaeDecoderFile, 'vae_decoder', checkVaeDecoder);
  const shape = unet.sampleShape?.isTensor ? unet.sampleShape.shape : [];
  const size = defaultImageSize(sizeRule(shape, folder.vaeScaleFactor, undefined, folder.family.defaultLatentSide));
  return {
    dir: folder.dir,
    class: folder.index._class_name ?? null,
    family: describeFamily(folder, folder.family, size),
    divbindDefaults: folder.divbind,
    vae: { scaleFactor: folder.vaeScaleFactor, scalingFactor: folder.vaeScalingFactor },
    textEncoder: textEncoder.info,
    ...(textEncoder2 ? { textEncoder2: textEncoder2.info } : {}),
    unet: unet.info,
    vaeDecoder: vaeDecoder.info,
    ...describePrepared(folder, size),
  };
}

/** Everything `info` reports; `error` is the model's fault, if any (the rest is still filled in). */
export async function collectInfo(modelDir: string): Promise<{ info: Record<string, unknown>; error?: unknown }> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const pkg = require('../../../../package.json') as { version: string };
  const native = tryLoadNativeBinding();
  const info: Record<string, unknown> = {
    version: pkg.version,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    onnxruntime: { version: ort.env.versions.common, executionProviders: installedExecutionProviders() },
    memory: { hugePages: hugePagesState() },
    loss: {
      backends: availableBackends(),
      native: native.binding ? native.binding.features : { error: native.error?.message ?? 'not loaded' },
      cuda: native.binding?.cudaDevices ? native.binding.cudaDevices() : { count: 0, error: 'addon built without CUDA' },
    },
  };
  try {
    info.model = await describeModel(modelDir);
    return { info };
  } catch (err) {
    info.model = { dir: modelDir, error: (err as Error).message };
    return { info, error: err };
  }
}

function printTree(value: unknown, indent = ''): string {
  if (Array.isArray(value))
    return value.map((v) => `${indent}- ${typeof v === 'object' && v !== null ? `\n${printTree(v, `${indent}  `)}` : String(v)}`).join('\n');
  if (typeof value === 'object' && value !== null) {
    return Object.entries(value)
      .map(([k, v]) => (typeof v === 'object' && v !== null ? `${indent}${k}:\n${printTree(v, `${indent}  `)}` : `${indent}${k}: ${String(v)}`))
      .join('\n');
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
        const { info, error } = await collectInfo(o.model ?? defaultModelDir());
        process.stdout.write(o.json ? `${JSON.stringify(info, null, 2)}\n` : `${printTree(info)}\n`);
        if (error !== undefined) {
          printCliError(error);
          process.exitCode = exitCodeFor(error);
        }
      } catch (err) {
        handleCliError(err);
      }
    });
}
