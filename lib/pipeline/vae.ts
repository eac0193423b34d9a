/** VAE decoder on onnxruntime: latents / scalingFactor → image in [-1, 1]. */
import { createSession, floatInput, floatOutput, inputSpec, ort, type InputSpec, type SessionOptions } from './ort';

/** SD 1.x/2.x VAE scaling factor (vae/config.json "scaling_factor"). */
export const DEFAULT_VAE_SCALING_FACTOR = 0.18215;

export class VaeDecoder {
  private constructor(private readonly session: ort.InferenceSession, private readonly input: InputSpec) {}

  static async load(file: string, options: SessionOptions = {}): Promise<VaeDecoder> {
    const session = await createSession(file, options);
    const name = session.inputNames.includes('latent_sample') ? 'latent_sample' : session.inputNames[0];
    return new VaeDecoder(session, inputSpec(session, name));
  }

  /** Decodes one latent [C, h, w] (already divided by the scaling factor) → image [3, H, W] in [-1, 1]. */
  async decode(latents: Float32Array, dims: [number, number, number, number]): Promise<{ data: Float32Array; dims: number[] }> {
    const out = await this.session.run({ [this.input.name]: floatInput(this.input, latents, dims) });
    const image = out.sample ?? out[this.session.outputNames[0]];
    return { data: floatOutput(image, 'VAE decoder output'), dims: [...image.dims] };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
