/**
 * Opening a folder's ONNX components and checking, at load, that each is what its place says: the text encoder
 * takes token ids, the UNet takes sample/timestep/encoder_hidden_states (SDXL: also text_embeds and time_ids), the
 * VAE decoder takes one latent, SDXL's two encoders give every hidden state (and encoder 2 the pooled text_embeds),
 * and their dims agree with each other and with the folder's family (lib/model/family.ts). A missing, damaged or misplaced file is a DivbindError naming it and the fix, raised before
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
import type { ModelFamily } from './family';
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
  const field =
    err.field !== undefined && modelDirOfErr !== undefined && err.field.startsWith(modelDirOfErr + path.sep)
      ? path.relative(modelDirOfErr, err.field).split(path.sep).join('/')
      : f.rel;
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
export async function openModelFile(
  f: ModelFile,
  options: ort.InferenceSession.SessionOptions,
  extras: CreateSessionExtras = {},
  modelDir?: string,
): Promise<ort.InferenceSession> {
  if (!fs.existsSync(f.file)) throw new DivbindError(f.code ?? 'MODEL_MISSING', `${f.rel} is missing (${f.file})`, { field: f.rel, fix: f.fix });
  try {
    return await createSession(f.file, options, extras);
  } catch (ortError) {
    loadModelFile(f, modelDir);
    throw new DivbindError(f.code ?? 'MODEL_INVALID', `${f.rel} cannot be loaded: ${(ortError as Error).message}`, {
      field: f.rel,
      fix: f.fix,
      cause: ortError,
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Input/output contracts, checked on the session's metadata.

const FLOAT_TYPES: readonly string[] = ['float32', 'float16'];
const TIMESTEP_TYPES: readonly string[] = ['int64', 'int32', 'float32', 'float16', 'float64'];

/** The tensor inputs or outputs of a session, with dtype and declared shape. */
export function tensors(meta: readonly ort.InferenceSession.ValueMetadata[]): InputSpec[] {
  return meta
    .filter((m) => m.isTensor)
    .map((m) => ({ name: m.name, type: (m as { type: ort.Tensor.Type }).type, shape: (m as { shape: ReadonlyArray<number | string> }).shape }));
}

function describe(specs: InputSpec[]): string {
  return specs.length === 0 ? 'none' : specs.map((s) => s.name).join(', ');
}

function notA(rel: string, what: string, expected: string, session: ort.InferenceSession): DivbindError {
  return new DivbindError(
    'MODEL_INVALID',
    `${rel} is not ${what}: expected ${expected}; it has inputs ${describe(tensors(session.inputMetadata))} ` +
      `and outputs ${describe(tensors(session.outputMetadata))}`,
    { field: rel, fix: restoreFix(rel) },
  );
}

const isFloat = (s: InputSpec | undefined, rank: number) => s !== undefined && FLOAT_TYPES.includes(s.type) && s.shape.length === rank;

