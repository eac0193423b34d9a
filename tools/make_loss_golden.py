"""Writes test/fixtures/losses/: golden D&B / A&E loss values and float64 gradients from divbind_reference.py.

    /usr/bin/python3 tools/make_loss_golden.py            # check, then (re)write test/fixtures/losses/
    /usr/bin/python3 tools/make_loss_golden.py --check    # check only, write nothing

Deterministic: every case draws its attention maps from numpy's PCG64 with a fixed per-case seed. Inputs are
stored float32; the loss and gradients are computed in float64 from exactly those float32 values.

Before writing, every case's autograd gradient is compared with float64 central finite differences
(Richardson-extrapolated, h = 1e-4 and 5e-5) of the same loss with its non-smooth choices frozen
(divbind_reference.Branches: argmax sets, |x| signs, relu masks, A&E hinge, aggregate winner, rho). Freezing
makes the check valid at ties and kinks: it verifies the subgradient PyTorch picks. Directions: the gradient
direction, 3 random Gaussian directions and single coordinates (the 6 largest |grad| and 6 random ones in
layers that reach L, 3 in layers that do not). Pass: |fd - ad| <= 1e-6 * max(|ad|, 1e-3 * ||g||_inf)
for coordinates and <= 1e-6 * max(|ad|, 1e-3 * ||g||_2) for directions. The script refuses to write on failure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import divbind_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'test', 'fixtures', 'losses')
FD_RTOL = 1e-6
FD_H = 1e-4  # roundoff-limited below this; Richardson removes the h^2 term (errors ~1e-10 here)
FD_FLOOR = 1e-3
MAX_BYTES = 8 * 1024 * 1024

# Defaults of lib/loss/types.ts LossOptions (camelCase), used to write only the keys that differ.
TS_DEFAULTS = dict(
    stepIndex=0, attentionResolution=16, attributeResolutions=[64, 32], temperature=100, tokenSlice='all-but-last',
    smoothing=True, smoothingSigma=0.5, tvVertical='official', maxVariant='divbind', bindingRhoLowTv=0.3,
    bindingRhoHighTv=0.2, bindingTvSwitch=0.1, bindingEpsilon=1e-5, bindingCoefficients=[[0, 1], [10, 5], [20, 10]],
    tvMaxWeights=[1, 0.3],
)


# ----------------------------------------------------------------------------------------------------------
# Synthetic but realistic attention probabilities

def blob(res: int, center, width: float) -> np.ndarray:
    """Gaussian bump on the unit square sampled at pixel centres, flattened row-major (res*res)."""
    coords = (np.arange(res) + 0.5) / res
    yy, xx = np.meshgrid(coords, coords, indexing='ij')
    return np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * width ** 2)).reshape(-1)


def make_layer(rng, res: int, heads: int, t: int, hot, sot=2.5, noise=1.0, bias=0.5, copy_tokens=(), const_regions=()):
    """Softmax over T of random logits: SOT gets a constant boost (as in SD), each hot token
    dict(token, center, width, strength) a spatial blob whose strength varies a little per head.
    copy_tokens: (src, dst) pairs, dst's logits := src's (exactly tied token columns).
    const_regions: [(y0, y1, x0, x1)] in pixels of a 16-res grid (scaled to res): every position inside gets the
    logits of the region's centre pixel (exactly tied pixels). Returns float32 (heads, res*res, t)."""
    # Token biases + a spatially smooth field (bilinear from a 4x4 grid) + a little pixel noise: maps of
    # non-hot tokens vary smoothly over space, as real cross-attention does.
    coarse = rng.standard_normal((heads, t, 4, 4))
    field = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(res, res), mode='bilinear',
                                            align_corners=False).numpy()
    logits = (bias * rng.standard_normal((heads, 1, t)) + noise * 0.5 * field.reshape(heads, t, res * res)
              .transpose(0, 2, 1) + noise * 0.1 * rng.standard_normal((heads, res * res, t)))
    logits[:, :, 0] += sot
    for h in hot:
        per_head = h['strength'] * (1.0 + 0.15 * rng.standard_normal(heads))
        for centre in h['centers']:
            logits[:, :, h['token']] += per_head[:, None] * blob(res, centre, h['width'])[None, :]
    for src, dst in copy_tokens:
        logits[:, :, dst] = logits[:, :, src]
    for region in const_regions:
        s = res / 16
        y0, y1, x0, x1 = (int(round(v * s)) for v in region)
        grid = logits.reshape(heads, res, res, t)
        yc, xc = (y0 + y1) // 2, (x0 + x1) // 2
        grid[:, y0:y1, x0:x1, :] = grid[:, yc:yc + 1, xc:xc + 1, :].copy()
        logits = grid.reshape(heads, res * res, t)
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    return np.ascontiguousarray(probs, dtype=np.float32)  # C order: the .npy must not be Fortran-ordered


