"""Independent PyTorch reference of the Divide & Bind / Attend-and-Excite attention losses.

Written from docs/divide-and-bind.md §1 (attention extraction) and §2 (losses) only; the official
Divide & Bind code is AGPL and was not used. Autograd provides the gradients; everything runs in float64.

Public API (kept stable, other tools import it):
  attention_loss(layers, token_indices, ...)   -> dict (torch tensors, differentiable)
  loss_and_grads(layers_np, **options)          -> dict (plain floats + numpy float64 gradients)
  options_from_camel(ts_options)                -> kwargs for the two functions above
  gaussian_kernel(sigma)                        -> the 3x3 smoothing kernel
  Branches                                      -> records/replays non-smooth choices (finite differences)

A layer is dict(probs=Tensor(heads, r*r, T), resolution=r, place='down'|'mid'|'up').

Gradient conventions (PyTorch's; the C++/TS ports must match them):
  * tensor.max() over a whole map splits the gradient evenly among tied maxima;
  * the aggregate L = max_s(-v_s) uses Python's builtin max over a list: the FIRST maximal token wins;
  * |x|'(0) = 0 (TV terms with equal neighbours), relu'(0) = 0;
  * A&E hinge max(0, 1 - m) via Python's max: exactly 0 (no gradient) when 1 - m <= 0.

Usage: /usr/bin/python3 -c "import sys; sys.path.insert(0, 'tools'); import divbind_reference as r; ..."
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DTYPE = torch.float64

DEFAULTS: dict[str, Any] = dict(
    attribute_indices=None, mode='tv', step_index=0, attention_resolution=16,
    attribute_resolutions=(64, 32), temperature=100.0, token_slice='all-but-last', eot_index=None,
    smoothing=True, sigma=0.5, tv_vertical='official', max_variant='divbind', rho_low_tv=0.3,
    rho_high_tv=0.2, tv_switch=0.1, eps=1e-5, coefficients=((0, 1.0), (10, 5.0), (20, 10.0)),
    tv_max_weights=(1.0, 0.3),
)

# TS LossOptions key (lib/loss/types.ts) -> keyword of attention_loss.
CAMEL_TO_SNAKE = dict(
    mode='mode', tokenIndices='token_indices', attributeIndices='attribute_indices', stepIndex='step_index',
    attentionResolution='attention_resolution', attributeResolutions='attribute_resolutions',
    temperature='temperature', tokenSlice='token_slice', eotIndex='eot_index', smoothing='smoothing',
    smoothingSigma='sigma', tvVertical='tv_vertical', maxVariant='max_variant',
    bindingRhoLowTv='rho_low_tv', bindingRhoHighTv='rho_high_tv', bindingTvSwitch='tv_switch',
    bindingEpsilon='eps', bindingCoefficients='coefficients', tvMaxWeights='tv_max_weights',
)
SNAKE_TO_CAMEL = {v: k for k, v in CAMEL_TO_SNAKE.items()}

MODES = ('max', 'tv', 'tv_bind', 'tv_max')


def options_from_camel(ts_options: dict) -> dict:
    """Converts TS LossOptions (camelCase) into attention_loss keywords; unknown keys raise KeyError."""
    out = {}
    for key, value in ts_options.items():
        if key not in CAMEL_TO_SNAKE:
            raise KeyError(f'unknown LossOptions key {key!r}')
        out[CAMEL_TO_SNAKE[key]] = value
    return out


class Branches:
    """Records every non-smooth choice (argmax sets, signs, relu masks, hinge, aggregate winner, rho) on the
    first call and replays it on later calls, replacing each kink by the smooth branch it selected. The
    replayed function equals the real one near the recorded point and is differentiable there, so central
    finite differences of the replay check autograd's (sub)gradient even at ties."""

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.replaying = False
        self.pos = 0

    def start_replay(self) -> None:
        self.replaying = True
        self.pos = 0

    def _next(self) -> Any:
        value = self.log[self.pos]
        self.pos += 1
        return value

    def tmax(self, x: torch.Tensor) -> torch.Tensor:
        """Full-tensor max; replay = mean over the recorded tied maxima (PyTorch's even split)."""
        if self.replaying:
            mask = self._next()
            return (x * mask).sum() / mask.sum()
        result = x.max()
        self.log.append((x == result).detach().to(x.dtype))
        return result

    def abs(self, x: torch.Tensor) -> torch.Tensor:
        if self.replaying:
            return x * self._next()
        self.log.append(torch.sign(x).detach())
        return x.abs()

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        if self.replaying:
            return x * self._next()
        self.log.append((x > 0).detach().to(x.dtype))
        return torch.relu(x)

    def pymax(self, items: Sequence[Any]) -> Any:
        """Python's builtin max (first maximal item wins); replay returns the recorded item's position."""
        if self.replaying:
            return items[self._next()]
        best = 0
        for i in range(1, len(items)):
            if items[i] > items[best]:
                best = i
        self.log.append(best)
        return items[best]

    def choose(self, make: Callable[[], Any]) -> Any:
        """A piecewise-constant choice (rho): recorded once, replayed verbatim."""
        if self.replaying:
            return self._next()
        value = make()
        self.log.append(value)
        return value