export interface TextEncoderIo {
  ids: InputSpec;
  /** Output with the hidden states the UNet is conditioned on, [batch, T, D]. */
  hidden: InputSpec;
  /** SDXL's second encoder: the pooled, projected output text_embeds [batch, P]. */
  pooled?: InputSpec;
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

/**
 * SDXL: its pipeline's added conditions are UNet inputs, [batch, dim] each: text_embeds = text_encoder_2's pooled
 * output, time_ids = (original size, crop top-left, target size).
 */
export const ADDED_CONDITIONS = ['text_embeds', 'time_ids'] as const;
const TIME_IDS_LENGTH = 6;

/**
 * SDXL's text encoders as Optimum exports them (output_hidden_states): the UNet takes each encoder's penultimate
 * layer, hidden_states.{N-1} of hidden_states.0 (embeddings) … hidden_states.N, without the final LayerNorm.
 * `pooled`: the second encoder, which also gives text_embeds.
 */
export function checkSdxlTextEncoder(pooled: boolean): (session: ort.InferenceSession, rel: string) => TextEncoderIo {
  return (session, rel) => {
    const what = pooled ? "SDXL's second text encoder" : "SDXL's first text encoder";
    const { ids } = checkTextEncoder(session, rel);
    const outputs = tensors(session.outputMetadata);
    const layers = outputs.filter((s) => /^hidden_states\.\d+$/.test(s.name)).sort((a, b) => Number(a.name.slice(14)) - Number(b.name.slice(14)));
    const complete = layers.length >= 3 && layers.every((s, k) => s.name === `hidden_states.${k}` && isFloat(s, 3));
    if (!complete)
      throw notA(
        rel,
        what,
        "outputs hidden_states.0 … hidden_states.N of float [batch, sequence, hidden] (export it with Optimum's SDXL text encoder config)",
        session,
      );
    const textEmbeds = outputs.find((s) => s.name === 'text_embeds');
    if (pooled && !isFloat(textEmbeds, 2)) throw notA(rel, what, 'an output text_embeds of float [batch, projection]', session);
    return { ids, hidden: layers[layers.length - 2]!, ...(pooled ? { pooled: textEmbeds! } : {}) };
  };
}

export interface UnetIo {
  sample: InputSpec;
  timestep: InputSpec;
  encoderHiddenStates: InputSpec;
  /** SDXL's added conditions (ADDED_CONDITIONS, in that order); absent or empty for SD 1.x/2.x. */
  added?: InputSpec[];
  /** The noise prediction output (out_sample). */
  output: InputSpec;
}

/** The UNet inputs beyond sample/timestep/encoder_hidden_states: SDXL's added conditions, both or none. */
function addedConditions(session: ort.InferenceSession, rel: string): InputSpec[] {
  const known = ['sample', 'timestep', 'encoder_hidden_states', ...ADDED_CONDITIONS];
  const unknown = session.inputNames.filter((n) => !known.includes(n));
  if (unknown.length > 0) {
    throw new DivbindError('MODEL_UNSUPPORTED', `${rel} has inputs divbind-native cannot feed: ${unknown.join(', ')}`, {
      field: rel,
      fix: 'use a text-to-image UNet export (inputs sample, timestep, encoder_hidden_states; SDXL also text_embeds and time_ids)',
    });
  }
  const added = ADDED_CONDITIONS.filter((n) => session.inputNames.includes(n)).map((n) => inputSpec(session, n));
  const timeIds = added.find((s) => s.name === 'time_ids')?.shape[1];
  if (added.length === 0) return added;
  if (added.length !== ADDED_CONDITIONS.length || !added.every((s) => isFloat(s, 2)) || (typeof timeIds === 'number' && timeIds !== TIME_IDS_LENGTH)) {
    throw notA(rel, 'an SDXL UNet', `both added-condition inputs text_embeds (float [batch, P]) and time_ids (float [batch, ${TIME_IDS_LENGTH}])`, session);
  }
  return added;
}

export function checkUnet(session: ort.InferenceSession, rel: string = COMPONENT_FILES.unet): UnetIo {
  const expected = 'inputs sample (float [batch, 4, h, w]), timestep and encoder_hidden_states (float [batch, T, D])';
  const names = session.inputNames;
  if (!['sample', 'timestep', 'encoder_hidden_states'].every((n) => names.includes(n))) throw notA(rel, 'a Stable Diffusion UNet', expected, session);
  const io = {
    sample: inputSpec(session, 'sample'),
    timestep: inputSpec(session, 'timestep'),
    encoderHiddenStates: inputSpec(session, 'encoder_hidden_states'),
  };
  const outputs = tensors(session.outputMetadata);
  const output = outputs.find((s) => s.name === 'out_sample') ?? outputs[0];
  if (
    !isFloat(io.sample, 4) ||
    !isFloat(io.encoderHiddenStates, 3) ||
    !TIMESTEP_TYPES.includes(io.timestep.type) ||
    io.timestep.shape.length > 1 ||
    !isFloat(output, 4)
  ) {
    throw notA(rel, 'a Stable Diffusion UNet', `${expected}, and a float output [batch, 4, h, w]`, session);
  }
  return { ...io, added: addedConditions(session, rel), output: output! };
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

function mismatch(rel: string, what: string): DivbindError {
  return new DivbindError('MODEL_INVALID', `${rel} does not fit the UNet: ${what}`, {
    field: rel,
    fix: 'use the components of one export (text encoders, unet and vae_decoder from the same model)',
  });
}

/** The text encoders' hidden sizes add up to the UNet's (SDXL concatenates its two), and text_embeds fits. */
function checkTextFits(texts: readonly TextEncoderIo[], unet: UnetIo): void {
  const names = texts.map((_, k) => (k === 0 ? COMPONENT_FILES.text_encoder : COMPONENT_FILES.text_encoder_2));
  const dims = texts.map((te) => staticDim(te.hidden, 2));
  const dUnet = staticDim(unet.encoderHiddenStates, 2);
  const d = dims.every((x) => x !== null) ? dims.reduce((a, b) => a! + b!, 0)! : null;
  if (d !== null && dUnet !== null && d !== dUnet) {
    const its = texts.length === 1 ? `its hidden size is ${d}` : `their hidden sizes ${dims.join(' + ')} = ${d}`;
    throw mismatch(names.join(' and '), `${its}, the UNet's encoder_hidden_states take ${dUnet}`);
  }
  const pooled = texts.find((te) => te.pooled !== undefined)?.pooled;
  const textEmbeds = unet.added?.find((s) => s.name === 'text_embeds');
  const [p, pUnet] = [pooled && staticDim(pooled, 1), textEmbeds && staticDim(textEmbeds, 1)];
  if (typeof p === 'number' && typeof pUnet === 'number' && p !== pUnet) {
    throw mismatch(COMPONENT_FILES.text_encoder_2, `its text_embeds have ${p} values, the UNet's text_embeds take ${pUnet}`);
  }
}

/**
 * The components fit together: hidden size (summed over SDXL's two encoders), pooled size, latent channels and
 * the VAE factor (where the exports fix them).
 */
export function checkComponentsAgree(
  folder: Pick<ModelFolder, 'vaeScaleFactor'>,
  text: TextEncoderIo | readonly TextEncoderIo[],
  unet: UnetIo,
  vae: VaeDecoderIo,
): void {
  checkTextFits(Array.isArray(text) ? text : [text as TextEncoderIo], unet);
  const [c, cUnet] = [staticDim(vae.latent, 1), staticDim(unet.sample, 1)];
  if (c !== null && cUnet !== null && c !== cUnet) throw mismatch(COMPONENT_FILES.vae_decoder, `it takes ${c} latent channels, the UNet's sample has ${cUnet}`);
  const [h, H] = [staticDim(vae.latent, 2), staticDim(vae.image, 2)];
  if (h !== null && H !== null && H !== h * folder.vaeScaleFactor) {
    throw new DivbindError(
      'MODEL_INVALID',
      `${COMPONENT_FILES.vae_decoder} turns ${h} latent rows into ${H} image rows, but the folder's VAE scale factor is ${folder.vaeScaleFactor}`,
      {
        field: 'vae_scale_factor',
        fix: `set "vae_scale_factor": ${H / h} in vae_decoder/config.json`,
      },
    );
  }
}

/**
 * The UNet is of the folder's family: an SDXL folder's UNet takes the added conditions, and a UNet that takes
 * them is only usable with SDXL's second text encoder (which gives text_embeds).
 */
export function checkUnetFamily(family: ModelFamily, unet: UnetIo, rel: string = COMPONENT_FILES.unet): void {
  const takesAdded = (unet.added ?? []).length > 0;
  if (family.dualTextEncoder && !takesAdded) {
    throw new DivbindError('MODEL_INVALID', `${rel} has no text_embeds/time_ids inputs, but the folder is ${family.label} (${family.evidence.join('; ')})`, {
      field: rel,
      fix: 'use the SDXL UNet of this export (Optimum exports it with text_embeds and time_ids), or the folder of the SD 1.x/2.x model it belongs to',
    });
  }
  if (!family.dualTextEncoder && takesAdded) {
    throw new DivbindError(
      'MODEL_MISSING',
      `${rel} takes SDXL's text_embeds and time_ids, but the folder has no second text encoder (read as ${family.label}: ${family.evidence.join('; ')})`,
      {
        field: COMPONENT_FILES.text_encoder_2,
        fix: 'export the whole SDXL pipeline (optimum-cli export onnx --task text-to-image): text_encoder_2/ and tokenizer_2/ belong beside unet/',
      },
    );
  }
}

/** Opens a component of the folder and checks its contract; the session is released when the check fails. */
export async function openComponent<T>(
  file: string,
  component: ComponentName,
  options: SessionOptions,
  check: (session: ort.InferenceSession, rel: string) => T,
): Promise<{ session: ort.InferenceSession; io: T }> {
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

function tokenizerAt(dir: string, rel: string): ClipTokenizer {
  try {
    return ClipTokenizer.fromDirectory(dir);
  } catch (err) {
    throw new DivbindError('MODEL_INVALID', `${rel} cannot be used: ${(err as Error).message}`, {
      field: rel.replace(/\/$/, ''),
      fix: restoreFix(rel),
      cause: err,
    });
  }
}

/** The folder's CLIP tokenizer; a missing or broken file is MODEL_INVALID naming it. */
export function openTokenizer(folder: Pick<ModelFolder, 'tokenizerDir'>): ClipTokenizer {
  return tokenizerAt(folder.tokenizerDir, 'tokenizer/');
}

/**
 * SDXL's tokenizer_2 (undefined for SD 1.x/2.x). It may pad differently ("!" against EOT) but must split text
 * into the same ids, or the token indices chosen on tokenizer/ would point elsewhere in encoder 2's input.
 */
export function openTokenizer2(folder: Pick<ModelFolder, 'tokenizer2Dir'>, first: ClipTokenizer): ClipTokenizer | undefined {
  if (folder.tokenizer2Dir === undefined) return undefined;
  const second = tokenizerAt(folder.tokenizer2Dir, 'tokenizer_2/');
  const same =
    second.maxLength === first.maxLength &&
    second.sotId === first.sotId &&
    second.eotId === first.eotId &&
    second.encoder.size === first.encoder.size &&
    [...first.encoder].every(([piece, id]) => second.encoder.get(piece) === id);
  if (!same) {
    throw new DivbindError(
      'MODEL_INVALID',
      "tokenizer_2/ does not share tokenizer/'s vocabulary and length: token indices would differ between the two text encoders",
      {
        field: 'tokenizer_2',
        fix: restoreFix('tokenizer_2/'),
      },
    );
  }
  return second;
}

/** The folder's scheduler; an unknown class or bad value in scheduler_config.json is MODEL_INVALID naming it. */
export function openScheduler(folder: Pick<ModelFolder, 'schedulerConfig'>): Scheduler {
  const rel = 'scheduler/scheduler_config.json';
  try {
    return fromConfig(folder.schedulerConfig);
  } catch (err) {
    throw new DivbindError('MODEL_INVALID', `${rel} cannot be used: ${(err as Error).message}`, {
      field: rel,
      fix: `restore ${rel} from the model's export (PNDM, DDIM and Euler schedulers are supported)`,
      cause: err,
    });
  }
}
