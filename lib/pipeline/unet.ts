/**
 * The UNet on onnxruntime, in its two roles:
 *  - CfgUnet: the plain export, ε̂ = ε_u + s·(ε_c − ε_u) from one batch-2 call (two batch-1 calls when the export
 *    has a fixed batch of 1);
 *  - OrtGuidedUnet: the prepared graphs (`divbind-native prepare`): the instrumented UNet that outputs the
 *    cross-attention maps at batch 1, and the VJP graph that returns ∂L/∂sample for given ∂L/∂maps.
 */
import { createSession as createSessionWithData } from '../onnx/model-io';
import { createSession, sessionOptions, fixedBatch, floatInput, floatOutput, inputSpec, ort, scalarInput, type InputSpec, type SessionOptions } from './ort';
import type { GuidedForward, GuidedLayerInfo, GuidedUnet, NoisePredictor } from './sampler';

export interface UnetInputs {
  sample: InputSpec;
  timestep: InputSpec;
  encoderHiddenStates: InputSpec;
}

function unetInputs(session: ort.InferenceSession, what: string): UnetInputs {
  const need = ['sample', 'timestep', 'encoder_hidden_states'];
  const missing = need.filter((n) => !session.inputNames.includes(n));
  if (missing.length) {
    throw new Error(`${what}: missing input(s) ${missing.join(', ')}; a Stable Diffusion UNet export has inputs sample, timestep, encoder_hidden_states (found ${session.inputNames.join(', ')})`);
  }
  return {
    sample: inputSpec(session, 'sample'),
    timestep: inputSpec(session, 'timestep'),
    encoderHiddenStates: inputSpec(session, 'encoder_hidden_states'),
  };
}

export class CfgUnet implements NoisePredictor {
  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly inputs: UnetInputs,
    private readonly outputName: string,
    private readonly latentDims: [number, number, number],
    private readonly uncond: Float32Array,
    private readonly cond: Float32Array,
    private readonly textDims: [number, number],
  ) {}

  static async load(file: string, options: SessionOptions = {}): Promise<{ session: ort.InferenceSession; inputs: UnetInputs }> {
    const session = await createSession(file, options);
    return { session, inputs: unetInputs(session, file) };
  }

  /** Binds one generation's text embeddings ([T, D] each) to a loaded session. */
  static bind(loaded: { session: ort.InferenceSession; inputs: UnetInputs }, latentDims: [number, number, number], uncond: Float32Array, cond: Float32Array, textDims: [number, number]): CfgUnet {
    const out = loaded.session.outputNames.includes('out_sample') ? 'out_sample' : loaded.session.outputNames[0];
    return new CfgUnet(loaded.session, loaded.inputs, out, latentDims, uncond, cond, textDims);
  }

  async predict(latents: Float32Array, timestep: number, guidanceScale: number): Promise<Float32Array> {
    const [T, D] = this.textDims;
    const n = latents.length;
    let epsU: Float32Array;
    let epsC: Float32Array;
    if (fixedBatch(this.inputs.sample) === 1) {
      epsU = await this.run(latents, timestep, this.uncond, 1);
      epsC = await this.run(latents, timestep, this.cond, 1);
    } else {
      const both = new Float32Array(2 * n);
      both.set(latents, 0);
      both.set(latents, n);
      const text = new Float32Array(2 * T * D);
      text.set(this.uncond, 0);
      text.set(this.cond, T * D);
      const eps = await this.run(both, timestep, text, 2);
      epsU = eps.subarray(0, n);
      epsC = eps.subarray(n, 2 * n);
    }
    const out = new Float32Array(n);
    for (let k = 0; k < n; k++) out[k] = epsU[k] + guidanceScale * (epsC[k] - epsU[k]);
    return out;
  }

  private async run(sample: Float32Array, timestep: number, text: Float32Array, batch: number): Promise<Float32Array> {
    const [c, h, w] = this.latentDims;
    const [T, D] = this.textDims;
    const out = await this.session.run({
      sample: floatInput(this.inputs.sample, sample, [batch, c, h, w]),
      timestep: scalarInput(this.inputs.timestep, timestep, batch),
      encoder_hidden_states: floatInput(this.inputs.encoderHiddenStates, text, [batch, T, D]),
    }, [this.outputName]);
    return floatOutput(out[this.outputName], 'UNet output');
  }
}