class _Live(Branches):
    """The plain (non-recording) behaviour: exactly the PyTorch / Python operations."""

    def tmax(self, x):
        return x.max()

    def abs(self, x):
        return x.abs()

    def relu(self, x):
        return torch.relu(x)

    def pymax(self, items):
        return max(items)  # builtin: the first maximal item wins

    def choose(self, make):
        return make()


def gaussian_kernel(sigma: float = 0.5, dtype=DTYPE) -> torch.Tensor:
    """3x3 kernel: outer product of g(x) = exp(-((x-1)/(2 sigma))^2), x in {0,1,2}, normalised to sum 1.
    Note the (2 sigma)^2 denominator (spec §1), i.e. an effective sigma of sigma*sqrt(2)."""
    x = torch.arange(3, dtype=dtype)
    g = torch.exp(-(((x - 1.0) / (2.0 * sigma)) ** 2))
    k = torch.outer(g, g)
    return k / k.sum()


def smooth(a: torch.Tensor, sigma: float) -> torch.Tensor:
    """Reflect pad 1 (no edge repeat) + valid 3x3 correlation; (r, r) -> (r, r)."""
    padded = F.pad(a[None, None], (1, 1, 1, 1), mode='reflect')
    return F.conv2d(padded, gaussian_kernel(sigma, a.dtype)[None, None])[0, 0]


def total_variation(a: torch.Tensor, vertical: str, br: Branches) -> torch.Tensor:
    """H + V (spec §2.2). H: mean |A[:, c] - A[:, c+1]| over r(r-1) pairs.
    V official: mean over rows 1..r-1 of |A[r-1, :] - A[row, :]| (broadcast quirk, r(r-1) terms);
    V neighbor: mean |A[row, :] - A[row+1, :]|."""
    h = br.abs(a[:, :-1] - a[:, 1:]).mean()
    if vertical == 'official':
        v = br.abs(a[-1:, :] - a[1:, :]).mean()
    elif vertical == 'neighbor':
        v = br.abs(a[:-1, :] - a[1:, :]).mean()
    else:
        raise ValueError(f"tv_vertical must be 'official' or 'neighbor', got {vertical!r}")
    return h + v


def _aggregate(layers: Sequence[dict], resolutions: Sequence[int], r: int) -> torch.Tensor:
    """Plain mean over every (layer, head) map of the given source resolutions, each nearest-resized to r x r.
    Returns (r, r, T)."""
    maps = []
    for layer in layers:
        res = int(layer['resolution'])
        if res not in resolutions:
            continue
        p = layer['probs']
        heads, hw, t = p.shape
        if hw != res * res:
            raise ValueError(f'layer probs have {hw} positions, expected resolution^2 = {res * res}')
        m = p.reshape(heads, res, res, t)
        if res != r:
            # nearest: output index o reads input index floor(o * res / r) (pure subsampling when res > r)
            m = F.interpolate(m.permute(0, 3, 1, 2), size=(r, r), mode='nearest').permute(0, 2, 3, 1)
        maps.append(m)
    if not maps:
        raise ValueError(f'no attention layer with resolution in {list(resolutions)}')
    return torch.cat(maps, 0).mean(0)