def hot(token, centers, width=0.12, strength=4.0):
    return dict(token=token, centers=centers, width=width, strength=strength)


# ----------------------------------------------------------------------------------------------------------
# Cases

def case_list():
    """(name, seed, T, layers [(res, heads, place)], hot tokens, layer kwargs, TS options, checks)."""
    A, B = (0.3, 0.3), (0.7, 0.65)
    C = (0.25, 0.75)
    cases = []

    def add(name, seed, t, layers, hots, options, layer_kw=None, checks=(), tie_tokens=(), aggregate_tie=False):
        cases.append(dict(name=name, seed=seed, t=t, layers=layers, hot=hots, options=options,
                          layer_kw=layer_kw or {}, checks=list(checks), tie_tokens=list(tie_tokens),
                          aggregate_tie=aggregate_tie))

    std16 = [(16, 2, 'down'), (16, 1, 'up'), (8, 2, 'mid')]
    add('tv_t77_heads_2_1', 101, 77, std16, [hot(2, [A], 0.12, 1.5), hot(5, [B], 0.08, 1.0)],
        dict(mode='tv', tokenIndices=[2, 5]), checks=['zero_grad_mid'])
    add('tv_neighbor_t16', 102, 16, [(16, 2, 'down'), (16, 1, 'up'), (8, 1, 'mid'), (32, 1, 'down')],
        [hot(2, [A], 0.12, 1.5), hot(4, [B, C], 0.07, 1.5), hot(7, [(0.5, 0.5)], 0.2, 1.0)],
        dict(mode='tv', tokenIndices=[2, 4, 7], tvVertical='neighbor'), checks=['zero_grad_mid', 'zero_grad_32'])
    add('max_divbind', 103, 16, [(16, 1, 'down'), (16, 1, 'up'), (8, 1, 'mid')],
        [hot(3, [A], 0.1, 1.5), hot(6, [B], 0.1, 1.0)],
        dict(mode='max', tokenIndices=[3, 6]), checks=['zero_grad_mid'])
    add('max_attend_excite', 104, 16, [(16, 2, 'down'), (16, 2, 'up'), (8, 1, 'mid')],
        [hot(3, [A], 0.1, 1.5), hot(6, [B], 0.1, 1.0)],
        dict(mode='max', tokenIndices=[3, 6], maxVariant='attend-excite'), checks=['zero_grad_mid'])
    # Token 2 saturates (smoothing off, its map is exactly 1.0 on a plateau): its hinge max(0, 1 - m) is the
    # int 0. The plateau is a tie too, but the softmax has no slope there, so the split does not matter.
    add('ae_hinge_one_saturated', 105, 16, [(16, 1, 'down'), (16, 1, 'up')],
        [hot(2, [A], 0.15, 12.0), hot(5, [B], 0.1, 1.5)],
        dict(mode='max', tokenIndices=[2, 5], maxVariant='attend-excite', smoothing=False),
        layer_kw=dict(sot=0.0, noise=0.5), checks=['saturated:0'], tie_tokens=[0])
    # Every hinge is 0: L == 0 with no gradient at all (the pipeline then skips the update).
    add('ae_all_saturated_zero_loss', 106, 16, [(16, 1, 'down'), (16, 1, 'up')],
        [hot(2, [A], 0.15, 12.0), hot(5, [B], 0.15, 12.0)],
        dict(mode='max', tokenIndices=[2, 5], maxVariant='attend-excite', smoothing=False),
        layer_kw=dict(sot=0.0, noise=0.5), checks=['saturated:0', 'saturated:1', 'zero_loss'], tie_tokens=[0, 1],
        aggregate_tie=True)
    add('tv_max_default_weights', 107, 16, [(16, 2, 'down'), (16, 1, 'up'), (8, 1, 'mid')],
        [hot(2, [A], 0.12, 1.5), hot(5, [B, C], 0.08, 1.5)], dict(mode='tv_max', tokenIndices=[2, 5]))
    add('tv_max_custom_weights', 108, 16, [(16, 1, 'down'), (16, 2, 'up')],
        [hot(2, [A], 0.12, 1.2), hot(5, [B], 0.08, 1.5)],
        dict(mode='tv_max', tokenIndices=[2, 5], tvMaxWeights=[0.5, 2.0]))

    bind_layers = [(64, 1, 'down'), (32, 1, 'down'), (32, 1, 'up'), (16, 2, 'down'), (16, 1, 'up'), (8, 1, 'mid')]
    # Object 3: small and weak (TV < 0.1, rho 0.3); object 7: broad (TV >= 0.1, rho 0.2). Attributes 2 and 6.
    bind_hot = [hot(3, [A], 0.1, 1.0), hot(2, [A], 0.12, 1.5), hot(7, [B], 0.2, 1.6), hot(6, [(0.6, 0.7)], 0.1, 1.5)]
    add('tv_bind_all_attributes_step0', 109, 16, bind_layers, bind_hot,
        dict(mode='tv_bind', tokenIndices=[3, 7], attributeIndices=[2, 6]), layer_kw=dict(noise=0.5),
        checks=['rho_low:0', 'rho_high:1', 'zero_grad_mid', 'grad_64', 'grad_32'])
    add('tv_bind_some_attributes_step12', 110, 16, [(32, 1, 'down'), (32, 1, 'up'), (16, 2, 'down'), (16, 1, 'up')],
        bind_hot + [hot(10, [C], 0.1, 1.5)],
        dict(mode='tv_bind', tokenIndices=[3, 7, 10], attributeIndices=[2, None, 0], stepIndex=12,
             attributeResolutions=[32]), layer_kw=dict(noise=0.5), checks=['rho_low:0'])
    add('tv_bind_no_attributes_step25', 111, 16, [(32, 1, 'down'), (16, 2, 'down'), (16, 1, 'up'), (8, 1, 'mid')],
        bind_hot,
        dict(mode='tv_bind', tokenIndices=[3, 7], attributeIndices=None, stepIndex=25), layer_kw=dict(noise=0.5),
        checks=['zero_grad_mid', 'zero_grad_32', 'equals_tv'])
    add('tv_bind_t77_step25', 112, 77, [(32, 1, 'up'), (16, 1, 'down'), (16, 1, 'up')],
        [hot(3, [A], 0.2, 2.0), hot(2, [A], 0.12, 1.5), hot(7, [B], 0.1, 1.2), hot(6, [B], 0.1, 1.5)],
        dict(mode='tv_bind', tokenIndices=[3, 7], attributeIndices=[2, 6], stepIndex=25, attributeResolutions=[32]),
        checks=['rho_high:0', 'rho_low:1'])
    add('until_eot_t77', 113, 77, [(16, 2, 'down'), (16, 1, 'up'), (8, 1, 'mid')],
        [hot(2, [A], 0.12, 1.5), hot(5, [B], 0.08, 1.5), hot(8, [C], 0.1, 1.5), hot(30, [C, B], 0.1, 2.0)],
        dict(mode='tv', tokenIndices=[2, 5], tokenSlice='until-eot', eotIndex=9), checks=['differs_all_but_last'])
    add('smoothing_off_tv', 114, 16, [(16, 2, 'down'), (16, 1, 'up')],
        [hot(2, [A], 0.12, 1.5), hot(5, [B], 0.08, 1.2)], dict(mode='tv', tokenIndices=[2, 5], smoothing=False))
    # Identical token columns: equal values, the FIRST listed token takes the whole aggregate gradient.
    add('tie_equal_tokens_tv', 115, 16, [(16, 2, 'down'), (16, 1, 'up'), (8, 1, 'mid')],
        [hot(2, [A], 0.12, 1.0), hot(9, [B], 0.15, 2.0)], dict(mode='tv', tokenIndices=[5, 2, 9]),
        layer_kw=dict(copy_tokens=[(2, 5)]), checks=['equal_values:0:1', 'first_wins:0:1'], aggregate_tie=True)
    add('tie_equal_tokens_max', 116, 16, [(16, 1, 'down'), (16, 2, 'up')],
        [hot(4, [A], 0.1, 1.0), hot(9, [B], 0.1, 1.5)], dict(mode='max', tokenIndices=[9, 4, 6]),
        layer_kw=dict(copy_tokens=[(4, 6)]), checks=['equal_values:1:2', 'first_wins:1:2'], aggregate_tie=True)
    # A 7x7 block of identical pixels under token 2's blob: its maximum is attained at all 49 of them.
    add('tie_constant_region_max_unsmoothed', 117, 16, [(16, 1, 'down'), (16, 2, 'up')],
        [hot(2, [(6.5 / 16, 6.5 / 16)], 0.15, 0.4), hot(5, [B], 0.1, 1.0)],
        dict(mode='max', tokenIndices=[2, 5], smoothing=False),
        layer_kw=dict(const_regions=[(3, 10, 3, 10)], noise=0.3, bias=0.1), checks=['tied_max:0', 'winner:0'],
        tie_tokens=[0])
    # 7x7 blocks of identical pixels (at every resolution) under the object's and the attribute's blobs: the
    # smoothed maps tie over their 5x5 interiors, so max(O), max(C) and max(p) all split the gradient.
    add('tie_constant_region_bind_smoothed', 118, 16, [(32, 1, 'down'), (16, 1, 'down'), (16, 1, 'up')],
        [hot(2, [(5.5 / 16, 5.5 / 16)], 0.15, 1.0), hot(1, [(12.5 / 16, 12.5 / 16)], 0.12, 1.5),
         hot(5, [(0.25, 0.8)], 0.15, 1.5)],
        dict(mode='tv_bind', tokenIndices=[2, 5], attributeIndices=[1, 0], attributeResolutions=[32], stepIndex=10),
        layer_kw=dict(const_regions=[(2, 9, 2, 9), (9, 16, 9, 16)], noise=0.5),
        checks=['tied_max:0', 'tied_attr_max:0', 'winner:0'], tie_tokens=[0])
    # A sharp object peak (max O ~0.8) under a very broad attribute map: where the attribute map is low, the
    # rescaled attribute softmax q falls below tau, so relu clips q there (its only non-shift branch).
    add('tv_bind_attribute_clipped_step20', 120, 16, [(32, 1, 'up'), (16, 1, 'down'), (16, 1, 'up')],
        [hot(3, [(0.5, 0.5)], 0.08, 3.0), hot(2, [(0.5, 0.5)], 1.0, 2.0), hot(5, [C], 0.12, 1.5)],
        dict(mode='tv_bind', tokenIndices=[3, 5], attributeIndices=[2, 0], stepIndex=20, attributeResolutions=[32]),
        layer_kw=dict(noise=0.5), checks=['q_clipped:0', 'rho_low:0', 'winner:0'])
    add('custom_options_res8', 119, 16, [(8, 2, 'mid'), (16, 1, 'up'), (32, 1, 'up')],
        [hot(3, [A], 0.2, 1.0), hot(2, [A], 0.15, 1.5), hot(6, [B], 0.15, 1.5), hot(5, [B], 0.2, 1.5)],
        dict(mode='tv_bind', tokenIndices=[3, 6], attributeIndices=[2, 5], attentionResolution=8,
             attributeResolutions=[16, 32], temperature=50, smoothingSigma=0.7, tvVertical='neighbor',
             bindingRhoLowTv=0.25, bindingRhoHighTv=0.15, bindingTvSwitch=0.05, bindingEpsilon=1e-4,
             bindingCoefficients=[[0, 2], [5, 3]], stepIndex=7))
    return cases


