#!/usr/bin/python3
"""Reference Divide & Bind / Attend-and-Excite sampling trajectories on the tiny models (spec §3).

    /usr/bin/python3 tools/reference_pipeline.py [--family sd1|sd2|sdxl] [--out DIR] [--modes none,max,tv,tv_bind]

Default output: test/fixtures/golden/trajectories/ (sd1), golden-sd2/trajectories/, golden-sdxl/trajectories/.

One denoising iteration i at timestep t (spec §3, with N = len(timesteps), α_i = scaleFactor·√linspace(1, .5, N)[i]):
  1. gradient pass: UNet(x, t, cond) at batch 1 with x = scale_model_input(z, t) (the identity for PNDM/DDIM;
     z/√(σ²+1) for Euler, so ∇_z L carries that factor), cross-attention maps → (L, θ) with
     tools/divbind_reference.py;
  2. iterative refinement when i ∈ thresholds and θ < thresholds[i]:
       repeat { iter += 1; forward at z; if L ≠ 0: z ← z − α_i∇L; stop if θ (before the update) ≥ thr or
                iter = cap }, then one more forward for a fresh L;
  3. if i < maxIterToAlter and L ≠ 0: z ← z − α_i∇L;
  4. CFG: ε_u, ε_c = UNet([x, x], t, [uncond, cond]); ε = ε_u + g(ε_c − ε_u); z = scheduler.step(ε, t, z).
Then decode z / vae_scaling with the VAE; image = clamp(x/2 + 0.5, 0, 1), stored as uint8 round(255·image), HWC.
The family (model_families.py) supplies the conditioning: SD 2.x "!"-padded ids; SDXL the concatenated
penultimate states of both encoders, text_embeds and time_ids (batch 1 in the gradient pass, [uncond, cond] in
CFG, where the empty negative prompt gives zeros: force_zeros_for_empty_prompt).

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
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import divbind_reference as dbr  # noqa: E402  (part A: losses)
import model_families as mf  # noqa: E402
import schedulers_reference as sched_ref  # noqa: E402  (part A: PNDM, DDIM, Euler)

REPO = mf.REPO
PROMPT = 'a red cat and a blue dog'
TOKEN_INDICES = [3, 7]  # cat, dog
ATTRIBUTE_INDICES = [2, 6]  # red, blue
LATENT_SEED = 42
SCALE_FACTOR = 20.0
SCALE_RANGE = (1.0, 0.5)
# ~25/51 of the steps, as SD 1.5's max_iter_to_alter = 25 of 51 timesteps; i = 10 then refines without the
# final single update (refinement is gated by the thresholds only, spec §3).
MAX_ITER_TO_ALTER = 5
LOSS_OPTIONS = dict(attentionResolution=8, attributeResolutions=[32, 16])


@dataclass
class Setup:
    """A family's trajectory settings. Thresholds are set so refinement really runs at i = 0 and i = 10 on the
    tiny model (its θ values are not SD's), and caps small enough for float32/float64 agreement (checked)."""
    scheduler: str                   # scheduler class, built from the family's scheduler_config.json settings
    steps: int                       # numInferenceSteps; every setup has 11 timesteps (i = 0..10)
    modes: Dict[str, Optional[dict]]
    loss_options: dict
    # SD 1.x's golden ran the gradient pass at every step (recording L/θ); the others skip the passes that cannot
    # change the result (i ≥ maxIterToAlter and not a threshold key), as lib/pipeline/sampler.ts does.
    all_gradient_passes: bool = False
    # compact: keep only the latents a test needs (the 96²/128² latents are 147/262 kB each); see save_case.
    compact: bool = True
    # extra unguided cases: name → (scheduler class, numInferenceSteps)
    cases: Dict[str, Tuple[str, int]] = field(default_factory=dict)


SETUPS = {
    'sd1': Setup('PNDMScheduler', 10, {
        'none': None,
        'max': dict(mode='max', thresholds={0: 0.3, 10: 0.8}, caps=(5, 3)),
        'tv': dict(mode='tv', thresholds={0: 0.05, 10: 0.2}, caps=(5, 3)),
        'tv_bind': dict(mode='tv_bind', thresholds={0: 0.05, 10: 0.2}, caps=(5, 3), attributes=ATTRIBUTE_INDICES),
    }, LOSS_OPTIONS, all_gradient_passes=True, compact=False),
    # SD 2.1's v-prediction config in the PLMS sampler the official D&B/A&E code uses (10 steps → 11 timesteps);
    # 'none-ddim' runs the scheduler SD 2.1 ships (DDIM, 11 steps) without guidance.
    'sd2': Setup('PNDMScheduler', 10, {
        'none': None,
        'max': dict(mode='max', thresholds={0: 0.95, 10: 0.95}, caps=(5, 3)),
        'tv': dict(mode='tv', thresholds={0: 0.5, 10: 0.5}, caps=(5, 3)),
        'tv_bind': dict(mode='tv_bind', thresholds={0: 0.5, 10: 0.5}, caps=(5, 3), attributes=ATTRIBUTE_INDICES),
    }, {}, cases={'none-ddim': ('DDIMScheduler', 11)}),
    # SDXL's Euler as shipped; 11 steps so that threshold key 10 exists.
    'sdxl': Setup('EulerDiscreteScheduler', 11, {
        'none': None,
        'max': dict(mode='max', thresholds={0: 0.95, 10: 0.95}, caps=(5, 3)),
        'tv': dict(mode='tv', thresholds={0: 0.5, 10: 0.5}, caps=(5, 3)),
        'tv_bind': dict(mode='tv_bind', thresholds={0: 0.5, 10: 0.5}, caps=(5, 3), attributes=ATTRIBUTE_INDICES),
    }, {}),
}


def loss_options(fam: mf.Family, setup: Setup, tok) -> dict:
    if fam.name == 'sd1':
        return dict(setup.loss_options)
    opts = {k: v for k, v in fam.divbind.items()}
    if opts.get('tokenSlice') == 'until-eot':
        opts['eotIndex'] = tok.eot_index(PROMPT)
    return opts


def step_sizes(n: int) -> list:
    return [SCALE_FACTOR * math.sqrt(v) for v in np.linspace(SCALE_RANGE[0], SCALE_RANGE[1], n)]


class Guidance:
    def __init__(self, unet, cond, spec, options):
        self.unet, self.cond, self.spec, self.options = unet, cond, spec, options
        self.scale = None  # the current step's scale_model_input (set per step)

    def loss(self, z, t, i):
        """Gradient pass: returns (L (tensor, graph to z), θ)."""
        store = []
        self.unet.set_attention_store(store)
        try:
            self.unet(self.scale(z), t, **self.cond)
        finally:
            self.unet.set_attention_store(None)
        layers = []
        for name, p in store:
            r = int(round(p.shape[2] ** 0.5))
            # The loss runs in float64 in both runs; only the UNet's dtype differs.
            layers.append(dict(probs=p[0].double(), resolution=r, place=name.split('.')[0]))
        opts = dict(mode=self.spec['mode'], tokenIndices=TOKEN_INDICES, stepIndex=i, **self.options)
        if self.spec.get('attributes'):
            opts['attributeIndices'] = self.spec['attributes']
        res = dbr.attention_loss(layers, **dbr.options_from_camel(opts))
        return res['loss'], float(res['indicator'])

    def update(self, z, loss, alpha):
        if float(loss) == 0.0 or not loss.requires_grad:
            return z.detach(), False
        g = torch.autograd.grad(loss, z)[0]
        return (z - alpha * g).detach(), True


def refine(guide: Guidance, z, tt, i: int, thr: float, cap: int, alpha: float, info: dict):
    """Spec §3 step 2; returns the gradient-pass inputs (z with grad, L, θ) after refinement."""
    iters, zr = 0, z.detach()
    record = []
    while True:
        iters += 1
        zr = zr.detach().requires_grad_(True)
        l_r, th_r = guide.loss(zr, tt, i)
        record.append(dict(loss=float(l_r), indicator=th_r))
        zr, _ = guide.update(zr, l_r, alpha)
        if th_r >= thr or iters >= cap:
            break
    zg = zr.detach().requires_grad_(True)
    loss, theta = guide.loss(zg, tt, i)
    info.update(refinementIterations=iters, refinement=record, lossAfterRefinement=float(loss),
                indicatorAfterRefinement=theta)
    return zg, loss, theta


def make_scheduler(fam: mf.Family, class_name: str):
    return sched_ref.from_config(fam.scheduler_config, class_name)


def run(fam: mf.Family, setup: Setup, mode: str, dtype: torch.dtype, models: mf.Models, latent0: np.ndarray,
        scheduler_class: Optional[str] = None, steps: Optional[int] = None):
    models.to(dtype)
    unet, vae = models.unet, models.vae
    spec = setup.modes.get(mode)
    with torch.no_grad():
        both = models.encode([PROMPT, ''])
    cond = mf.cond_rows(both, slice(0, 1))
    uncond = models.negative('', mf.cond_rows(both, slice(1, 2)))
    sched = make_scheduler(fam, scheduler_class or setup.scheduler)
    sched.set_timesteps(steps or setup.steps)
    timesteps = [int(t) if float(t).is_integer() else float(t) for t in sched.timesteps]
    alphas = step_sizes(len(timesteps))
    z = torch.from_numpy(latent0).to(dtype)
    if sched.init_noise_sigma != 1.0:
        z = z * sched.init_noise_sigma
    guide = None
    if spec:
        guide = Guidance(unet, cond, spec, loss_options(fam, setup, models.tokenizer))
    last_guided = max([MAX_ITER_TO_ALTER - 1] + list(spec['thresholds'])) if spec else -1
    record = dict(timesteps=timesteps, stepSizes=alphas, steps=[])
    latents, updated_latents = [], []
    for i, t in enumerate(timesteps):
        tt = torch.tensor([t])

        def scale(x, t=t):
            return sched.scale_model_input(x, t)

        info = dict(i=i, t=t)
        if guide is not None and (setup.all_gradient_passes or i <= last_guided):
            guide.scale = scale
            zg = z.detach().requires_grad_(True)
            loss, theta = guide.loss(zg, tt, i)
            info.update(loss=float(loss), indicator=theta, refinementIterations=0)
            thr = spec['thresholds'].get(i)
            if thr is not None and theta < thr:
                cap = spec['caps'][0] if i == 0 else spec['caps'][1]
                zg, loss, theta = refine(guide, z, tt, i, thr, cap, alphas[i], info)
            did = False
            if i < MAX_ITER_TO_ALTER:
                zg, did = guide.update(zg, loss, alphas[i])
            info['updated'] = did
            z = zg.detach()
        updated_latents.append(z.detach().clone())
        with torch.no_grad():
            x = scale(z)
            eps = unet(torch.cat([x, x]), tt, **mf.cond_cat(uncond, cond))
            eps_u, eps_c = eps[0:1], eps[1:2]
            eps = eps_u + fam.guidance * (eps_c - eps_u)
            # The reference schedulers evaluate each step in float64; the result is rounded to the run's dtype.
            z = torch.from_numpy(sched.step(eps.numpy(), t, z.numpy())['prev_sample']).to(dtype)
        latents.append(z.detach().clone())
        if not setup.all_gradient_passes:
            info['latentNorm'] = float(z.double().norm())
        record['steps'].append(info)
    with torch.no_grad():
        img = vae(z / fam.vae_scaling)
        img = (img / 2 + 0.5).clamp(0, 1)
    img_u8 = (img[0].permute(1, 2, 0).double().numpy() * 255).round().astype(np.uint8)
    return dict(record=record, latents=torch.stack(latents).numpy(), updated=torch.stack(updated_latents).numpy(),
                image=img_u8, init_noise_sigma=float(sched.init_noise_sigma), tokenizer=models.tokenizer)


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# Compact storage (96²/128² families): the final latent (it includes the i = 10 refinement: the last step), for
# guided modes the latent after refinement and the single update at i = 0 (what the gradient steps did), every
# step's latent norm in the record, and the image as its top-left 64×64 crop (the VAE has its own golden).
COMPACT_GUIDED_STEPS = (0,)
IMAGE_CROP = 64


def save_case(out: str, name: str, r64: dict, guided: bool, compact: bool) -> dict:
    d = os.path.join(out, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    if not compact:
        np.save(os.path.join(d, 'latents.npy'), r64['latents'].astype(np.float32))
        np.save(os.path.join(d, 'guided_latents.npy'), r64['updated'].astype(np.float32))
        np.save(os.path.join(d, 'image.npy'), r64['image'])
        return dict(latents=f'{name}/latents.npy', guidedLatents=f'{name}/guided_latents.npy',
                    image=f'{name}/image.npy')
    files = dict(finalLatent=f'{name}/final_latent.npy', imageCrop=f'{name}/image_crop.npy')
    np.save(os.path.join(out, files['finalLatent']), r64['latents'][-1].astype(np.float32))
    np.save(os.path.join(out, files['imageCrop']), np.ascontiguousarray(r64['image'][:IMAGE_CROP, :IMAGE_CROP]))
    if guided:
        files['guidedLatents'] = f'{name}/guided_latents.npy'
        files['guidedLatentSteps'] = list(COMPACT_GUIDED_STEPS)
        np.save(os.path.join(out, files['guidedLatents']),
                r64['updated'][list(COMPACT_GUIDED_STEPS)].astype(np.float32))
    return files


def case_options(fam: mf.Family, setup: Setup, spec, tok, scheduler_class: str, steps: int,
                 init_noise_sigma: float) -> dict:
    folder = f'models/{fam.folder}/scheduler/scheduler_config.json'
    if fam.name == 'sd1':
        scheduler = f'PNDM ({folder})'
    else:
        scheduler = f'{scheduler_class} with the settings of {folder}'
    options = dict(prompt=PROMPT, negativePrompt='', numInferenceSteps=steps, guidanceScale=fam.guidance,
                   scheduler=scheduler, initialLatent='initial_latent.npy', vaeScalingFactor=fam.vae_scaling)
    if fam.name != 'sd1':
        options.update(initNoiseSigma=init_noise_sigma,
                       initialLatentNote='z0 = initial_latent × initNoiseSigma (diffusers prepare_latents)')
        if fam.name == 'sdxl':
            options.update(timeIds=fam.time_ids(1, torch.float64)[0].tolist(), forceZerosForEmptyPrompt=True)
    if spec is not None:
        thresholds = {str(k): v for k, v in spec['thresholds'].items()}
        options.update(mode=spec['mode'], tokenIndices=TOKEN_INDICES,
                       attributeIndices=spec.get('attributes'), thresholds=thresholds,
                       maxRefinementStepsInitStep=spec['caps'][0], maxRefinementSteps=spec['caps'][1],
                       scaleFactor=SCALE_FACTOR, scaleRange=list(SCALE_RANGE), maxIterToAlter=MAX_ITER_TO_ALTER,
                       lossOptions=loss_options(fam, setup, tok),
                       lossPrecision='float64 (the UNet runs in the stated dtype)')
        if fam.name != 'sd1':
            options['gradientPassInput'] = 'scale_model_input(z, t) (identity for PNDM/DDIM; z/sqrt(sigma^2+1) ' \
                                           'for Euler), as lib/pipeline/sampler.ts'
    else:
        options.update(mode='none')
    return options


NOTE_FULL = ('latents.npy: (11, 1, 4, 32, 32) float32, the latent after each PNDM step (float64 run, rounded); '
             'guided_latents.npy: the latent fed to the CFG pass at each step (after refinement and the '
             'single update); image.npy: uint8 (256, 256, 3) of the decoded final latent. record.steps: '
             'the gradient-pass L and θ, refinement iterations (each iteration\'s L and θ before its '
             'update), L/θ after refinement, and whether the single update ran.')
NOTE_COMPACT = ('final_latent.npy: (1, 4, L, L) float32, the latent after the last step (float64 run, rounded); '
                'guided_latents.npy (guided modes): (1, 1, 4, L, L), the latent fed to the CFG pass at the steps '
                'guidedLatentSteps = [0] (after refinement and the single update); image_crop.npy: uint8 '
                '(64, 64, 3), rows/columns 0..63 of the decoded final image. record.steps: the gradient-pass '
                'L and θ (absent after the last guided index max(maxIterToAlter - 1, largest threshold key), '
                'where no gradient pass runs), refinement iterations (each iteration\'s L and θ before its '
                'update), L/θ after refinement, whether the single update ran, and latentNorm (L2 norm of the '
                'latent after the step, float64 run).')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--family', default='sd1', choices=sorted(mf.FAMILIES))
    ap.add_argument('--out', default=None, help="default: test/fixtures/<the family's golden folder>/trajectories")
    ap.add_argument('--modes', default=None, help='comma-separated cases (default: all of the family)')
    args = ap.parse_args()
    torch.set_num_threads(2)
    fam, setup = mf.FAMILIES[args.family], SETUPS[args.family]
    out = args.out or os.path.join(REPO, 'test', 'fixtures', fam.golden, 'trajectories')
    all_cases = list(setup.modes) + list(setup.cases)
    latent0 = torch.randn(1, 4, fam.latent, fam.latent, generator=torch.Generator().manual_seed(LATENT_SEED)).numpy()
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, 'initial_latent.npy'), latent0)
    index_path = os.path.join(out, 'index.json')
    index = json.load(open(index_path)) if os.path.exists(index_path) else {'cases': []}
    cases = {c['name']: c for c in index['cases']}
    failures = []
    for name in (args.modes.split(',') if args.modes else all_cases):
        mode = 'none' if name in setup.cases else name
        scheduler_class, steps = setup.cases.get(name, (setup.scheduler, setup.steps))
        t0 = time.time()
        r64 = run(fam, setup, mode, torch.float64, fam.build(), latent0, scheduler_class, steps)
        t1 = time.time()
        r32 = run(fam, setup, mode, torch.float32, fam.build(), latent0, scheduler_class, steps)
        t2 = time.time()
        diff = rel_l2(r32['latents'][-1], r64['latents'][-1])
        per_step = [rel_l2(a, b) for a, b in zip(r32['latents'], r64['latents'])]
        img_diff = int(np.abs(r32['image'].astype(int) - r64['image'].astype(int)).max())
        print(f'{name}: float64 {t1 - t0:.1f}s, float32 {t2 - t1:.1f}s; final latent rel L2 f32 vs f64 = {diff:.3e}; '
              f'max image diff {img_diff}/255', flush=True)
        for s in r64['record']['steps']:
            if 'loss' in s:
                print(f'   i={s["i"]:2d} t={s["t"]:3d} L={s["loss"]:+.6f} θ={s["indicator"]:.6f} '
                      f'refine={s["refinementIterations"]} updated={s["updated"]}', flush=True)
        spec = setup.modes.get(mode)
        n_failures = len(failures)
        if spec is not None:
            steps_rec = r64['record']['steps']
            for key in spec['thresholds']:
                if steps_rec[key]['refinementIterations'] == 0:
                    failures.append(f'{name}: no refinement at i = {key}; raise the threshold')
        print('   per-step latent rel L2 f32 vs f64:', ' '.join(f'{x:.1e}' for x in per_step), flush=True)
        if diff > 1e-4:
            failures.append(f'{name}: float32 vs float64 final latents differ by {diff:.3e} > 1e-4; '
                            f'reduce the refinement caps or step sizes')
            continue
        if len(failures) > n_failures:
            continue
        files = save_case(out, name, r64, spec is not None, setup.compact)
        cases[name] = dict(
            name=name, options=case_options(fam, setup, spec, r64['tokenizer'], scheduler_class, steps,
                                            r64['init_noise_sigma']),
            record=r64['record'], files=files,
            float32VsFloat64=dict(finalLatentRelL2=diff, perStepLatentRelL2=per_step, maxImageDiff=img_diff,
                                  float32Record=r32['record']),
        )
        index = dict(version=1, generator='tools/reference_pipeline.py',
                     note=NOTE_COMPACT if setup.compact else NOTE_FULL,
                     cases=[cases[k] for k in all_cases if k in cases])
        if fam.name != 'sd1':
            index = dict(version=1, generator='tools/reference_pipeline.py', family=fam.name,
                         model=f'models/{fam.folder}', note=index['note'], cases=index['cases'])
        with open(index_path, 'w') as f:
            json.dump(index, f, indent=1)
    if failures:
        raise SystemExit('not written:\n  ' + '\n  '.join(failures))


if __name__ == '__main__':
    main()