/** What `prepare` produced, as the pipeline needs it (read from the manifest by prepared.ts). */
export interface PreparedUnetFiles {
  design: 'recompute' | 'residuals';
  /** Instrumented UNet (recompute) or forward-with-residuals graph. */
  forwardFile: string;
  /** VJP graph (recompute) or backward-only graph (residuals). */
  backwardFile: string;
  /** Attention outputs of the forward graph, in layer order. */
  mapOutputs: string[];
  /** Cotangent inputs of the backward graph, aligned with mapOutputs. */
  cotangentInputs: string[];
  /** Residual tensors: forward output name → backward input name (residuals design only). */
  residuals: Array<{ output: string; input: string }>;
  /** Gradient output of the backward graph. */
  gradOutput: string;
  layers: GuidedLayerInfo[];
  /** Latent dims the graphs were prepared for: [C, h, w]. */
  latentDims: [number, number, number];
  textDims: [number, number];
}

export class OrtGuidedUnet implements GuidedUnet {
  readonly layers: readonly GuidedLayerInfo[];

  private constructor(
    private readonly files: PreparedUnetFiles,
    private readonly fwdSession: ort.InferenceSession,
    private readonly bwdSession: ort.InferenceSession,
    private readonly fwdInputs: UnetInputs,
    private readonly bwdInputs: Partial<UnetInputs>,
  ) {
    this.layers = files.layers;
  }

  /** memoryExternalData: weight files ORT cannot reach from the prepared dir (see lib/onnx/model-io.ts). */
  static async load(files: PreparedUnetFiles, options: SessionOptions = {}, memoryExternalData: Array<{ location: string; source: string }> = []): Promise<OrtGuidedUnet> {
    const extras = { externalData: memoryExternalData };
    const fwd = await createSessionWithData(files.forwardFile, sessionOptions(options), extras);
    const bwd = await createSessionWithData(files.backwardFile, sessionOptions(options), extras);
    for (const name of files.mapOutputs) {
      if (!fwd.outputNames.includes(name)) throw new Error(`${files.forwardFile}: prepared graph lacks output ${name}; re-run \`divbind-native prepare --force\``);
    }
    const bwdInputs: Partial<UnetInputs> = {};
    if (bwd.inputNames.includes('sample')) bwdInputs.sample = inputSpec(bwd, 'sample');
    if (bwd.inputNames.includes('timestep')) bwdInputs.timestep = inputSpec(bwd, 'timestep');
    if (bwd.inputNames.includes('encoder_hidden_states')) bwdInputs.encoderHiddenStates = inputSpec(bwd, 'encoder_hidden_states');
    return new OrtGuidedUnet(files, fwd, bwd, unetInputs(fwd, files.forwardFile), bwdInputs);
  }

  private feeds(inputs: Partial<UnetInputs>, sample: Float32Array, timestep: number, cond: Float32Array): Record<string, ort.Tensor> {
    const [c, h, w] = this.files.latentDims;
    const [T, D] = this.files.textDims;
    const feeds: Record<string, ort.Tensor> = {};
    if (inputs.sample) feeds.sample = floatInput(inputs.sample, sample, [1, c, h, w]);
    if (inputs.timestep) feeds.timestep = scalarInput(inputs.timestep, timestep, 1);
    if (inputs.encoderHiddenStates) feeds.encoder_hidden_states = floatInput(inputs.encoderHiddenStates, cond, [1, T, D]);
    return feeds;
  }

  async forward(sample: Float32Array, timestep: number, cond: Float32Array): Promise<GuidedForward> {
    const fetches = [...this.files.mapOutputs, ...this.files.residuals.map((r) => r.output)];
    const out = await this.fwdSession.run(this.feeds(this.fwdInputs, sample, timestep, cond), fetches);
    const maps = this.files.mapOutputs.map((name) => floatOutput(out[name], `attention output ${name}`));
    const residuals = this.files.residuals.map((r) => out[r.output]);
    return { maps, state: { sample, timestep, cond, residuals } };
  }

  async vjp(fwd: GuidedForward, cotangents: Array<Float32Array | null>): Promise<Float32Array> {
    const st = fwd.state as { sample: Float32Array; timestep: number; cond: Float32Array; residuals: ort.Tensor[] };
    const feeds = this.feeds(this.bwdInputs, st.sample, st.timestep, st.cond);
    this.files.cotangentInputs.forEach((name, k) => {
      const map = fwd.maps[k];
      const ct = cotangents[k] ?? new Float32Array(map.length);
      const meta = this.bwdSession.inputMetadata.find((m) => m.name === name);
      const dims = meta && meta.isTensor && meta.shape.every((d) => typeof d === 'number') ? (meta.shape as number[]) : [ct.length];
      feeds[name] = new ort.Tensor('float32', ct, dims);
    });
    this.files.residuals.forEach((r, k) => { feeds[r.input] = st.residuals[k]; });
    const out = await this.bwdSession.run(feeds, [this.files.gradOutput]);
    return Float32Array.from(floatOutput(out[this.files.gradOutput], 'VJP output'));
  }

  async release(): Promise<void> {
    await this.fwdSession.release();
    await this.bwdSession.release();
  }
}
