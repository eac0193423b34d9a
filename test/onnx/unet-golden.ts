/**
 * The reference UNet variants and the PyTorch golden gradients of the loss cases, as the VJP tests read them
 * (test/fixtures/golden/losses, tools/make_model_golden.py): per case, dL/dprobs of the cross-attention maps that
 * reach L (`gradMaps`, every other map's is 0) and dL/dsample through a float64 copy of the UNet (`gradSample`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadModel } from '../../lib/onnx/model-io';
import type { ModelProto } from '../../lib/onnx/proto';
import { inferStaticShapes } from '../../lib/onnx/shapes';
import { readNpy } from '../../lib/util/npy';
import { fixturePath } from '../helpers/fixtures';

export const GOLDEN = fixturePath('golden');

/** attn2 (cross-attention) Softmax outputs in graph order, located by the module scope in node names. */
export function crossAttentionSoftmaxOutputs(model: ModelProto): string[] {
  return model.graph!.node.filter((n) => n.op_type === 'Softmax' && /attn2/.test(n.name ?? '')).map((n) => n.output[0]);
}

export interface LossCase {
  name: string;
  options: Record<string, unknown> & { tokenIndices: number[] };
  gradMaps: { layer: number; file: string }[];
  gradSample: string;
}

/** The loss cases with a gradient. */
export function lossCases(): LossCase[] {
  const manifest = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'losses/manifest.json'), 'utf8')) as { cases: LossCase[] };
  return manifest.cases.filter((c) => c.gradMaps.length > 0);
}

export interface Variant {
  name: string;
  dir: string;
  model: string;
  timestep: { dtype: string; shape: number[] };
}

export const variants = (JSON.parse(fs.readFileSync(fixturePath('models/unet-variants/variants.json'), 'utf8')) as { variants: Variant[] }).variants;

/** A variant's model, the golden inputs as feeds, static shapes and its cross-attention maps in graph order. */
export async function setUpVariant(v: Variant) {
  const loaded = loadModel(fixturePath('models/unet-variants', v.dir, v.model));
  const model: ModelProto = loaded.model;
  const sample = readNpy(path.join(GOLDEN, 'unet/sample.npy'));
  const ehs = readNpy(path.join(GOLDEN, 'unet/encoder_hidden_states.npy'));
  const unetManifest = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'unet/manifest.json'), 'utf8')) as {
    timestep: number;
    attention: { layers: { shape: number[] }[] };
  };
  const tsDims = v.timestep.shape;
  const timestep =
    v.timestep.dtype === 'int64'
      ? new ort.Tensor('int64', BigInt64Array.of(BigInt(unetManifest.timestep)), tsDims)
      : new ort.Tensor('float32', Float32Array.of(unetManifest.timestep), tsDims);
  const feeds = {
    sample: new ort.Tensor('float32', Float32Array.from(sample.data as Float32Array), sample.shape),
    timestep,
    encoder_hidden_states: new ort.Tensor('float32', Float32Array.from(ehs.data as Float32Array), ehs.shape),
  };
  const shapes = await inferStaticShapes(model, { sample: sample.shape, encoder_hidden_states: ehs.shape });
  const maps = crossAttentionSoftmaxOutputs(model);
  return { model, loaded, feeds, shapes, maps, layers: unetManifest.attention.layers };
}

/** The case's golden dL/dprobs as cotangents of `maps` (only those listed: zeros for the rest unless `only`). */
export function cotangentsFor(c: LossCase, maps: string[], shapes: Map<string, { dims: number[] }>, only = false): Record<string, ort.Tensor> {
  const cot: Record<string, ort.Tensor> = {};
  const zeros = (m: string) => {
    const dims = shapes.get(m)!.dims;
    return new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
  };
  if (!only) for (const m of maps) cot[m] = zeros(m);
  for (const g of c.gradMaps) {
    const arr = readNpy(path.join(GOLDEN, 'losses', g.file));
    const dims = shapes.get(maps[g.layer])!.dims;
    cot[maps[g.layer]] = new ort.Tensor('float32', Float32Array.from(arr.data as Float32Array), dims);
  }
  return cot;
}

/** The golden dL/dsample of a case (float64). */
export function goldenGradSample(c: LossCase): Float64Array {
  return readNpy(path.join(GOLDEN, 'losses', c.gradSample)).data as Float64Array;
}
