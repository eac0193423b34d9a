/**
 * The UNet on onnxruntime, in its two roles:
 *  - CfgUnet: the plain export, ε̂ = ε_u + s·(ε_c − ε_u) from one batch-2 call (two batch-1 calls when the export
 *    has a fixed batch of 1);
 *  - OrtGuidedUnet: the prepared graphs (`divbind-native prepare`): per layer set, a forward that outputs the
 *    cross-attention maps at batch 1, and the VJP graph that returns ∂L/∂sample for given ∂L/∂maps.
 * SDXL's added conditions (text_embeds, time_ids) are ExtraUnetInputs: fed per CFG row to the plain UNet, and the
 * conditional row to both guided graphs where they take them (the VJP is w.r.t. sample only).
 */
import { ADDED_CONDITIONS, checkUnet, openComponent, type UnetIo } from '../model/components';
import type { UnetFolder } from '../model/folder';
import { openGuidedGraphs, type GuidedInputs } from '../model/guided-graphs';
import { chooseLayerSet } from '../model/layer-sets';
import { ensurePrepared, type EnsurePreparedOptions } from '../model/prepare';
import { sizeDirName, type PreparedInfo, type PreparedKey, type PreparedUnetFiles } from '../model/prepared';
import { fixedBatch, floatInput, floatOutput, inputSpec, ort, scalarInput, type InputSpec, type SessionOptions } from './ort';
import type { GuidedForward, GuidedLayerInfo, GuidedUnet, NoisePredictor } from './sampler';

export type { PreparedUnetFiles };

/** The UNet's inputs and output as its session declares them (checked by lib/model at load). */
export type UnetInputs = UnetIo;

/** A UNet input beyond sample/timestep/encoder_hidden_states (SDXL's text_embeds, time_ids), one row per CFG branch. */
export interface ExtraUnetInput {
  name: string;
  uncond: Float32Array;
  cond: Float32Array;
  /** Dims of one row ([P] for text_embeds, [6] for time_ids). */
  dims: number[];
}

/** Feeds of `extra` for the inputs a session declares in `specs`, with rows `rows` stacked on the batch axis. */
function extraFeeds(
  specs: readonly InputSpec[] | undefined,
  extra: readonly ExtraUnetInput[],
  rows: ReadonlyArray<'uncond' | 'cond'>,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const spec of specs ?? []) {
    const x = extra.find((e) => e.name === spec.name);
    if (x === undefined) throw new Error(`no value for the UNet input '${spec.name}' (the pipeline must pass SDXL's added conditions)`);
    const data = new Float32Array(rows.length * x.cond.length);
    for (let k = 0; k < rows.length; k++) data.set(x[rows[k]!], k * x.cond.length);
    feeds[spec.name] = floatInput(spec, data, [rows.length, ...x.dims]);
  }
  return feeds;
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
    private readonly extra: readonly ExtraUnetInput[],
  ) {}

  /** Opens unet/model.onnx and checks its inputs and output (lib/model). */
  static async load(file: string, options: SessionOptions = {}): Promise<{ session: ort.InferenceSession; inputs: UnetInputs }> {
    const { session, io } = await openComponent(file, 'unet', options, checkUnet);
    return { session, inputs: io };
  }

  /** Binds one generation's text embeddings ([T, D] each) and added conditions (SDXL) to a loaded session. */
  static bind(
    loaded: { session: ort.InferenceSession; inputs: UnetInputs },
    latentDims: [number, number, number],
    uncond: Float32Array,
    cond: Float32Array,
    textDims: [number, number],
    extra: readonly ExtraUnetInput[] = [],
  ): CfgUnet {
    return new CfgUnet(loaded.session, loaded.inputs, loaded.inputs.output.name, latentDims, uncond, cond, textDims, extra);
  }

  async predict(latents: Float32Array, timestep: number, guidanceScale: number): Promise<Float32Array> {
    const [T, D] = this.textDims;
    const n = latents.length;
    let epsU: Float32Array;
    let epsC: Float32Array;
    if (fixedBatch(this.inputs.sample) === 1) {
      epsU = await this.run(latents, timestep, this.uncond, ['uncond']);
      epsC = await this.run(latents, timestep, this.cond, ['cond']);
    } else {
      const both = new Float32Array(2 * n);
      both.set(latents, 0);
      both.set(latents, n);
      const text = new Float32Array(2 * T * D);
      text.set(this.uncond, 0);
      text.set(this.cond, T * D);
      const eps = await this.run(both, timestep, text, ['uncond', 'cond']);
      epsU = eps.subarray(0, n);
      epsC = eps.subarray(n, 2 * n);
    }
    const out = new Float32Array(n);
    for (let k = 0; k < n; k++) out[k] = epsU[k] + guidanceScale * (epsC[k] - epsU[k]);
    return out;
  }

  private async run(sample: Float32Array, timestep: number, text: Float32Array, rows: ReadonlyArray<'uncond' | 'cond'>): Promise<Float32Array> {
    const [c, h, w] = this.latentDims;
    const [T, D] = this.textDims;
    const batch = rows.length;
    const out = await this.session.run(
      {
        sample: floatInput(this.inputs.sample, sample, [batch, c, h, w]),
        timestep: scalarInput(this.inputs.timestep, timestep, batch),
        encoder_hidden_states: floatInput(this.inputs.encoderHiddenStates, text, [batch, T, D]),
        ...extraFeeds(this.inputs.added, this.extra, rows),
      },
      [this.outputName],
    );
    return floatOutput(out[this.outputName], 'UNet output');
  }
}

