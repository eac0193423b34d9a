/**
 * Prompt → what the UNet is conditioned on, per model family (lib/model/family.ts):
 *  - SD 1.x/2.x: one CLIP text encoder, encoder_hidden_states = its last_hidden_state [T, D] (SD 2.x exports are
 *    already cut to the penultimate layer + final LayerNorm);
 *  - SDXL: two encoders, encoder_hidden_states = concat(encoder 1's, encoder 2's penultimate hidden states) on the
 *    feature axis [T, D₁ + D₂], plus the pooled text_embeds [P] of encoder 2 (an added UNet input); SDXL's
 *    force_zeros_for_empty_prompt makes an empty negative prompt all zeros (TextConditioner.zeros).
 */
import { checkSdxlTextEncoder, checkTextEncoder, openComponent, openTokenizer2, type TextEncoderIo } from '../model/components';
import type { ModelFolder } from '../model/folder';
import type { ClipTokenizer } from '../tokenizer/clip';
import { floatOutput, ort, type SessionOptions } from './ort';

/** One CLIP text encoder on onnxruntime: token ids → the hidden states its io names (and SDXL's pooled output). */
export class TextEncoder {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly io: TextEncoderIo,
  ) {}

  /** Opens text_encoder/model.onnx and checks it takes token ids and returns hidden states (lib/model). */
  static async load(file: string, options: SessionOptions = {}, role: 'text_encoder' | 'sdxl-1' | 'sdxl-2' = 'text_encoder'): Promise<TextEncoder> {
    const check = role === 'text_encoder' ? checkTextEncoder : checkSdxlTextEncoder(role === 'sdxl-2');
    const { session, io } = await openComponent(file, role === 'sdxl-2' ? 'text_encoder_2' : 'text_encoder', options, check);
    return new TextEncoder(session, io);
  }

  /** Encodes one padded id sequence; returns the hidden states [T·D] and their dims, and the pooled output if any. */
  async encode(ids: readonly number[]): Promise<{ data: Float32Array; dims: number[]; pooled?: Float32Array }> {
    const tensor =
      this.io.ids.type === 'int64'
        ? new ort.Tensor(
            'int64',
            BigInt64Array.from(ids, (v) => BigInt(v)),
            [1, ids.length],
          )
        : new ort.Tensor('int32', Int32Array.from(ids), [1, ids.length]);
    const pooledName = this.io.pooled?.name;
    const out = await this.session.run({ [this.io.ids.name]: tensor }, [this.io.hidden.name, ...(pooledName ? [pooledName] : [])]);
    const hidden = out[this.io.hidden.name]!;
    const data = Float32Array.from(floatOutput(hidden, 'text encoder output'));
    if (pooledName === undefined) return { data, dims: [...hidden.dims] };
    return { data, dims: [...hidden.dims], pooled: Float32Array.from(floatOutput(out[pooledName]!, 'text encoder pooled output')) };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** What the UNet is conditioned on for one prompt. */
export interface TextConditioning {
  /** encoder_hidden_states of batch 1, [T·D] row-major. */
  context: Float32Array;
  /** [T, D]. */
  dims: [number, number];
  /** SDXL: text_embeds of batch 1, [P]. */
  pooled?: Float32Array;
}

/** encoder_hidden_states of SDXL: the rows of a [T, D₁] and b [T, D₂] side by side, [T, D₁ + D₂]. */
function concatFeatures(a: Float32Array, b: Float32Array, T: number): Float32Array {
  const [d1, d2] = [a.length / T, b.length / T];
  const out = new Float32Array(T * (d1 + d2));
  for (let t = 0; t < T; t++) {
    out.set(a.subarray(t * d1, (t + 1) * d1), t * (d1 + d2));
    out.set(b.subarray(t * d2, (t + 1) * d2), t * (d1 + d2) + d1);
  }
  return out;
}

/** The folder's text encoder(s) and tokenizer(s), giving TextConditioning for a prompt (see the file header). */
export class TextConditioner {
  private constructor(
    private readonly tokenizers: ClipTokenizer[],
    private readonly encoders: TextEncoder[],
  ) {}

  /** Opens the folder's encoder(s); SDXL's tokenizer_2 is checked against `tokenizer`. Nothing stays open on failure. */
  static async load(folder: ModelFolder, tokenizer: ClipTokenizer, options: SessionOptions = {}): Promise<TextConditioner> {
    const second = openTokenizer2(folder, tokenizer);
    if (second === undefined || folder.textEncoder2File === undefined) {
      return new TextConditioner([tokenizer], [await TextEncoder.load(folder.textEncoderFile, options)]);
    }
    const first = await TextEncoder.load(folder.textEncoderFile, options, 'sdxl-1');
    try {
      return new TextConditioner([tokenizer, second], [first, await TextEncoder.load(folder.textEncoder2File, options, 'sdxl-2')]);
    } catch (err) {
      await first.release();
      throw err;
    }
  }

  /** Each encoder's checked inputs and outputs (lib/model/components.ts checkComponentsAgree). */
  get ios(): TextEncoderIo[] {
    return this.encoders.map((e) => e.io);
  }

  async encode(prompt: string): Promise<TextConditioning> {
    const outs = [];
    for (let k = 0; k < this.encoders.length; k++) outs.push(await this.encoders[k]!.encode(this.tokenizers[k]!.encode(prompt).ids));
    const T = outs[0]!.dims[1]!;
    const context = outs.length === 1 ? outs[0]!.data : concatFeatures(outs[0]!.data, outs[1]!.data, T);
    const pooled = outs.find((o) => o.pooled !== undefined)?.pooled;
    return { context, dims: [T, context.length / T], ...(pooled ? { pooled } : {}) };
  }

  /** All-zero conditioning of the same shape as `like` (SDXL's force_zeros_for_empty_prompt). */
  static zeros(like: TextConditioning): TextConditioning {
    return { context: new Float32Array(like.context.length), dims: like.dims, ...(like.pooled ? { pooled: new Float32Array(like.pooled.length) } : {}) };
  }

  async release(): Promise<void> {
    for (const e of this.encoders) await e.release();
  }
}