def _token_softmax(agg: torch.Tensor, token_slice: str, eot_index: Optional[int], temperature: float):
    t = agg.shape[-1]
    if token_slice == 'all-but-last':
        stop = t - 1
    elif token_slice == 'until-eot':
        if eot_index is None or not (2 <= eot_index <= t - 1):
            raise ValueError(f'until-eot needs 2 <= eot_index <= {t - 1}, got {eot_index!r}')
        stop = eot_index
    else:
        raise ValueError(f'unknown token_slice {token_slice!r}')
    return torch.softmax(temperature * agg[:, :, 1:stop], dim=-1)


def _coefficient(coefficients, step_index: int) -> float:
    coef = None
    for start, value in coefficients:
        if step_index >= start:
            coef = float(value)
    if coef is None:
        raise ValueError(f'no binding coefficient applies to step_index {step_index}')
    return coef


def attention_loss(layers: Sequence[dict], token_indices: Sequence[int], attribute_indices=None, mode='tv',
                   step_index=0, attention_resolution=16, attribute_resolutions=(64, 32), temperature=100.0,
                   token_slice='all-but-last', eot_index=None, smoothing=True, sigma=0.5, tv_vertical='official',
                   max_variant='divbind', rho_low_tv=0.3, rho_high_tv=0.2, tv_switch=0.1, eps=1e-5,
                   coefficients=((0, 1.0), (10, 5.0), (20, 10.0)), tv_max_weights=(1.0, 0.3),
                   branches: Optional[Branches] = None) -> dict:
    """The loss of spec §2 on one image's cross-attention layers.

    Returns dict(loss=0-d tensor (no grad_fn when the A&E hinge is 0 for every token), indicator=float,
    tokens=[dict(token_index, attribute_index (None = none), max_attention, tv, jsd (None = none),
    coefficient, value)], object_maps=(K, r, r) tensor, attribute_maps=(K, r, r) tensor (zeros for tokens
    without attribute) or None outside tv_bind).
    Per-token value: max/divbind m; max/attend-excite 1 - m; tv TV; tv_bind TV - coef*JSD (TV without
    attribute); tv_max wTv*TV + wMax*m. coefficient is the scheduled one for every token in tv_bind, else 0.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    if max_variant not in ('divbind', 'attend-excite'):
        raise ValueError(f'unknown max_variant {max_variant!r}')
    br = branches if branches is not None else _Live()
    r = int(attention_resolution)
    k = len(token_indices)
    if k == 0:
        raise ValueError('token_indices must not be empty')
    attrs: list[Optional[int]] = [None] * k
    if attribute_indices is not None:
        if len(attribute_indices) != k:
            raise ValueError('attribute_indices must align with token_indices')
        attrs = [None if (a is None or a <= 0) else int(a) for a in attribute_indices]

    # §1 object maps: mean over (layer, head) at r, slice, temperature, softmax over tokens.
    obj = _token_softmax(_aggregate(layers, [r], r), token_slice, eot_index, temperature)
    binding = mode == 'tv_bind' and any(a is not None for a in attrs)
    att = None
    if binding:
        att = _token_softmax(_aggregate(layers, [int(x) for x in attribute_resolutions], r),
                             token_slice, eot_index, temperature)

    def column(s: torch.Tensor, index: int) -> torch.Tensor:
        if not (1 <= index <= s.shape[-1]):
            raise ValueError(f'token index {index} is outside the sliced range 1..{s.shape[-1]}')
        a = s[:, :, index - 1]
        return smooth(a, sigma) if smoothing else a

    coef = _coefficient(coefficients, step_index) if mode == 'tv_bind' else 0.0
    w_tv, w_max = (float(tv_max_weights[0]), float(tv_max_weights[1]))
    tokens, values, object_maps, attribute_maps = [], [], [], []
    for s_index, a_index in zip(token_indices, attrs):
        o = column(obj, int(s_index))
        object_maps.append(o)
        m = br.tmax(o)
        tv = total_variation(o, tv_vertical, br)
        jsd = None
        c_map = torch.zeros_like(o)
        if mode == 'max':
            value = m if max_variant == 'divbind' else 1.0 - m
        elif mode == 'tv':
            value = tv
        elif mode == 'tv_max':
            value = w_tv * tv + w_max * m
        else:  # tv_bind
            value = tv
            if a_index is not None:
                c_map = column(att, a_index)
                c = c_map / br.tmax(c_map) * br.tmax(o)  # same peak as the object map
                p = torch.softmax(o.reshape(-1), 0)
                q = torch.softmax(c.reshape(-1), 0)
                tv_value = float(tv)
                rho = br.choose(lambda: rho_low_tv if tv_value < tv_switch else rho_high_tv)
                tau = rho * br.tmax(p)  # from the OBJECT softmax, used for both
                p = br.relu(p - tau) + eps
                q = br.relu(q - tau) + eps
                mid = 0.5 * (p + q)
                jsd = 0.5 * (p * (p.log() - mid.log())).sum() + 0.5 * (q * (q.log() - mid.log())).sum()
                value = tv - coef * jsd
        attribute_maps.append(c_map)
        values.append(value)
        tokens.append(dict(token_index=int(s_index), attribute_index=a_index, max_attention=float(m),
                           tv=float(tv), jsd=None if jsd is None else float(jsd), coefficient=coef,
                           value=float(value)))

    if mode == 'max' and max_variant == 'attend-excite':
        hinges = [br.pymax([0, v]) for v in values]  # Python max(0, 1 - m): int 0 when 1 - m <= 0
        loss = br.pymax(hinges)
    else:
        loss = br.pymax([-v for v in values])
    if not torch.is_tensor(loss):
        loss = torch.zeros((), dtype=DTYPE)
    if mode in ('max', 'tv_max'):
        indicator = min(t['max_attention'] for t in tokens)
    else:
        indicator = min(t['tv'] for t in tokens)
    return dict(loss=loss, indicator=indicator, tokens=tokens, object_maps=torch.stack(object_maps),
                attribute_maps=torch.stack(attribute_maps) if mode == 'tv_bind' else None)


def _to_torch_layers(layers_np: Sequence[dict]) -> list[dict]:
    out = []
    for layer in layers_np:
        probs = torch.as_tensor(np.asarray(layer['probs'])).to(DTYPE).clone().requires_grad_(True)
        out.append(dict(probs=probs, resolution=int(layer['resolution']), place=layer.get('place', 'down')))
    return out


def loss_and_grads(layers_np: Sequence[dict], branches: Optional[Branches] = None, **options) -> dict:
    """attention_loss on numpy layers (any float dtype, promoted to float64) plus dL/dprobs per layer.
    Returns dict(loss=float, indicator, tokens, object_maps (np), attribute_maps (np or None),
    grads=[np.float64 arrays shaped like each layer's probs; zeros for layers that do not reach L])."""
    layers = _to_torch_layers(layers_np)
    result = attention_loss(layers, branches=branches, **options)
    loss = result['loss']
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, [l['probs'] for l in layers], allow_unused=True)
    else:
        grads = [None] * len(layers)
    result['grads'] = [np.zeros(l['probs'].shape) if g is None else g.detach().numpy()
                       for g, l in zip(grads, layers)]
    result['loss'] = float(loss)
    result['object_maps'] = result['object_maps'].detach().numpy()
    if result['attribute_maps'] is not None:
        result['attribute_maps'] = result['attribute_maps'].detach().numpy()
    return result


def loss_value(layers_np: Sequence[dict], branches: Optional[Branches] = None, **options) -> float:
    """L only, no autograd (for finite differences)."""
    with torch.no_grad():
        layers = [dict(probs=torch.as_tensor(np.asarray(l['probs'])).to(DTYPE), resolution=int(l['resolution']),
                       place=l.get('place', 'down')) for l in layers_np]
        return float(attention_loss(layers, branches=branches, **options)['loss'])


if __name__ == '__main__':
    # Smoke run on random maps: prints L, indicator and per-token values for every mode.
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    demo = []
    for res in (64, 32, 16, 16, 8):
        logits = rng.normal(size=(2, res * res, 77))
        demo.append(dict(probs=np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), resolution=res,
                         place='down'))
    for mode in MODES:
        out = loss_and_grads(demo, token_indices=[2, 5], attribute_indices=[1, 0], mode=mode)
        print(mode, out['loss'], out['indicator'], [round(t['value'], 6) for t in out['tokens']])
    print('kernel', gaussian_kernel(0.5).numpy().round(8).tolist())
