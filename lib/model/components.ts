/**
 * Opening a folder's ONNX components and checking, at load, that each is what its place says: the text encoder
 * takes token ids, the UNet takes sample/timestep/encoder_hidden_states, the VAE decoder takes one latent, and
 * their dims agree. A missing, damaged or misplaced file is a DivbindError naming it and the fix, raised before
 * any work is done (never "input 'timestep' is missing" after the whole denoise).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as ort from 'onnxruntime-node';
import { DivbindError, isDivbindError, type DivbindErrorCode } from '../errors';
import { createSession, loadModel, type CreateSessionExtras, type LoadedModel } from '../onnx/model-io';
import { inputSpec, sessionOptions, type InputSpec, type SessionOptions } from '../pipeline/ort';
import { fromConfig, type Scheduler } from '../schedulers/index';
import { ClipTokenizer } from '../tokenizer/clip';
import { COMPONENT_FILES, type ComponentName, type ModelFolder } from './folder';

/** What to do about a component file that is missing, damaged or of the wrong kind. */
export function restoreFix(rel: string): string {
  return `restore ${rel} from the model's export (download or export the model again)`;
}

/** A file of the model: its path, its name in messages, and what to do when it is bad. */
export interface ModelFile {
  file: string;
  /** Name in messages and DivbindError.field, e.g. 'unet/model.onnx'. */
  rel: string;
  fix: string;
  /** The code for any problem with this file (prepared graphs: MODEL_NOT_PREPARED); default MODEL_MISSING / MODEL_INVALID. */
  code?: DivbindErrorCode;
}

function renamed(err: DivbindError, f: ModelFile, modelDirOfErr?: string): DivbindError {
  // loadModel names the absolute path; say it relative to the folder the user passed.
  const field = err.field !== undefined && modelDirOfErr !== undefined && err.field.startsWith(modelDirOfErr + path.sep)
    ? path.relative(modelDirOfErr, err.field).split(path.sep).join('/') : f.rel;
  // A missing weights file is fixed by restoring that file, not the graph.
  const fix = field !== f.rel && f.code === undefined ? restoreFix(field) : f.fix;
  return new DivbindError(f.code ?? err.code, `${f.rel} cannot be used: ${err.message.replace(/\.$/, '')}`, { field, fix, cause: err });
}

/**
 * loadModel (protobuf decode, external weights stat'ed, never read) with its errors naming `f.rel` and the fix.
 * `modelDir` turns absolute paths in fields (a weights file) into folder-relative ones.
 */
export function loadModelFile(f: ModelFile, modelDir?: string): LoadedModel {
  try {
    return loadModel(f.file);
  } catch (err) {
    if (!isDivbindError(err)) throw err;
    throw renamed(err, f, modelDir);
  }
}

/**
 * Opens `f` in onnxruntime. When ORT refuses it, the file is decoded once more with protobufjs (this failure path
 * only), which tells a truncated or random file and missing or short external weights apart from a valid graph
 * ORT cannot run.
 */
