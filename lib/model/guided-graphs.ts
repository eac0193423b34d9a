/**
 * Opening a prepared set's graphs for the guided UNet, checked against the manifest before use: the forward graph
 * takes the UNet inputs and returns every attention map (and residual) of its layer set with the manifest's dims,
 * the backward graph takes a cotangent per map and returns the gradient. Any mismatch, like any damage, reads as
 * "not prepared: run prepare --force" naming the file.
 */
import type * as ort from 'onnxruntime-node';
import { DivbindError } from '../errors';
import { inputSpec, sessionOptions, type InputSpec, type SessionOptions } from '../pipeline/ort';
import { ADDED_CONDITIONS, openModelFile, tensors, type ModelFile, type UnetIo } from './components';
import type { PreparedInfo, PreparedUnetFiles } from './prepared';

/** The UNet inputs a guided forward reads (a layer subset's forward has no noise prediction output). */
export type GuidedInputs = Omit<UnetIo, 'output'>;

export interface GuidedGraphs {
  forward: ort.InferenceSession;
  backward: ort.InferenceSession;
  forwardIo: GuidedInputs;
}

function expectTensor(session: ort.InferenceSession, kind: 'input' | 'output', name: string, dims: readonly number[] | undefined, f: ModelFile): InputSpec {
  const spec = tensors(kind === 'input' ? session.inputMetadata : session.outputMetadata).find((s) => s.name === name);
  const matches = spec !== undefined && (dims === undefined || (spec.shape.length === dims.length && spec.shape.every((d, i) => d === dims[i])));
  if (!matches) {
    throw new DivbindError(
      'MODEL_NOT_PREPARED',
      `${f.rel} does not match its manifest: ${kind} '${name}'${dims ? ` [${dims.join(', ')}]` : ''} ` +
        `${spec === undefined ? 'is missing' : `is [${spec.shape.join(', ')}]`}`,
      { field: f.rel, fix: f.fix },
    );
  }
  return spec!;
}

/** The forward takes the UNet inputs at the prepared dims and returns every map (and residual) of its set. */
function checkForward(session: ort.InferenceSession, set: PreparedUnetFiles, f: ModelFile): GuidedInputs {
  expectTensor(session, 'input', 'sample', [1, ...set.latentDims], f);
  expectTensor(session, 'input', 'encoder_hidden_states', [1, ...set.textDims], f);
  expectTensor(session, 'input', 'timestep', undefined, f);
  set.mapOutputs.forEach((o, k) => {
    expectTensor(session, 'output', o, set.mapDims[k], f);
  });
  for (const r of set.residuals) expectTensor(session, 'output', r.output, undefined, f);
  const added = ADDED_CONDITIONS.filter((n) => session.inputNames.includes(n)).map((n) => inputSpec(session, n));
  return {
    sample: inputSpec(session, 'sample'),
    timestep: inputSpec(session, 'timestep'),
    encoderHiddenStates: inputSpec(session, 'encoder_hidden_states'),
    added,
  };
}

function checkBackward(session: ort.InferenceSession, set: PreparedUnetFiles, f: ModelFile): void {
  set.cotangentInputs.forEach((c, k) => {
    expectTensor(session, 'input', c, set.mapDims[k], f);
  });
  for (const r of set.residuals) expectTensor(session, 'input', r.input, undefined, f);
  expectTensor(session, 'output', set.gradOutput, undefined, f);
}

/**
 * Opens and checks the forward and backward graphs of one layer set of a ready prepared set (default: the full
 * set); nothing stays open when a check fails.
 */
export async function openGuidedGraphs(info: PreparedInfo, set: PreparedUnetFiles = info.files, options: SessionOptions = {}): Promise<GuidedGraphs> {
  const fix = `run \`${info.rebuild}\``;
  const fwdFile: ModelFile = { file: set.forwardFile, rel: set.forwardFile, fix, code: 'MODEL_NOT_PREPARED' };
  const bwdFile: ModelFile = { file: set.backwardFile, rel: set.backwardFile, fix, code: 'MODEL_NOT_PREPARED' };
  const extras = { externalData: info.memoryExternalData };
  const opened: ort.InferenceSession[] = [];
  try {
    const forward = await openModelFile(fwdFile, sessionOptions(options), extras);
    opened.push(forward);
    const forwardIo = checkForward(forward, set, fwdFile);
    const backward = await openModelFile(bwdFile, sessionOptions(options), extras);
    opened.push(backward);
    checkBackward(backward, set, bwdFile);
    return { forward, backward, forwardIo };
  } catch (err) {
    await Promise.all(opened.map((s) => s.release()));
    throw err;
  }
}