DESCRIPTIONS = {
    'tv_t77_heads_2_1': 'tv, official vertical TV, T = 77, 16-res layers with 2 and 1 heads (mean over all 3 '
                        'maps, not over layer means), an 8-res mid layer that gets zero gradient',
    'tv_neighbor_t16': 'tv with neighbour vertical TV, T = 16, three tokens; the 32-res layer is unused (zero grad)',
    'max_divbind': 'max mode, D&B flavour: L = -min m',
    'max_attend_excite': 'max mode, A&E hinge: L = max(0, 1 - m) over tokens',
    'ae_hinge_one_saturated': 'A&E, smoothing off: token 2 saturates (m == 1.0, hinge is the int 0, no gradient)',
    'ae_all_saturated_zero_loss': 'A&E, every token saturated: L == 0 and every gradient is exactly 0',
    'tv_max_default_weights': 'tv_max, v = TV + 0.3 m; indicator = min m',
    'tv_max_custom_weights': 'tv_max with tvMaxWeights [0.5, 2]',
    'tv_bind_all_attributes_step0': 'tv_bind, attributes for both objects, 64- and 32-res attribute sources, coef 1; '
                                    'token 3 TV < 0.1 (rho 0.3), token 7 TV >= 0.1 (rho 0.2)',
    'tv_bind_some_attributes_step12': 'tv_bind, attributes [2, null, 0] (only the first is real), 32-res source '
                                      'only, step 12 -> coef 5',
    'tv_bind_no_attributes_step25': 'tv_bind without attributes at step 25: identical to tv (32-res layer unused)',
    'tv_bind_t77_step25': 'tv_bind, T = 77, step 25 -> coef 10; the binding term makes one value negative',
    'until_eot_t77': "tokenSlice 'until-eot' (eotIndex 9): softmax over positions 1..8 only",
    'smoothing_off_tv': 'tv without Gaussian smoothing',
    'tie_equal_tokens_tv': 'tokens 5 and 2 have identical columns: equal TV; the first listed (5) takes all of '
                           "the aggregate's gradient (Python max keeps the first maximum)",
    'tie_equal_tokens_max': 'max mode, tokens 4 and 6 identical: token 4 (listed first of the two) wins',
    'tie_constant_region_max_unsmoothed': "max mode, smoothing off, 49 tied maximal pixels of token 2's map: "
                                          'the gradient of max is split evenly among them',
    'tie_constant_region_bind_smoothed': 'tv_bind with constant blocks: max(O), max(p) and max(C) all tie '
                                         '(25 and 36 pixels), split evenly',
    'tv_bind_attribute_clipped_step20': 'tv_bind where relu(q - tau) clips the attribute distribution at 30 '
                                        'pixels (coef 10)',
    'custom_options_res8': 'every numeric option changed: attentionResolution 8, attribute sources 16 and 32, '
                           'temperature 50, sigma 0.7, neighbour TV, custom rho/switch/epsilon/coefficients',
}


