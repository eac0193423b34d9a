"""Writes test/fixtures/schedulers/: PNDM (PLMS), DDIM and Euler trajectories from schedulers_reference.py.

    /usr/bin/python3 tools/make_scheduler_golden.py                      # SD 1.5 config (epsilon)
    /usr/bin/python3 tools/make_scheduler_golden.py --config sd21        # → test/fixtures/golden-sd2/schedulers/

--config sd21 runs PNDM, DDIM and Euler (leading) with SD 2.1's (768-v) scheduler config, i.e. v-prediction, and
checks them against an (x0, eps) oracle instead of the SD 1.5 facts below.

For every scheduler and N in {10, 50} inference steps: set_timesteps(N); a fixed random initial sample
(1, 4, 8, 8) scaled by init_noise_sigma; at each step i a fixed random model output eps_i; the sample handed
to step i is the previous step's prev_sample plus a small fixed random "guidance update" delta_i (as D&B
changes the latent between steps; this makes PNDM's i = 1 quirk, which ignores the sample passed in,
visible), rounded to float32. Everything is seeded (numpy PCG64) and deterministic.

Files per run (<scheduler>_<N>/), S = number of timesteps:
  timesteps.npy       (S,)  int64 (pndm, ddim) or float32 (euler, euler_linspace)
  sample_in.npy       (S, 1, 4, 8, 8) float32   the `sample` argument of step i
  model_output.npy    (S, 1, 4, 8, 8) float32   the `model_output` argument of step i
  prev_sample.npy     (S, 1, 4, 8, 8) float64   what step i returns
  pred_original_sample.npy  float64 (ddim, euler)
  scaled_model_input.npy    float64 (euler*: scale_model_input(sample_in[i], t_i))
  sigmas.npy          (S + 1,) float32 (euler*)
Shared: betas.npy, alphas_cumprod.npy (1000,) float32 (diffusers computes them in float32).

Cross-checks before writing: the spec §3 PNDM facts (51 timesteps, [981, 961, 961, 941, ..., 1], t at
i = 10/20/24, the D&B step sizes 20*sqrt(1 - 0.01 i)); PNDM's i = 1 output does not depend on the sample passed
in and equals formula (9) applied to sample_in[0] with (eps0 + eps1) / 2 over 981 -> 961; the AB2/AB3/AB4 steps
use (3 eps2 - eps0) / 2 etc. (eps1 is never in the history); the PNDM transfer (9) with a single eps equals
the DDIM eta = 0 step; and DDIM equals Euler (leading) in Euler's sigma-scaled variables except at the last
step (DDIM ends at alphas_cumprod[0], Euler at sigma = 0).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import schedulers_reference as sr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'test', 'fixtures', 'schedulers')
SHAPE = (1, 4, 8, 8)
DELTA_SCALE = 0.05


def inputs(name: str, n: int, steps: int):
    """Seeded initial noise, model outputs and guidance deltas (seed depends only on N, so all schedulers
    with the same N see the same random numbers)."""
    rng = np.random.default_rng(1000 + n)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    eps = rng.standard_normal((steps,) + SHAPE).astype(np.float32)
    delta = (DELTA_SCALE * rng.standard_normal((steps,) + SHAPE))
    delta[0] = 0
    return noise, eps, delta


def run(name: str, n: int, sample_in_override=None, **config):
    sched = sr.SCHEDULERS[name](**config)
    timesteps = sched.set_timesteps(n)
    noise, eps, delta = inputs(name, n, len(timesteps))
    out = dict(timesteps=timesteps, model_output=eps, sample_in=[], prev_sample=[], pred_original_sample=[],
               scaled_model_input=[], init_noise_sigma=float(sched.init_noise_sigma))
    prev = noise.astype(np.float64) * sched.init_noise_sigma
    for i, t in enumerate(timesteps):
        x = (prev + delta[i]).astype(np.float32)
        if sample_in_override is not None and i in sample_in_override:
            x = sample_in_override[i]
        out['sample_in'].append(x)
        out['scaled_model_input'].append(sched.scale_model_input(x, t))
        step = sched.step(eps[i], t, x)
        prev = step['prev_sample']
        out['prev_sample'].append(prev)
        if 'pred_original_sample' in step:
            out['pred_original_sample'].append(step['pred_original_sample'])
    for key in ('sample_in', 'prev_sample', 'pred_original_sample', 'scaled_model_input'):
        out[key] = np.stack(out[key]) if out[key] else None
    if name.startswith('euler'):
        out['sigmas'] = sched.sigmas
    return sched, out


def check_pndm(runs):
    sched, r50 = runs[('pndm', 50)]
    t = r50['timesteps'].tolist()
    expect = [981, 961] + list(range(961, 0, -20))
    assert t == expect and len(t) == 51, t
    assert (t[10], t[20], t[24]) == (801, 601, 521)
    # D&B step size alpha_i = 20 * sqrt(linspace(1, 0.5, N)[i]) with N = len(timesteps) = 51 (spec §3).
    scale = 20 * np.sqrt(np.linspace(1.0, 0.5, len(t)))
    for i, value in ((0, 20.0), (10, 18.9737), (20, 17.8885), (24, 17.4356)):
        assert abs(scale[i] - value) < 5e-5, (i, scale[i])
    _, r10 = runs[('pndm', 10)]
    assert r10['timesteps'].tolist() == [901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    # i = 1 ignores the sample passed in: rerun with a different sample_in[1].
    other = r50['sample_in'][1] + np.float32(0.5)
    _, rerun = run('pndm', 50, {1: other})
    # With the model outputs fixed, sample_in[1] then influences nothing at all (in a pipeline it acts only
    # through eps_1, which the UNet computes from it).
    assert np.array_equal(rerun['prev_sample'], r50['prev_sample'])
    eps = r50['model_output'].astype(np.float64)
    x1 = sched.prev_sample(r50['sample_in'][0].astype(np.float64), 981, 961, (eps[0] + eps[1]) / 2)
    assert np.allclose(x1, r50['prev_sample'][1], rtol=0, atol=1e-14)
    x2 = sched.prev_sample(r50['sample_in'][2].astype(np.float64), 961, 941, (3 * eps[2] - eps[0]) / 2)
    assert np.allclose(x2, r50['prev_sample'][2], rtol=0, atol=1e-14)
    x3 = sched.prev_sample(r50['sample_in'][3].astype(np.float64), 941, 921,
                           (23 * eps[3] - 16 * eps[2] + 5 * eps[0]) / 12)
    assert np.allclose(x3, r50['prev_sample'][3], rtol=0, atol=1e-14)
    x4 = sched.prev_sample(r50['sample_in'][4].astype(np.float64), 921, 901,
                           (55 * eps[4] - 59 * eps[3] + 37 * eps[2] - 9 * eps[0]) / 24)
    assert np.allclose(x4, r50['prev_sample'][4], rtol=0, atol=1e-14)
    # Last step: t = 1 -> -19 uses final_alpha_cumprod = alphas_cumprod[0].
    assert sched._alpha(-19) == float(sched.alphas_cumprod[0])
    print('pndm: spec §3 timesteps, step sizes, i = 1 quirk, AB2/AB3/AB4 combinations: OK')


def check_ddim_vs_pndm_and_euler(runs):
    pndm = sr.Pndm()
    pndm.set_timesteps(50)
    ddim = sr.Ddim()
    ddim.set_timesteps(50)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(SHAPE)
    e = rng.standard_normal(SHAPE)
    for t in (981, 501, 21, 1):
        a = ddim.step(e, t, x)['prev_sample']
        b = pndm.prev_sample(x, t, t - 20, e)
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12), t
    # DDIM in Euler's variables: x_euler = x_ddim * sqrt(1 + sigma^2) = x_ddim / sqrt(acp).
    for n in (10, 50):
        sched, r = runs[('euler', n)]
        _, d = runs[('ddim', n)]
        assert np.array_equal(r['timesteps'].astype(np.int64), d['timesteps'])
        acp = sr.schedule_float32()[1]
        worst = 0.0
        for i, t in enumerate(d['timesteps'][:-1]):
            t_prev = int(d['timesteps'][i + 1])
            x_e = r['sample_in'][i].astype(np.float64)
            x_d = x_e * math.sqrt(float(acp[t]))  # same point in DDIM's variables
            dd = sr.Ddim()
            dd.set_timesteps(n)
            prev_d = dd.step(r['model_output'][i], int(t), x_d)['prev_sample']
            prev_e = r['prev_sample'][i]
            worst = max(worst, float(np.abs(prev_e * math.sqrt(float(acp[t_prev])) - prev_d).max()))
        # float32 sigmas vs float32 alphas_cumprod differ in the last bits
        assert worst < 1e-5, worst
        print(f'ddim == euler (leading) in Euler variables for {n} steps except the last: max diff {worst:.1e}')


def check_v_prediction(runs) -> None:
    """v-prediction against an oracle: for x_t = sqrt(a) x0 + sqrt(1 - a) eps and v = sqrt(a) eps - sqrt(1 - a) x0,
    DDIM and Euler recover x0 exactly and step to sqrt(a') x0 + sqrt(1 - a') eps (DDIM; Euler in its scaled
    variables); PNDM's first step equals DDIM's; PNDM's i = 1 redo converts (v0 + v1)/2 at (t + ratio, stored
    sample); its AB2 step converts the combined v at (t, sample)."""
    acp = sr.schedule_float32()[1].astype(np.float64)
    rng = np.random.default_rng(7)
    x0, eps = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    for n in (10, 50):  # the oracle checks cost nothing, so both step counts
        ddim = sr.Ddim(prediction_type='v_prediction')
        euler = sr.Euler('leading', prediction_type='v_prediction')
        pndm = sr.Pndm(prediction_type='v_prediction')
        for s_ in (ddim, euler, pndm):
            s_.set_timesteps(n)
        for i, t in enumerate(ddim.timesteps):
            t, t_prev = int(t), int(t) - 1000 // n
            a = acp[t]
            a_prev = acp[t_prev] if t_prev >= 0 else acp[0]
            xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
            v = math.sqrt(a) * eps - math.sqrt(1 - a) * x0
            d = ddim.step(v, t, xt)
            assert np.allclose(d['pred_original_sample'], x0, rtol=0, atol=1e-12), (n, t)
            assert np.allclose(d['prev_sample'], math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps, rtol=0,
                               atol=1e-12), (n, t)
            e = euler.step(v, float(euler.timesteps[i]), xt / math.sqrt(a))  # Euler's x = x_t / sqrt(a)
            # Euler's sigma is float32, so x0 is recovered to float32 precision only.
            assert np.allclose(e['pred_original_sample'], x0, rtol=0, atol=1e-5), (n, t)
        pndm.set_timesteps(n)
        ratio = 1000 // n
        t0 = int(pndm.timesteps[0])
        a0 = acp[t0]
        xt = math.sqrt(a0) * x0 + math.sqrt(1 - a0) * eps
        v0 = math.sqrt(a0) * eps - math.sqrt(1 - a0) * x0
        first = pndm.step(v0, t0, xt)['prev_sample']
        dd = sr.Ddim(prediction_type='v_prediction')
        dd.set_timesteps(n)
        assert np.allclose(first, dd.step(v0, t0, xt)['prev_sample'], rtol=1e-12, atol=1e-12)
        v1 = rng.standard_normal(SHAPE)
        second = pndm.step(v1, int(pndm.timesteps[1]), first + 0.5)['prev_sample']  # the sample passed is ignored
        mid = (v0 + v1) / 2
        redo = pndm.prev_sample(xt, t0, t0 - ratio, mid)  # converts mid at (t0, xt) inside
        assert np.array_equal(second, redo)
        ref = math.sqrt(a0) * mid + math.sqrt(1 - a0) * xt
        eps_pndm = sr.Pndm()  # epsilon PNDM: the same transfer with the converted model output
        assert np.allclose(second, eps_pndm.prev_sample(xt, t0, t0 - ratio, ref), rtol=1e-13, atol=1e-13)
    print('v-prediction: DDIM/Euler recover x0 and step exactly; PNDM first step = DDIM; i = 1 redo: OK')


SD21 = dict(prediction_type='v_prediction')  # SD 2.1 768-v: SD 1.5's betas/offset/spacing, v-prediction
OUT_SD21 = os.path.join(ROOT, 'test', 'fixtures', 'golden-sd2', 'schedulers')


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--config', default='sd15', choices=('sd15', 'sd21'))
    args = ap.parse_args()
    torch.set_num_threads(2)
    v_pred = args.config == 'sd21'
    config = SD21 if v_pred else {}
    out_dir = OUT_SD21 if v_pred else OUT
    names = ('pndm', 'ddim', 'euler') if v_pred else ('pndm', 'ddim', 'euler', 'euler_linspace')
    runs = {}
    for name in names:
        # v-prediction: 10 steps are enough for its conversions (the 50-step quirks are the epsilon golden's).
        for n in ((10,) if v_pred else (10, 50)):
            runs[(name, n)] = run(name, n, **config)
    if v_pred:
        check_v_prediction(runs)
    else:
        check_pndm(runs)
        check_ddim_vs_pndm_and_euler(runs)
        # Euler with 'linspace' spacing has fractional timesteps: sigma comes from the interpolation.
        _, lin = runs[('euler_linspace', 50)]
        assert np.any(lin['timesteps'] != np.round(lin['timesteps']))
    write(runs, out_dir, 'v_prediction' if v_pred else 'epsilon')


def write(runs, OUT, prediction_type: str) -> None:
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    betas, acp = sr.schedule_float32()
    np.save(os.path.join(OUT, 'betas.npy'), betas)
    np.save(os.path.join(OUT, 'alphas_cumprod.npy'), acp)
    index = dict(version=1, generator='tools/make_scheduler_golden.py',
                 config=dict(numTrainTimesteps=sr.NUM_TRAIN, betaStart=sr.BETA_START, betaEnd=sr.BETA_END,
                             betaSchedule='scaled_linear', stepsOffset=sr.STEPS_OFFSET, setAlphaToOne=False,
                             skipPrkSteps=True, clipSample=False, predictionType=prediction_type, eta=0),
                 betas='betas.npy', alphasCumprod='alphas_cumprod.npy', runs=[])
    for (name, n), (sched, r) in runs.items():
        folder = f'{name}_{n}'
        os.makedirs(os.path.join(OUT, folder))
        files = {}

        def save(key, array, dtype):
            files[key] = f'{folder}/{key}.npy'
            np.save(os.path.join(OUT, files[key]), np.ascontiguousarray(array, dtype=dtype))

        save('timesteps', r['timesteps'], np.float32 if name.startswith('euler') else np.int64)
        save('sample_in', r['sample_in'], np.float32)
        save('model_output', r['model_output'], np.float32)
        save('prev_sample', r['prev_sample'], np.float64)
        if r['pred_original_sample'] is not None:
            save('pred_original_sample', r['pred_original_sample'], np.float64)
        if name.startswith('euler'):
            save('scaled_model_input', r['scaled_model_input'], np.float64)
            save('sigmas', r['sigmas'], np.float32)
        index['runs'].append(dict(
            scheduler='euler' if name.startswith('euler') else name,
            timestepSpacing='linspace' if name == 'euler_linspace' else 'leading',
            numInferenceSteps=n, numTimesteps=int(len(r['timesteps'])), initNoiseSigma=r['init_noise_sigma'],
            files=files))
        print(f"{folder}: {len(r['timesteps'])} timesteps, first {r['timesteps'][:4].tolist()}, "
              f"init_noise_sigma {r['init_noise_sigma']:.6f}, |x_final| mean {np.abs(r['prev_sample'][-1]).mean():.4f}")
    with open(os.path.join(OUT, 'index.json'), 'w') as fh:
        json.dump(index, fh, indent=1)
        fh.write('\n')
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f'wrote {len(runs)} runs to {os.path.relpath(OUT, ROOT)} ({total / 1e6:.2f} MB)')


if __name__ == '__main__':
    main()