/** A guided UNet whose forward also takes SDXL's added conditions (the conditional row). */
export interface ConditionedGuidedUnet extends GuidedUnet {
  forward(sample: Float32Array, timestep: number, cond: Float32Array, extra?: readonly ExtraUnetInput[]): Promise<GuidedForward>;
  forLayers?(layers: readonly number[]): Promise<ConditionedGuidedUnet>;
}

/** `unet` with one generation's added conditions bound to every forward, its layer subsets included. */
function withExtra(unet: ConditionedGuidedUnet, extra: readonly ExtraUnetInput[]): GuidedUnet {
  if (extra.length === 0) return unet;
  const bound: GuidedUnet = {
    layers: unet.layers,
    textLength: unet.textLength,
    forward: (sample, t, cond) => unet.forward(sample, t, cond, extra),
    vjp: (fwd, cot) => unet.vjp(fwd, cot),
  };
  const forLayers = unet.forLayers?.bind(unet);
  if (forLayers) bound.forLayers = async (needed) => withExtra(await forLayers(needed), extra);
  return bound;
}

interface GuidedSetState {
  sample: Float32Array;
  timestep: number;
  cond: Float32Array;
  extra: readonly ExtraUnetInput[];
  residuals: ort.Tensor[];
  /** Which forward of the set this was (its residual buffers are reused by the next one). */
  generation: number;
}

/** One layer set's graphs, opened: forward (maps, residuals) and backward (∂L/∂sample) of those layers only. */
class GuidedSetSessions implements ConditionedGuidedUnet {
  readonly layers: readonly GuidedLayerInfo[];
  readonly textLength: number;

  private residualBuffers: ort.Tensor[] | null = null;
  private generation = 0;

  private constructor(
    private readonly files: PreparedUnetFiles,
    private readonly fwdSession: ort.InferenceSession,
    private readonly bwdSession: ort.InferenceSession,
    private readonly fwdInputs: GuidedInputs,
    private readonly bwdInputs: Partial<GuidedInputs>,
  ) {
    this.layers = files.layers;
    this.textLength = files.textDims[0];
  }

  static async open(prepared: PreparedInfo, files: PreparedUnetFiles, options: SessionOptions): Promise<GuidedSetSessions> {
    const { forward, backward, forwardIo } = await openGuidedGraphs(prepared, files, options);
    const bwdInputs: Partial<GuidedInputs> = {};
    if (backward.inputNames.includes('sample')) bwdInputs.sample = inputSpec(backward, 'sample');
    if (backward.inputNames.includes('timestep')) bwdInputs.timestep = inputSpec(backward, 'timestep');
    if (backward.inputNames.includes('encoder_hidden_states')) bwdInputs.encoderHiddenStates = inputSpec(backward, 'encoder_hidden_states');
    bwdInputs.added = ADDED_CONDITIONS.filter((n) => backward.inputNames.includes(n)).map((n) => inputSpec(backward, n));
    return new GuidedSetSessions(files, forward, backward, forwardIo, bwdInputs);
  }

  /** This set with one generation's added conditions (SDXL; the conditional row) bound to every forward. */
  withExtraInputs(extra: readonly ExtraUnetInput[]): GuidedUnet {
    return withExtra(this, extra);
  }

  private feeds(
    inputs: Partial<GuidedInputs>,
    sample: Float32Array,
    timestep: number,
    cond: Float32Array,
    extra: readonly ExtraUnetInput[],
  ): Record<string, ort.Tensor> {
    const [c, h, w] = this.files.latentDims;
    const [T, D] = this.files.textDims;
    const feeds: Record<string, ort.Tensor> = extraFeeds(inputs.added, extra, ['cond']);
    if (inputs.sample) feeds.sample = floatInput(inputs.sample, sample, [1, c, h, w]);
    if (inputs.timestep) feeds.timestep = scalarInput(inputs.timestep, timestep, 1);
    if (inputs.encoderHiddenStates) feeds.encoder_hidden_states = floatInput(inputs.encoderHiddenStates, cond, [1, T, D]);
    return feeds;
  }

