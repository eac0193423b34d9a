/**
 * Opening a prepared set's graphs for the guided UNet, checked against the manifest before use: the forward graph
 * is a UNet that returns every attention map (and residual) with the manifest's dims, the backward graph takes a
 * cotangent per map and returns the gradient. Any mismatch, like any damage, reads as "not prepared: run prepare
 * --force" naming the file.
 */
import type * as ort from 'onnxruntime-node';
import { DivbindError, isDivbindError } from '../errors';
import { sessionOptions, type SessionOptions } from '../pipeline/ort';
import { checkUnet, openModelFile, tensors, type ModelFile, type UnetIo } from './components';
import type { PreparedInfo } from './prepared';

export interface GuidedGraphs {
  forward: ort.InferenceSession;
  backward: ort.InferenceSession;
  forwardIo: UnetIo;
}

function expectTensor(session: ort.InferenceSession, kind: 'input' | 'output', name: string, dims: number[] | undefined, f: ModelFile): void {
  const spec = tensors(kind === 'input' ? session.inputMetadata : session.outputMetadata).find((s) => s.name === name);
  const matches = spec !== undefined && (dims === undefined || (spec.shape.length === dims.length && spec.shape.every((d, i) => d === dims[i])));
  if (!matches) {
    throw new DivbindError('MODEL_NOT_PREPARED', `${f.rel} does not match its manifest: ${kind} '${name}'${dims ? ` [${dims.join(', ')}]` : ''} `
      + `${spec === undefined ? 'is missing' : `is [${spec.shape.join(', ')}]`}`, { field: f.rel, fix: f.fix });
  }
}

function checkForward(session: ort.InferenceSession, info: PreparedInfo, f: ModelFile): UnetIo {
  let io: UnetIo;
  try {
    io = checkUnet(session, f.rel);
  } catch (err) {
    if (!isDivbindError(err)) throw err;
    throw new DivbindError('MODEL_NOT_PREPARED', err.message, { field: f.rel, fix: f.fix, cause: err });
  }
  info.files.mapOutputs.forEach((o, k) => expectTensor(session, 'output', o, info.files.mapDims[k], f));
  for (const r of info.files.residuals) expectTensor(session, 'output', r.output, undefined, f);
  return io;
}

function checkBackward(session: ort.InferenceSession, info: PreparedInfo, f: ModelFile): void {
  info.files.cotangentInputs.forEach((c, k) => expectTensor(session, 'input', c, info.files.mapDims[k], f));
  for (const r of info.files.residuals) expectTensor(session, 'input', r.input, undefined, f);
  expectTensor(session, 'output', info.files.gradOutput, undefined, f);
}

/** Opens and checks the forward and backward graphs of a ready set; nothing stays open when a check fails. */
export async function openGuidedGraphs(info: PreparedInfo, options: SessionOptions = {}): Promise<GuidedGraphs> {
  const fix = `run \`${info.rebuild}\``;
  const fwdFile: ModelFile = { file: info.files.forwardFile, rel: info.files.forwardFile, fix, code: 'MODEL_NOT_PREPARED' };
  const bwdFile: ModelFile = { file: info.files.backwardFile, rel: info.files.backwardFile, fix, code: 'MODEL_NOT_PREPARED' };
  const extras = { externalData: info.memoryExternalData };
  const opened: ort.InferenceSession[] = [];
  try {
    const forward = await openModelFile(fwdFile, sessionOptions(options), extras);
    opened.push(forward);
    const forwardIo = checkForward(forward, info, fwdFile);
    const backward = await openModelFile(bwdFile, sessionOptions(options), extras);
    opened.push(backward);
    checkBackward(backward, info, bwdFile);
    return { forward, backward, forwardIo };
  } catch (err) {
    await Promise.all(opened.map((s) => s.release()));
    throw err;
  }
}
