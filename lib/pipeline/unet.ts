/**
 * The UNet on onnxruntime, in its two roles:
 *  - CfgUnet: the plain export, ε̂ = ε_u + s·(ε_c − ε_u) from one batch-2 call (two batch-1 calls when the export
 *    has a fixed batch of 1);
 *  - OrtGuidedUnet: the prepared graphs (`divbind-native prepare`): the instrumented UNet that outputs the
 *    cross-attention maps at batch 1, and the VJP graph that returns ∂L/∂sample for given ∂L/∂maps.
 */
import { checkUnet, openComponent, type UnetIo } from '../model/components';
import type { UnetFolder } from '../model/folder';
import { openGuidedGraphs } from '../model/guided-graphs';
import { ensurePrepared, type EnsurePreparedOptions } from '../model/prepare';
import { sizeDirName, type PreparedInfo, type PreparedKey, type PreparedUnetFiles } from '../model/prepared';
import { fixedBatch, floatInput, floatOutput, inputSpec, ort, scalarInput, type SessionOptions } from './ort';
import type { GuidedForward, GuidedLayerInfo, GuidedUnet, NoisePredictor } from './sampler';

export type { PreparedUnetFiles };

/** The UNet's inputs and output as its session declares them (checked by lib/model at load). */
export type UnetInputs = UnetIo;

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

  /** Opens unet/model.onnx and checks its inputs and output (lib/model). */
  static async load(file: string, options: SessionOptions = {}): Promise<{ session: ort.InferenceSession; inputs: UnetInputs }> {
    const { session, io } = await openComponent(file, 'unet', options, checkUnet);
    return { session, inputs: io };
  }

  /** Binds one generation's text embeddings ([T, D] each) to a loaded session. */
  static bind(loaded: { session: ort.InferenceSession; inputs: UnetInputs }, latentDims: [number, number, number], uncond: Float32Array, cond: Float32Array, textDims: [number, number]): CfgUnet {
    return new CfgUnet(loaded.session, loaded.inputs, loaded.inputs.output.name, latentDims, uncond, cond, textDims);
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

  /** Opens the forward and backward graphs of a ready prepared set, checked against its manifest (lib/model). */
  static async load(prepared: PreparedInfo, options: SessionOptions = {}): Promise<OrtGuidedUnet> {
    const { forward, backward, forwardIo } = await openGuidedGraphs(prepared, options);
    const bwdInputs: Partial<UnetInputs> = {};
    if (backward.inputNames.includes('sample')) bwdInputs.sample = inputSpec(backward, 'sample');
    if (backward.inputNames.includes('timestep')) bwdInputs.timestep = inputSpec(backward, 'timestep');
    if (backward.inputNames.includes('encoder_hidden_states')) bwdInputs.encoderHiddenStates = inputSpec(backward, 'encoder_hidden_states');
    return new OrtGuidedUnet(prepared.files, forward, backward, forwardIo, bwdInputs);
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

/**
 * The guided UNet per image size: each size's prepared set is located (and, when allowed, prepared), checked and
 * opened once, on first use. A failed lookup is not kept, so a set prepared meanwhile is found by the next call.
 */
export class GuidedUnetsBySize {
  private readonly open = new Map<string, Promise<{ unet: OrtGuidedUnet; prepared: PreparedInfo }>>();

  constructor(private readonly folder: UnetFolder, private readonly options: EnsurePreparedOptions & { session?: SessionOptions }) {}

  get(key: PreparedKey): Promise<{ unet: OrtGuidedUnet; prepared: PreparedInfo }> {
    const id = sizeDirName(key);
    let entry = this.open.get(id);
    if (entry === undefined) {
      entry = (async () => {
        const prepared = await ensurePrepared(this.folder, key, this.options);
        return { prepared, unet: await OrtGuidedUnet.load(prepared, this.options.session) };
      })();
      this.open.set(id, entry);
      entry.catch(() => this.open.delete(id));
    }
    return entry;
  }

  async release(): Promise<void> {
    const entries = [...this.open.values()];
    this.open.clear();
    for (const e of await Promise.allSettled(entries)) if (e.status === 'fulfilled') await e.value.unet.release();
  }
}