# ----------------------------------------------------------------------------------------------------------
# Checks

def fd_check(name, layers_np, options, result):
    """Central differences of the branch-frozen loss vs autograd; returns (worst relative error, lines)."""
    branches = ref.Branches()
    recorded = ref.loss_and_grads(layers_np, branches=branches, **options)
    if recorded['loss'] != result['loss'] or any(
            not np.array_equal(a, b) for a, b in zip(recorded['grads'], result['grads'])):
        raise AssertionError(f'{name}: recording run differs from the live run')
    base = [np.asarray(l['probs'], dtype=np.float64) for l in layers_np]
    grads = result['grads']
    ginf = max(float(np.abs(g).max()) for g in grads)
    g2 = math.sqrt(sum(float((g ** 2).sum()) for g in grads))

    def f(direction, h):
        pert = [dict(l, probs=b + h * d) for l, b, d in zip(layers_np, base, direction)]
        branches.start_replay()
        return ref.loss_value(pert, branches=branches, **options)

    def deriv(direction):
        d1 = (f(direction, FD_H) - f(direction, -FD_H)) / (2 * FD_H)
        d2 = (f(direction, FD_H / 2) - f(direction, -FD_H / 2)) / FD_H
        return (4 * d2 - d1) / 3

    rng = np.random.default_rng(7)
    probes = []
    if g2 > 0:
        probes.append(('grad-dir', [g / g2 for g in grads], g2))
    for i in range(3):
        d = [rng.standard_normal(b.shape) for b in base]
        n = math.sqrt(sum(float((x ** 2).sum()) for x in d))
        d = [x / n for x in d]
        probes.append((f'random-{i}', d, sum(float((x * g).sum()) for x, g in zip(d, grads))))
    reach = [i for i, g in enumerate(grads) if np.any(g != 0)]
    dead = [i for i, g in enumerate(grads) if not np.any(g != 0)]
    coords = []
    if reach:
        flat = np.concatenate([np.abs(grads[i]).reshape(-1) for i in reach])
        offsets = np.cumsum([0] + [grads[i].size for i in reach])
        for j in np.argsort(-flat)[:6]:
            li = int(np.searchsorted(offsets, j, side='right') - 1)
            coords.append((reach[li], int(j - offsets[li])))
        for _ in range(6):
            li = reach[rng.integers(len(reach))]
            coords.append((li, int(rng.integers(grads[li].size))))
    for _ in range(3 if dead else 0):
        li = dead[rng.integers(len(dead))]
        coords.append((li, int(rng.integers(grads[li].size))))
    for li, j in coords:
        d = [np.zeros(b.shape) for b in base]
        d[li].reshape(-1)[j] = 1.0
        probes.append((f'layer{li}[{j}]', d, float(grads[li].reshape(-1)[j])))

    worst = 0.0
    lines = []
    for label, direction, ad in probes:
        fd = deriv(direction)
        floor = FD_FLOOR * (g2 if label.startswith(('grad', 'random')) else ginf)
        denom = max(abs(ad), floor, 1e-300)
        err = abs(fd - ad) / denom if (ad != 0 or fd != 0) else 0.0
        if ginf == 0:  # L has no gradient anywhere: finite differences must vanish too
            err = abs(fd)
        worst = max(worst, err)
        lines.append(f'    {label:>16}: autograd {ad: .12e}  fd {fd: .12e}  rel {err:.2e}')
    return worst, lines