export async function openModelFile(f: ModelFile, options: ort.InferenceSession.SessionOptions, extras: CreateSessionExtras = {},
  modelDir?: string): Promise<ort.InferenceSession> {
  if (!fs.existsSync(f.file)) throw new DivbindError(f.code ?? 'MODEL_MISSING', `${f.rel} is missing (${f.file})`, { field: f.rel, fix: f.fix });
  try {
    return await createSession(f.file, options, extras);
  } catch (ortError) {
    loadModelFile(f, modelDir);
    throw new DivbindError(f.code ?? 'MODEL_INVALID', `${f.rel} cannot be loaded: ${(ortError as Error).message}`, {
      field: f.rel, fix: f.fix, cause: ortError,
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Input/output contracts, checked on the session's metadata.

const FLOAT_TYPES: readonly string[] = ['float32', 'float16'];
const TIMESTEP_TYPES: readonly string[] = ['int64', 'int32', 'float32', 'float16', 'float64'];

/** The tensor inputs or outputs of a session, with dtype and declared shape. */
export function tensors(meta: readonly ort.InferenceSession.ValueMetadata[]): InputSpec[] {
  return meta.filter((m) => m.isTensor).map((m) => ({ name: m.name, type: (m as { type: ort.Tensor.Type }).type, shape: (m as { shape: ReadonlyArray<number | string> }).shape }));
}

function describe(specs: InputSpec[]): string {
  return specs.length === 0 ? 'none' : specs.map((s) => s.name).join(', ');
}

function notA(rel: string, what: string, expected: string, session: ort.InferenceSession): DivbindError {
  return new DivbindError('MODEL_INVALID', `${rel} is not ${what}: expected ${expected}; it has inputs ${describe(tensors(session.inputMetadata))} `
    + `and outputs ${describe(tensors(session.outputMetadata))}`, { field: rel, fix: restoreFix(rel) });
}

const isFloat = (s: InputSpec | undefined, rank: number) => s !== undefined && FLOAT_TYPES.includes(s.type) && s.shape.length === rank;

export interface TextEncoderIo {
  ids: InputSpec;
  /** Output with the hidden states [batch, T, D]. */
  hidden: InputSpec;
}

export function checkTextEncoder(session: ort.InferenceSession, rel: string = COMPONENT_FILES.text_encoder): TextEncoderIo {
  const inputs = tensors(session.inputMetadata);
  const outputs = tensors(session.outputMetadata);
  const ids = inputs.length === 1 ? inputs[0] : inputs.find((s) => s.name === 'input_ids');
  if (ids === undefined || !['int32', 'int64'].includes(ids.type) || ids.shape.length !== 2) {
    throw notA(rel, 'a CLIP text encoder', 'one input input_ids of int32/int64 [batch, sequence]', session);
  }
  const hidden = outputs.find((s) => s.name === 'last_hidden_state') ?? outputs.find((s) => isFloat(s, 3));
  if (!isFloat(hidden, 3)) throw notA(rel, 'a CLIP text encoder', 'an output last_hidden_state of float [batch, sequence, hidden]', session);
  return { ids, hidden: hidden! };
}

export interface UnetIo {
  sample: InputSpec;
  timestep: InputSpec;
  encoderHiddenStates: InputSpec;
  /** The noise prediction output (out_sample). */
  output: InputSpec;
}

export function checkUnet(session: ort.InferenceSession, rel: string = COMPONENT_FILES.unet): UnetIo {
  const expected = 'inputs sample (float [batch, 4, h, w]), timestep and encoder_hidden_states (float [batch, T, D])';
  const names = session.inputNames;
  if (!['sample', 'timestep', 'encoder_hidden_states'].every((n) => names.includes(n))) throw notA(rel, 'a Stable Diffusion UNet', expected, session);
  const io = { sample: inputSpec(session, 'sample'), timestep: inputSpec(session, 'timestep'), encoderHiddenStates: inputSpec(session, 'encoder_hidden_states') };
  const outputs = tensors(session.outputMetadata);
  const output = outputs.find((s) => s.name === 'out_sample') ?? outputs[0];
  if (!isFloat(io.sample, 4) || !isFloat(io.encoderHiddenStates, 3) || !TIMESTEP_TYPES.includes(io.timestep.type) || io.timestep.shape.length > 1
    || !isFloat(output, 4)) {
    throw notA(rel, 'a Stable Diffusion UNet', `${expected}, and a float output [batch, 4, h, w]`, session);
  }
  return { ...io, output: output! };
}

export interface VaeDecoderIo {
  latent: InputSpec;
  image: InputSpec;
}

export function checkVaeDecoder(session: ort.InferenceSession, rel: string = COMPONENT_FILES.vae_decoder): VaeDecoderIo {
  const inputs = tensors(session.inputMetadata);
  const outputs = tensors(session.outputMetadata);
  const image = outputs.find((s) => s.name === 'sample') ?? outputs[0];
  const channels = image?.shape[1];
  if (inputs.length !== 1 || !isFloat(inputs[0], 4) || !isFloat(image, 4) || (typeof channels === 'number' && channels !== 3)) {
    throw notA(rel, 'a VAE decoder', 'one input latent_sample (float [batch, 4, h, w]) and an image output (float [batch, 3, H, W])', session);
  }
  return { latent: inputs[0]!, image: image! };
}

function staticDim(s: InputSpec, k: number): number | null {
  const d = s.shape[k];
  return typeof d === 'number' && d > 0 ? d : null;
}

/** The three components fit together: hidden size, latent channels and the VAE factor (where the exports fix them). */
export function checkComponentsAgree(folder: Pick<ModelFolder, 'vaeScaleFactor'>, te: TextEncoderIo, unet: UnetIo, vae: VaeDecoderIo): void {
  const mismatch = (rel: string, what: string) => new DivbindError('MODEL_INVALID', `${rel} does not fit the UNet: ${what}`, {
    field: rel, fix: 'use the components of one export (text_encoder, unet and vae_decoder from the same model)',
  });
  const [d, dUnet] = [staticDim(te.hidden, 2), staticDim(unet.encoderHiddenStates, 2)];
  if (d !== null && dUnet !== null && d !== dUnet) throw mismatch(COMPONENT_FILES.text_encoder, `its hidden size is ${d}, the UNet's encoder_hidden_states take ${dUnet}`);
  const [c, cUnet] = [staticDim(vae.latent, 1), staticDim(unet.sample, 1)];
  if (c !== null && cUnet !== null && c !== cUnet) throw mismatch(COMPONENT_FILES.vae_decoder, `it takes ${c} latent channels, the UNet's sample has ${cUnet}`);
  const [h, H] = [staticDim(vae.latent, 2), staticDim(vae.image, 2)];
  if (h !== null && H !== null && H !== h * folder.vaeScaleFactor) {
    throw new DivbindError('MODEL_INVALID', `${COMPONENT_FILES.vae_decoder} turns ${h} latent rows into ${H} image rows, but the folder's VAE scale factor is ${folder.vaeScaleFactor}`, {
      field: 'vae_scale_factor', fix: `set "vae_scale_factor": ${H / h} in vae_decoder/config.json`,
    });
  }
}

/** Opens a component of the folder and checks its contract; the session is released when the check fails. */
export async function openComponent<T>(file: string, component: ComponentName, options: SessionOptions,
  check: (session: ort.InferenceSession, rel: string) => T): Promise<{ session: ort.InferenceSession; io: T }> {
  const rel = COMPONENT_FILES[component];
  const modelDir = path.dirname(path.dirname(file));
  const session = await openModelFile({ file, rel, fix: restoreFix(rel) }, sessionOptions(options), {}, modelDir);
  try {
    return { session, io: check(session, rel) };
  } catch (err) {
    await session.release();
    throw err;
  }
}

/** The folder's CLIP tokenizer; a missing or broken file is MODEL_INVALID naming it. */
export function openTokenizer(folder: Pick<ModelFolder, 'tokenizerDir'>): ClipTokenizer {
  try {
    return ClipTokenizer.fromDirectory(folder.tokenizerDir);
  } catch (err) {
    throw new DivbindError('MODEL_INVALID', `tokenizer/ cannot be used: ${(err as Error).message}`, { field: 'tokenizer', fix: restoreFix('tokenizer/'), cause: err });
  }
}

/** The folder's scheduler; an unknown class or bad value in scheduler_config.json is MODEL_INVALID naming it. */
export function openScheduler(folder: Pick<ModelFolder, 'schedulerConfig'>): Scheduler {
  const rel = 'scheduler/scheduler_config.json';
  try {
    return fromConfig(folder.schedulerConfig);
  } catch (err) {
    throw new DivbindError('MODEL_INVALID', `${rel} cannot be used: ${(err as Error).message}`, {
      field: rel, fix: `restore ${rel} from the model's export (PNDM, DDIM and Euler schedulers are supported)`, cause: err,
    });
  }
}