  /**
   * The maps (fresh arrays) and the residuals of one forward. onnxruntime writes the residuals into the buffers of
   * the previous forward: allocating and faulting in a new set (249 MiB for SD 1.5 at 256²) cost 0.1–0.5 s per
   * forward. So a forward's residuals are valid until the next forward on this set, which is how the sampler uses
   * them; vjp() refuses an older forward rather than differentiate through overwritten residuals.
   */
  async forward(sample: Float32Array, timestep: number, cond: Float32Array, extra: readonly ExtraUnetInput[] = []): Promise<GuidedForward> {
    const fetches: Record<string, ort.Tensor | null> = {};
    for (const name of this.files.mapOutputs) fetches[name] = null;
    this.files.residuals.forEach((r, k) => {
      fetches[r.output] = this.residualBuffers?.[k] ?? null;
    });
    const generation = ++this.generation;
    const out = await this.fwdSession.run(this.feeds(this.fwdInputs, sample, timestep, cond, extra), fetches);
    const maps = this.files.mapOutputs.map((name) => floatOutput(out[name], `attention output ${name}`));
    const residuals = this.files.residuals.map((r, k) => this.residualBuffers?.[k] ?? out[r.output]);
    this.residualBuffers = residuals;
    return { maps, state: { sample, timestep, cond, extra, residuals, generation } };
  }

  async vjp(fwd: GuidedForward, cotangents: Array<Float32Array | null>): Promise<Float32Array> {
    const st = fwd.state as GuidedSetState;
    if (st.generation !== this.generation) {
      throw new Error(
        'vjp() of a superseded forward: its residuals were overwritten by a later forward() on the same layer set; call vjp() before the next forward()',
      );
    }
    const feeds = this.feeds(this.bwdInputs, st.sample, st.timestep, st.cond, st.extra);
    this.files.cotangentInputs.forEach((name, k) => {
      feeds[name] = new ort.Tensor('float32', cotangents[k] ?? new Float32Array(fwd.maps[k].length), this.files.mapDims[k]);
    });
    this.files.residuals.forEach((r, k) => {
      feeds[r.input] = st.residuals[k];
    });
    const out = await this.bwdSession.run(feeds, [this.files.gradOutput]);
    return Float32Array.from(floatOutput(out[this.files.gradOutput], 'VJP output'));
  }

  async release(): Promise<void> {
    await this.fwdSession.release();
    await this.bwdSession.release();
  }
}

/**
 * The guided UNet of a ready prepared set: the full layer set, and the layer subsets `prepare` built for losses
 * that read fewer layers (lib/model/layer-sets.ts). Each set's sessions are opened on first use, so a process
 * holds only the graphs its losses need; forward() and vjp() run the full set.
 */
export class OrtGuidedUnet implements ConditionedGuidedUnet {
  readonly layers: readonly GuidedLayerInfo[];
  readonly textLength: number;
  private readonly opened = new Map<PreparedUnetFiles, Promise<GuidedSetSessions>>();

  private constructor(
    private readonly prepared: PreparedInfo,
    private readonly options: SessionOptions,
  ) {
    this.layers = prepared.files.layers;
    this.textLength = prepared.files.textDims[0];
  }

  /** The guided UNet of a ready prepared set; its graphs are opened and checked against the manifest on first use. */
  static async load(prepared: PreparedInfo, options: SessionOptions = {}): Promise<OrtGuidedUnet> {
    return new OrtGuidedUnet(prepared, options);
  }

  /** The sessions of one layer set, opened once (a failed open is retried by the next call). */
  private open(files: PreparedUnetFiles): Promise<GuidedSetSessions> {
    let entry = this.opened.get(files);
    if (entry === undefined) {
      entry = GuidedSetSessions.open(this.prepared, files, this.options);
      this.opened.set(files, entry);
      entry.catch(() => this.opened.delete(files));
    }
    return entry;
  }

  /** The smallest prepared layer set holding every layer of `needed` (indices into `layers`). */
  forLayers(needed: readonly number[]): Promise<ConditionedGuidedUnet> {
    return this.open(chooseLayerSet([...this.prepared.layerSets, this.prepared.files], needed) ?? this.prepared.files);
  }

  async forward(sample: Float32Array, timestep: number, cond: Float32Array, extra: readonly ExtraUnetInput[] = []): Promise<GuidedForward> {
    return (await this.open(this.prepared.files)).forward(sample, timestep, cond, extra);
  }

  /** This UNet with one generation's added conditions (SDXL; the conditional row) bound to every forward. */
  withExtraInputs(extra: readonly ExtraUnetInput[]): GuidedUnet {
    return withExtra(this, extra);
  }

  async vjp(fwd: GuidedForward, cotangents: Array<Float32Array | null>): Promise<Float32Array> {
    return (await this.open(this.prepared.files)).vjp(fwd, cotangents);
  }

  async release(): Promise<void> {
    const sets = [...this.opened.values()];
    this.opened.clear();
    for (const s of await Promise.allSettled(sets)) if (s.status === 'fulfilled') await s.value.release();
  }
}

/**
 * The guided UNet per image size: each size's prepared set is located (and, when allowed, prepared), checked and
 * opened once, on first use. A failed lookup is not kept, so a set prepared meanwhile is found by the next call.
 */
export class GuidedUnetsBySize {
  private readonly open = new Map<string, Promise<{ unet: OrtGuidedUnet; prepared: PreparedInfo }>>();

  constructor(
    private readonly folder: UnetFolder,
    private readonly options: EnsurePreparedOptions & { session?: SessionOptions },
  ) {}

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