def clipped_q(result, i, options):
    """Pixels where relu(q - tau) clips the attribute distribution (p is never clipped: spec §2.3)."""
    t = result['tokens'][i]
    o = result['object_maps'][i].reshape(-1)
    c = result['attribute_maps'][i].reshape(-1)
    c = c / c.max() * o.max()
    p = np.exp(o - o.max()) / np.exp(o - o.max()).sum()
    q = np.exp(c - c.max()) / np.exp(c - c.max()).sum()
    rho = options.get('rho_low_tv', 0.3) if t['tv'] < options.get('tv_switch', 0.1) else options.get('rho_high_tv', 0.2)
    tau = rho * p.max()
    assert (p > tau).all()
    return int((q <= tau).sum()), float(np.abs(q - tau).min() / tau)


def run_checks(case, layers_np, options, result):
    """Asserts each case covers what it claims (branches, ties, zero gradients)."""
    toks = result['tokens']
    kw = dict(options)
    for check in case['checks']:
        kind, *args = check.split(':')
        idx = [int(a) for a in args]
        if kind == 'zero_grad_mid':
            assert all(not np.any(g) for g, l in zip(result['grads'], layers_np) if l['place'] == 'mid')
        elif kind in ('zero_grad_32', 'zero_grad_64', 'grad_32', 'grad_64'):
            res = int(kind[-2:])
            gs = [g for g, l in zip(result['grads'], layers_np) if l['resolution'] == res]
            assert gs, check
            assert all((not np.any(g)) == kind.startswith('zero') for g in gs), check
        elif kind == 'rho_low':
            assert toks[idx[0]]['tv'] < kw.get('tv_switch', 0.1) and toks[idx[0]]['jsd'] is not None, check
        elif kind == 'rho_high':
            assert toks[idx[0]]['tv'] >= kw.get('tv_switch', 0.1) and toks[idx[0]]['jsd'] is not None, check
        elif kind == 'saturated':
            assert toks[idx[0]]['max_attention'] == 1.0 and toks[idx[0]]['value'] == 0.0, check
        elif kind == 'zero_loss':
            assert result['loss'] == 0.0 and all(not np.any(g) for g in result['grads']), check
        elif kind == 'equals_tv':
            tv = ref.loss_and_grads(layers_np, **dict(kw, mode='tv'))
            assert tv['loss'] == result['loss'], check
            assert all(np.array_equal(a, b) for a, b in zip(tv['grads'], result['grads'])), check
        elif kind == 'differs_all_but_last':
            other = ref.loss_and_grads(layers_np, **dict(kw, token_slice='all-but-last', eot_index=None))
            assert abs(other['loss'] - result['loss']) > 1e-6, check
        elif kind == 'equal_values':
            assert toks[idx[0]]['value'] == toks[idx[1]]['value'], check
            assert toks[idx[0]]['value'] == min(t['value'] for t in toks), f'{check}: the tie must be the winner'
        elif kind == 'first_wins':
            # The gradient must equal the one obtained with only the first tied token.
            first, second = idx
            alone = ref.loss_and_grads(layers_np, **dict(kw, token_indices=[options['token_indices'][first]]))
            other = ref.loss_and_grads(layers_np, **dict(kw, token_indices=[options['token_indices'][second]]))
            assert all(np.array_equal(a, b) for a, b in zip(alone['grads'], result['grads'])), check
            assert any(not np.allclose(a, b) for a, b in zip(other['grads'], result['grads'])), check
        elif kind == 'q_clipped':
            n, _ = clipped_q(result, idx[0], kw)
            assert n > 0, f'{check}: relu never clips q'
            print(f'    relu clips q of token {idx[0]} at {n} pixels')
        elif kind == 'winner':
            values = [t['value'] for t in toks]
            assert values.index(min(values)) == idx[0], f'{check}: token {idx[0]} must decide L'
        elif kind == 'tied_attr_max':
            c = result['attribute_maps'][idx[0]]
            count = int((c == c.max()).sum())
            assert count >= 2, f'{check}: only {count} maximal pixel(s)'
            print(f'    tied attribute maxima of token {idx[0]}: {count} pixels')
        elif kind == 'tied_max':
            o = result['object_maps'][idx[0]]
            count = int((o == o.max()).sum())
            assert count >= 2, f'{check}: only {count} maximal pixel(s)'
            print(f'    tied maxima of token {idx[0]}: {count} pixels')
        else:
            raise ValueError(check)


