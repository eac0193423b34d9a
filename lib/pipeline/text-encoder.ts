/** CLIP text encoder on onnxruntime: token ids → last_hidden_state [1, T, D]. */
import { checkTextEncoder, openComponent, type TextEncoderIo } from '../model/components';
import { floatOutput, ort, type SessionOptions } from './ort';

export class TextEncoder {
  private constructor(private readonly session: ort.InferenceSession, readonly io: TextEncoderIo) {}

  /** Opens text_encoder/model.onnx and checks it takes token ids and returns hidden states (lib/model). */
  static async load(file: string, options: SessionOptions = {}): Promise<TextEncoder> {
    const { session, io } = await openComponent(file, 'text_encoder', options, checkTextEncoder);
    return new TextEncoder(session, io);
  }

  /** Encodes one padded id sequence; returns the hidden states [T·D] and their dims. */
  async encode(ids: readonly number[]): Promise<{ data: Float32Array; dims: number[] }> {
    const tensor = this.io.ids.type === 'int64'
      ? new ort.Tensor('int64', BigInt64Array.from(ids, (v) => BigInt(v)), [1, ids.length])
      : new ort.Tensor('int32', Int32Array.from(ids), [1, ids.length]);
    const out = await this.session.run({ [this.io.ids.name]: tensor }, [this.io.hidden.name]);
    const hidden = out[this.io.hidden.name]!;
    return { data: Float32Array.from(floatOutput(hidden, 'text encoder output')), dims: [...hidden.dims] };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
