/** CLIP text encoder on onnxruntime: token ids → last_hidden_state [1, T, D]. */
import { createSession, inputSpec, floatOutput, ort, type SessionOptions } from './ort';

export class TextEncoder {
  private constructor(private readonly session: ort.InferenceSession, private readonly inputName: string, private readonly idType: ort.Tensor.Type) {}

  static async load(file: string, options: SessionOptions = {}): Promise<TextEncoder> {
    const session = await createSession(file, options);
    const name = session.inputNames.includes('input_ids') ? 'input_ids' : session.inputNames[0];
    const spec = inputSpec(session, name);
    if (spec.type !== 'int32' && spec.type !== 'int64') {
      throw new Error(`text encoder input "${name}" has type ${spec.type}; expected int32 or int64 token ids`);
    }
    return new TextEncoder(session, name, spec.type);
  }

  /** Encodes one padded id sequence; returns the hidden states [T·D] and their dims. */
  async encode(ids: readonly number[]): Promise<{ data: Float32Array; dims: number[] }> {
    const tensor = this.idType === 'int64'
      ? new ort.Tensor('int64', BigInt64Array.from(ids, (v) => BigInt(v)), [1, ids.length])
      : new ort.Tensor('int32', Int32Array.from(ids), [1, ids.length]);
    const out = await this.session.run({ [this.inputName]: tensor });
    const hidden = out.last_hidden_state ?? out[this.session.outputNames[0]];
    return { data: Float32Array.from(floatOutput(hidden, 'text encoder output')), dims: [...hidden.dims] };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
