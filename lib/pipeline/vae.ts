/** VAE decoder on onnxruntime: latents / scalingFactor → image in [-1, 1]. */
import { checkVaeDecoder, openComponent, type VaeDecoderIo } from '../model/components';
import { floatInput, floatOutput, type ort, type SessionOptions } from './ort';

export class VaeDecoder {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly io: VaeDecoderIo,
  ) {}

  /** Opens vae_decoder/model.onnx and checks it takes one latent and returns an image (lib/model). */
  static async load(file: string, options: SessionOptions = {}): Promise<VaeDecoder> {
    const { session, io } = await openComponent(file, 'vae_decoder', options, checkVaeDecoder);
    return new VaeDecoder(session, io);
  }

  /** Decodes one latent [C, h, w] (already divided by the scaling factor) → image [3, H, W] in [-1, 1]. */
  async decode(latents: Float32Array, dims: [number, number, number, number]): Promise<{ data: Float32Array; dims: number[] }> {
    const out = await this.session.run({ [this.io.latent.name]: floatInput(this.io.latent, latents, dims) }, [this.io.image.name]);
    const image = out[this.io.image.name]!;
    return { data: floatOutput(image, 'VAE decoder output'), dims: [...image.dims] };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
