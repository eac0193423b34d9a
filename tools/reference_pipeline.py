#!/usr/bin/python3
"""Reference Divide & Bind / Attend-and-Excite sampling trajectories on the tiny SD model (spec §3).

    /usr/bin/python3 tools/reference_pipeline.py [--out test/fixtures/golden/trajectories] [--modes none,max,tv,tv_bind]

One denoising iteration i at timestep t (spec §3, with N = len(timesteps), α_i = scaleFactor·√linspace(1, .5, N)[i]):
  1. gradient pass: UNet(z, t, cond) at batch 1, cross-attention maps → (L, θ) with tools/divbind_reference.py;
  2. iterative refinement when i ∈ thresholds and θ < thresholds[i]:
       repeat { iter += 1; forward at z; if L ≠ 0: z ← z − α_i∇L; stop if θ (before the update) ≥ thr or
                iter = cap }, then one more forward for a fresh L;
  3. if i < maxIterToAlter and L ≠ 0: z ← z − α_i∇L;
  4. CFG: ε_u, ε_c = UNet([z, z], t, [uncond, cond]); ε = ε_u + g(ε_c − ε_u); z = PNDM.step(ε, t, z).
Then decode z / 0.18215 with the VAE; image = clamp(x/2 + 0.5, 0, 1), stored as uint8 round(255·image), HWC.

Each trajectory runs twice, in float32 and in float64 (the same float32 weights and initial latent, widened); the
golden is the float64 run and the JSON records the float32-vs-float64 relative L2 difference of the final latent.
Refinement caps are chosen so that difference stays ≤ 1e-4 (a parity target must be numerically stable).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import divbind_reference as dbr  # noqa: E402  (part A: losses)
import make_reference_models as mrm  # noqa: E402
import schedulers_reference as sched_ref  # noqa: E402  (part A: PNDM)

REPO = mrm.REPO
PROMPT = 'a red cat and a blue dog'
TOKEN_INDICES = [3, 7]  # cat, dog
ATTRIBUTE_INDICES = [2, 6]  # red, blue
LATENT_SEED = 42
NUM_INFERENCE_STEPS = 10  # PNDM/PLMS → 11 timesteps
GUIDANCE = 7.5
SCALE_FACTOR = 20.0
SCALE_RANGE = (1.0, 0.5)
# ~25/51 of the steps, as SD 1.5's max_iter_to_alter = 25 of 51 timesteps; i = 10 then refines without the
# final single update (refinement is gated by the thresholds only, spec §3).
MAX_ITER_TO_ALTER = 5
LOSS_OPTIONS = dict(attentionResolution=8, attributeResolutions=[32, 16])

# Thresholds are set so refinement really runs at i = 0 and i = 10 on this tiny model (its θ values are
# not SD's), and caps small enough for float32/float64 agreement (checked below).
MODES = {
    'none': None,
    'max': dict(mode='max', thresholds={0: 0.3, 10: 0.8}, caps=(5, 3)),
    'tv': dict(mode='tv', thresholds={0: 0.05, 10: 0.2}, caps=(5, 3)),
    'tv_bind': dict(mode='tv_bind', thresholds={0: 0.05, 10: 0.2}, caps=(5, 3), attributes=ATTRIBUTE_INDICES),
}


def step_sizes(n: int) -> list:
    return [SCALE_FACTOR * math.sqrt(v) for v in np.linspace(SCALE_RANGE[0], SCALE_RANGE[1], n)]


class Guidance:
    def __init__(self, unet, cond, spec, dtype):
        self.unet, self.cond, self.spec, self.dtype = unet, cond, spec, dtype

    def loss(self, z, t, i):
        """Gradient pass: returns (L (tensor, graph to z), θ)."""
        store = []
        self.unet.set_attention_store(store)
        try:
            self.unet(z, t, self.cond)
        finally:
            self.unet.set_attention_store(None)
        layers = []
        for name, p in store:
            r = int(round(p.shape[2] ** 0.5))
            # The loss runs in float64 in both runs; only the UNet's dtype differs.
            layers.append(dict(probs=p[0].double(), resolution=r, place=name.split('.')[0]))
        opts = dict(mode=self.spec['mode'], tokenIndices=TOKEN_INDICES, stepIndex=i, **LOSS_OPTIONS)
        if self.spec.get('attributes'):
            opts['attributeIndices'] = self.spec['attributes']
        res = dbr.attention_loss(layers, **dbr.options_from_camel(opts))
        return res['loss'], float(res['indicator'])

    def update(self, z, loss, alpha):
        if float(loss) == 0.0 or not loss.requires_grad:
            return z.detach(), False
        g = torch.autograd.grad(loss, z)[0]
        return (z - alpha * g).detach(), True


def run(mode: str, dtype: torch.dtype, models, latent0: np.ndarray):
    tok, te, unet, vae = models
    te, unet, vae = te.to(dtype), unet.to(dtype), vae.to(dtype)
    spec = MODES[mode]
    ids = torch.tensor([tok(PROMPT), tok('')], dtype=torch.int64)
    with torch.no_grad():
        hidden = te(ids)[0]
    cond, uncond = hidden[0:1], hidden[1:2]
    sched = sched_ref.PNDMScheduler(**mrm.SD15_SCHEDULER)  # = models/tiny-sd/scheduler/scheduler_config.json
    sched.set_timesteps(NUM_INFERENCE_STEPS)
    timesteps = [int(t) for t in sched.timesteps]
    alphas = step_sizes(len(timesteps))
    z = torch.from_numpy(latent0).to(dtype)
    guide = Guidance(unet, cond, spec, dtype) if spec else None
    record = dict(timesteps=timesteps, stepSizes=alphas, steps=[])
    latents, updated_latents = [], []
    for i, t in enumerate(timesteps):
        tt = torch.tensor([t])
        info = dict(i=i, t=t)
        if guide is not None:
            zg = z.detach().requires_grad_(True)
            loss, theta = guide.loss(zg, tt, i)
            info.update(loss=float(loss), indicator=theta, refinementIterations=0)
            thr = spec['thresholds'].get(i)
            if thr is not None and theta < thr:
                cap = spec['caps'][0] if i == 0 else spec['caps'][1]
                iters, zr = 0, z.detach()
                refine = []
                while True:
                    iters += 1
                    zr = zr.detach().requires_grad_(True)
                    l_r, th_r = guide.loss(zr, tt, i)
                    refine.append(dict(loss=float(l_r), indicator=th_r))
                    zr, _ = guide.update(zr, l_r, alphas[i])
                    if th_r >= thr or iters >= cap:
                        break
                zg = zr.detach().requires_grad_(True)
                loss, theta = guide.loss(zg, tt, i)
                info.update(refinementIterations=iters, refinement=refine, lossAfterRefinement=float(loss),
                            indicatorAfterRefinement=theta)
            did = False
            if i < MAX_ITER_TO_ALTER:
                zg, did = guide.update(zg, loss, alphas[i])
            info['updated'] = did
            z = zg.detach()
        updated_latents.append(z.detach().clone())
        with torch.no_grad():
            eps = unet(torch.cat([z, z]), tt, torch.cat([uncond, cond]))
            eps_u, eps_c = eps[0:1], eps[1:2]
            eps = eps_u + GUIDANCE * (eps_c - eps_u)
            # The reference PNDM evaluates each step in float64; the result is rounded to the run's dtype.
            z = torch.from_numpy(sched.step(eps.numpy(), t, z.numpy())['prev_sample']).to(dtype)
        latents.append(z.detach().clone())
        record['steps'].append(info)
    with torch.no_grad():
        img = vae(z / mrm.VAE_SCALING)
        img = (img / 2 + 0.5).clamp(0, 1)
    img_u8 = (img[0].permute(1, 2, 0).double().numpy() * 255).round().astype(np.uint8)
    return dict(record=record, latents=torch.stack(latents).numpy(), updated=torch.stack(updated_latents).numpy(),
                image=img_u8, image_float=img[0].double().numpy())


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(REPO, 'test', 'fixtures', 'golden', 'trajectories'))
    ap.add_argument('--modes', default=','.join(MODES))
    args = ap.parse_args()
    torch.set_num_threads(2)
    latent0 = torch.randn(1, 4, mrm.LATENT, mrm.LATENT, generator=torch.Generator().manual_seed(LATENT_SEED)).numpy()
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, 'initial_latent.npy'), latent0)
    index_path = os.path.join(args.out, 'index.json')
    index = json.load(open(index_path)) if os.path.exists(index_path) else {'cases': []}
    cases = {c['name']: c for c in index['cases']}
    failures = []
    for mode in args.modes.split(','):
        t0 = time.time()
        r64 = run(mode, torch.float64, mrm.build_models(), latent0)
        t1 = time.time()
        r32 = run(mode, torch.float32, mrm.build_models(), latent0)
        t2 = time.time()
        diff = rel_l2(r32['latents'][-1], r64['latents'][-1])
        per_step = [rel_l2(a, b) for a, b in zip(r32['latents'], r64['latents'])]
        img_diff = int(np.abs(r32['image'].astype(int) - r64['image'].astype(int)).max())
        print(f'{mode}: float64 {t1 - t0:.1f}s, float32 {t2 - t1:.1f}s; final latent rel L2 f32 vs f64 = {diff:.3e}; '
              f'max image diff {img_diff}/255')
        for s in r64['record']['steps']:
            if 'loss' in s:
                print(f'   i={s["i"]:2d} t={s["t"]:3d} L={s["loss"]:+.6f} θ={s["indicator"]:.6f} '
                      f'refine={s["refinementIterations"]} updated={s["updated"]}')
        spec = MODES[mode]
        n_failures = len(failures)
        if spec is not None:
            steps = r64['record']['steps']
            for key in spec['thresholds']:
                if steps[key]['refinementIterations'] == 0:
                    failures.append(f'{mode}: no refinement at i = {key}; raise the threshold')
        print('   per-step latent rel L2 f32 vs f64:', ' '.join(f'{x:.1e}' for x in per_step))
        if diff > 1e-4:
            failures.append(f'{mode}: float32 vs float64 final latents differ by {diff:.3e} > 1e-4; '
                            f'reduce the refinement caps or step sizes')
            continue
        if len(failures) > n_failures:
            continue
        d = os.path.join(args.out, mode)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        np.save(os.path.join(d, 'latents.npy'), r64['latents'].astype(np.float32))
        np.save(os.path.join(d, 'guided_latents.npy'), r64['updated'].astype(np.float32))
        np.save(os.path.join(d, 'image.npy'), r64['image'])
        options = dict(prompt=PROMPT, negativePrompt='', numInferenceSteps=NUM_INFERENCE_STEPS,
                       guidanceScale=GUIDANCE, scheduler='PNDM (models/tiny-sd/scheduler/scheduler_config.json)',
                       initialLatent='initial_latent.npy', vaeScalingFactor=mrm.VAE_SCALING)
        if spec is not None:
            thresholds = {str(k): v for k, v in spec['thresholds'].items()}
            options.update(mode=spec['mode'], tokenIndices=TOKEN_INDICES,
                           attributeIndices=spec.get('attributes'), thresholds=thresholds,
                           maxRefinementStepsInitStep=spec['caps'][0], maxRefinementSteps=spec['caps'][1],
                           scaleFactor=SCALE_FACTOR, scaleRange=list(SCALE_RANGE), maxIterToAlter=MAX_ITER_TO_ALTER,
                           lossOptions=LOSS_OPTIONS, lossPrecision='float64 (the UNet runs in the stated dtype)')
        else:
            options.update(mode='none')
        cases[mode] = dict(
            name=mode, options=options, record=r64['record'],
            files=dict(latents=f'{mode}/latents.npy', guidedLatents=f'{mode}/guided_latents.npy',
                       image=f'{mode}/image.npy'),
            float32VsFloat64=dict(finalLatentRelL2=diff, perStepLatentRelL2=per_step, maxImageDiff=img_diff,
                                  float32Record=r32['record']),
        )
        index = dict(
            version=1, generator='tools/reference_pipeline.py',
            note='latents.npy: (11, 1, 4, 32, 32) float32, the latent after each PNDM step (float64 run, rounded); '
                 'guided_latents.npy: the latent fed to the CFG pass at each step (after refinement and the '
                 'single update); image.npy: uint8 (256, 256, 3) of the decoded final latent. record.steps: '
                 'the gradient-pass L and θ, refinement iterations (each iteration\'s L and θ before its '
                 'update), L/θ after refinement, and whether the single update ran.',
            cases=[cases[k] for k in MODES if k in cases])
        with open(index_path, 'w') as f:
            json.dump(index, f, indent=1)
    if failures:
        raise SystemExit('not written:\n  ' + '\n  '.join(failures))


if __name__ == '__main__':
    main()