def check_robust(case, options, result):
    """Outside the deliberate ties, every non-smooth choice must be clear-cut (gaps far above float64 noise),
    so that an independent implementation that rounds differently still takes the same branches."""
    toks = result['tokens']
    gaps = []
    for i, t in enumerate(toks):
        maps = [('object', result['object_maps'][i])]
        if t['jsd'] is not None:
            maps.append(('attribute', result['attribute_maps'][i]))
            gaps.append((f'token {i} rho switch', abs(t['tv'] - options.get('tv_switch', 0.1))))
            gaps.append((f'token {i} relu(q - tau) margin', clipped_q(result, i, options)[1]))
        if i in case['tie_tokens']:
            continue
        for label, m in maps:
            top = np.sort(m.reshape(-1))[-2:]
            gaps.append((f'token {i} {label} map top-2', top[1] - top[0]))
        if options.get('max_variant') == 'attend-excite':
            gaps.append((f'token {i} hinge', abs(t['value'])))
    if not case['aggregate_tie'] and len(toks) > 1:
        if options.get('max_variant') == 'attend-excite':
            agg = sorted(max(0.0, t['value']) for t in toks)
        else:
            agg = sorted(-t['value'] for t in toks)
        gaps.append(('aggregate top-2', agg[-1] - agg[-2]))
    if not gaps:
        print('    no branch outside the deliberate ties')
        return
    label, smallest = min(gaps, key=lambda g: g[1])
    assert smallest > 1e-7, f"{case['name']}: {label} gap {smallest:.3e} is too small to be robust"
    print(f'    smallest branch gap {smallest:.2e} ({label})')


