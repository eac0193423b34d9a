"""Reference dumps for test/schedulers: diffusers' PNDM (skip_prk_steps), DDIM (eta 0) and Euler discrete step
formulas re-implemented on float32 torch tensors (SD 1.5 config: scaled_linear 0.00085..0.012, steps_offset 1,
leading spacing, set_alpha_to_one False), so that every operation is rounded as PyTorch's CPU kernels round it.

Inputs: sample = torch.randn(64) after manual_seed(1); eps at loop index i = torch.randn(64) after manual_seed(100 + i).
Writes torch-reference.json: per scheduler and step count the timesteps, the final sample's float32 bits, and xor/sum
checksums of the bits of every step's prev_sample; plus a checksum of alphas_cumprod.
Run: /usr/bin/python3 test/schedulers/make_reference.py test/schedulers/torch-reference.json  (torch 1.13, x86-64).
"""
import json
import sys

import numpy as np
import torch

N = 1000
betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, N, dtype=torch.float32) ** 2
alphas = 1.0 - betas
ac = torch.cumprod(alphas, dim=0)
final_ac = ac[0]


def pndm(steps, x, epss):
    ratio = N // steps
    ts = (np.arange(0, steps) * ratio).round() + 1
    plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
    ets, counter, cur, out = [], 0, None, []
    for i, t in enumerate(plms):
        t = int(t)
        mo = epss[i]
        prev = t - ratio
        if counter != 1:
            ets = ets[-3:]
            ets.append(mo)
        else:
            prev = t
            t = t + ratio
        if len(ets) == 1 and counter == 0:
            cur = x
        elif len(ets) == 1 and counter == 1:
            mo = (mo + ets[-1]) / 2
            x = cur
            cur = None
        elif len(ets) == 2:
            mo = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            mo = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            mo = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        a_t = ac[t]
        a_p = ac[prev] if prev >= 0 else final_ac
        b_t = 1 - a_t
        b_p = 1 - a_p
        sc = (a_p / a_t) ** 0.5
        den = a_t * b_p ** 0.5 + (a_t * b_t * a_p) ** 0.5
        x = sc * x - (a_p - a_t) * mo / den
        counter += 1
        out.append(x)
    return [int(v) for v in plms], out


def ddim(steps, x, epss):
    ratio = N // steps
    ts = (np.arange(0, steps) * ratio).round()[::-1] + 1
    out = []
    for i, t in enumerate(ts):
        t = int(t)
        prev = t - ratio
        mo = epss[i]
        a_t = ac[t]
        a_p = ac[prev] if prev >= 0 else final_ac
        b_t = 1 - a_t
        x0 = (x - b_t ** 0.5 * mo) / a_t ** 0.5
        direction = (1 - a_p - 0) ** 0.5 * mo
        x = a_p ** 0.5 * x0 + direction
        out.append(x)
    return [int(v) for v in ts], out


def euler(steps, x, epss):
    ratio = N // steps
    ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.float32) + 1
    sig = np.array(((1 - ac) / ac) ** 0.5)
    sig = np.interp(ts, np.arange(0, len(sig)), sig)
    sig = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
    init = (sig.max() ** 2 + 1) ** 0.5
    x = x * init
    out = []
    for i in range(len(ts)):
        s = sig[i]
        po = x - s * epss[i]
        der = (x - po) / s
        x = x + der * (sig[i + 1] - s)
        out.append(x)
    return [float(v) for v in ts], out, float(init)


def randn(seed):
    torch.manual_seed(seed)
    return torch.randn(64)


def summary(outs):
    bits = np.stack([o.numpy().view(np.uint32) for o in outs])
    return dict(final=bits[-1].tolist(), xor=int(np.bitwise_xor.reduce(bits.ravel())),
                sum=int(bits.astype(np.uint64).sum() % 2 ** 32))


x0 = randn(1)
E = [randn(100 + i) for i in range(60)]
res = {}
for steps in (10, 50):
    ts, o = pndm(steps, x0.clone(), E)
    res[f'pndm{steps}'] = dict(ts=ts, **summary(o))
    ts, o = ddim(steps, x0.clone(), E)
    res[f'ddim{steps}'] = dict(ts=ts, **summary(o))
    ts, o, init = euler(steps, x0.clone(), E)
    res[f'euler{steps}'] = dict(ts=ts, init=init, **summary(o))
acb = ac.numpy().view(np.uint32)
res['alphas_cumprod'] = dict(xor=int(np.bitwise_xor.reduce(acb)), sum=int(acb.astype(np.uint64).sum() % 2 ** 32))
res['torch'] = torch.__version__
with open(sys.argv[1] if len(sys.argv) > 1 else 'torch-reference.json', 'w') as f:
    json.dump(res, f, indent=1)
