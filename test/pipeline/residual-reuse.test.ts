/**
 * The guided forward writes its residuals into the previous forward's buffers (lib/pipeline/unet.ts): the gradient
 * of the latest forward must equal that of a fresh process-like session pair, and a superseded forward must be
 * refused rather than differentiated through overwritten residuals.
 */
import test from 'ava';
import { readUnetFolder } from '../../lib/model/folder';
import { locatePrepared } from '../../lib/model/prepared';
import { OrtGuidedUnet } from '../../lib/pipeline/unet';
import { preparedFixtureModel, removeDir } from './prepared-model';

test.serial('residual buffers are reused by the next forward; vjp takes only the latest forward', async (t) => {
  const dir = await preparedFixtureModel();
  try {
    const prepared = locatePrepared(readUnetFolder(dir), { height: 256, width: 256, batch: 1 });
    const cond = Float32Array.from({ length: 77 * 32 }, (_, k) => Math.sin(k));
    const latent = (phase: number) => Float32Array.from({ length: 4 * 32 * 32 }, (_, k) => Math.cos(phase * k));
    const cotangents = (maps: Float32Array[]) => maps.map((m) => m.map((_, k) => Math.sin(0.01 * k)));
    const [z1, z2] = [latent(0.37), latent(0.11)];

    const reference = await OrtGuidedUnet.load(prepared);
    const expected: Float32Array[] = [];
    for (const z of [z1, z2]) {
      const fwd = await reference.forward(z, 500, cond);
      expected.push(await reference.vjp(fwd, cotangents(fwd.maps)));
    }
    await reference.release();

    const unet = await OrtGuidedUnet.load(prepared);
    try {
      const a = await unet.forward(z1, 500, cond);
      const b = await unet.forward(z2, 500, cond);
      const residuals = (f: typeof a) => (f.state as { residuals: { data: unknown }[] }).residuals.map((r) => r.data);
      t.true(residuals(a).length > 0);
      t.true(
        residuals(b).every((d, k) => d === residuals(a)[k]),
        'the second forward wrote into the first one’s buffers',
      );
      await t.throwsAsync(() => unet.vjp(a, cotangents(a.maps)), { message: /superseded forward/ });
      t.deepEqual(await unet.vjp(b, cotangents(b.maps)), expected[1], 'latest forward: the same gradient as fresh sessions');
      const again = await unet.forward(z1, 500, cond);
      t.deepEqual(await unet.vjp(again, cotangents(again.maps)), expected[0], 'after overwriting: the same gradient again');
    } finally {
      await unet.release();
    }
  } finally {
    removeDir(dir);
  }
});