def ts_options(options: dict) -> dict:
    out = dict(mode=options['mode'], tokenIndices=options['tokenIndices'],
               attributeIndices=options.get('attributeIndices'))
    for key, value in options.items():
        if key in out:
            continue
        if key in TS_DEFAULTS and value == TS_DEFAULTS[key]:
            continue
        out[key] = value
    return out


def self_checks():
    """Spot checks of the reference against numbers stated in the spec."""
    k = ref.gaussian_kernel(0.5).numpy()
    expect = np.array([[0.04491922, 0.12210311, 0.04491922], [0.12210311, 0.33191066, 0.12210311],
                       [0.04491922, 0.12210311, 0.04491922]])
    assert np.abs(k - expect).max() < 5e-9, k
    # Official vertical TV on a map that is 1 on row 0 only: row 0 is never used, so V = 0; H = 0.
    a = torch.zeros(16, 16, dtype=torch.float64)
    a[0] = 1
    assert float(ref.total_variation(a, 'official', ref._Live())) == 0.0
    # Map 1 on row 3 only: V = 16/240, neighbour V = 32/240.
    a = torch.zeros(16, 16, dtype=torch.float64)
    a[3] = 1
    assert abs(float(ref.total_variation(a, 'official', ref._Live())) - 16 / 240) < 1e-15
    assert abs(float(ref.total_variation(a, 'neighbor', ref._Live())) - 32 / 240) < 1e-15


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--check', action='store_true', help='run the checks only, write nothing')
    args = parser.parse_args()
    torch.set_num_threads(2)
    self_checks()

    built = []
    worst_all = 0.0
    missing = [c['name'] for c in case_list() if c['name'] not in DESCRIPTIONS]
    assert not missing, f'cases without a description: {missing}'
    for case in case_list():
        rng = np.random.default_rng(case['seed'])
        layers_np = []
        for res, heads, place in case['layers']:
            probs = make_layer(rng, res, heads, case['t'], case['hot'], **case['layer_kw'])
            layers_np.append(dict(probs=probs, resolution=res, place=place))
        options = ref.options_from_camel(case['options'])
        result = ref.loss_and_grads(layers_np, **options)
        print(f"{case['name']}: L = {result['loss']:.12g}, indicator = {result['indicator']:.12g}")
        for t in result['tokens']:
            jsd = 'none' if t['jsd'] is None else f"{t['jsd']:.6g}"
            print(f"    token {t['token_index']}: m {t['max_attention']:.6g} tv {t['tv']:.6g} jsd {jsd} "
                  f"coef {t['coefficient']:g} value {t['value']:.6g}")
        run_checks(case, layers_np, dict(options), result)
        check_robust(case, options, result)
        worst, lines = fd_check(case['name'], layers_np, options, result)
        print('\n'.join(lines))
        print(f'    finite differences: worst relative error {worst:.2e} (limit {FD_RTOL:g})')
        worst_all = max(worst_all, worst)
        built.append((case, layers_np, result, worst))

    failed = [c['name'] for c, _, _, w in built if not w <= FD_RTOL]
    print(f'{len(built)} cases, worst finite-difference relative error {worst_all:.2e}')
    if failed:
        print(f'REFUSING TO WRITE: finite differences disagree for {failed}', file=sys.stderr)
        sys.exit(1)
    if args.check:
        return

    total = sum(l['probs'].size * 4 + g.size * 8 + 2 * 128 for _, ls, r, _ in built for l, g in zip(ls, r['grads']))
    if total > MAX_BYTES:
        print(f'REFUSING TO WRITE: {total} bytes of fixtures exceed {MAX_BYTES}', file=sys.stderr)
        sys.exit(1)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    index = dict(version=1, generator='tools/make_loss_golden.py', cases=[])
    for case, layers_np, result, _ in built:
        name = case['name']
        os.makedirs(os.path.join(OUT, name))
        layer_entries, grad_files = [], []
        for i, (layer, grad) in enumerate(zip(layers_np, result['grads'])):
            file = f'{name}/layer_{i}.npy'
            np.save(os.path.join(OUT, file), layer['probs'].astype(np.float32))
            layer_entries.append(dict(file=file, heads=int(layer['probs'].shape[0]), resolution=layer['resolution'],
                                      place=layer['place']))
            gfile = f'{name}/grad_{i}.npy'
            np.save(os.path.join(OUT, gfile), grad.astype(np.float64))
            grad_files.append(gfile)
        tokens = [dict(tokenIndex=t['token_index'], attributeIndex=t['attribute_index'],
                       maxAttention=t['max_attention'], tv=t['tv'], jsd=t['jsd'], coefficient=t['coefficient'],
                       value=t['value']) for t in result['tokens']]
        index['cases'].append(dict(name=name, description=DESCRIPTIONS[name], options=ts_options(case['options']),
                                   layers=layer_entries,
                                   expected=dict(loss=result['loss'], indicator=result['indicator'], tokens=tokens),
                                   grads=grad_files))
    with open(os.path.join(OUT, 'index.json'), 'w') as fh:
        json.dump(index, fh, indent=1)
        fh.write('\n')
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f'wrote {len(built)} cases to {os.path.relpath(OUT, ROOT)} ({total / 1e6:.2f} MB)')


if __name__ == '__main__':
    main()
