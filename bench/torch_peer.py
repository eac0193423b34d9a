#!/usr/bin/python3
"""The PyTorch peer of the benchmarks: the same Divide & Bind / Attend-and-Excite loop in PyTorch eager, with
autograd for ∂L/∂z, on the same weights as the ONNX model the Node pipeline runs.

    /usr/bin/python3 bench/torch_peer.py --model sd15|tiny --size 512 --modes none,tv_bind --latents L.npy \
        --token-indices 3,7 --attribute-indices 2,6 [--steps 10] [--max-iter 5] [--threads 2] [--warmup-steps 1] \
        [--out-dir DIR]

The loop is spec §3 as tools/reference_pipeline.py runs it (one gradient pass per guided step, the update while
i < maxIterToAlter, CFG at batch 2, PNDM), without refinement (the benchmark's setting), in float32 like the
pipeline. Models: `sd15` = tools/make_sd15_bench_model.build_models (the weights of the SD 1.5-size bench folder),
`tiny` = tools/make_reference_models.build_models (test/fixtures/models/tiny-sd). Loss options follow the pipeline:
object maps at height/32 (the tiny folder declares 8), attributes at 4r and 2r, Attend-and-Excite's hinge for `max`.

Prints one JSON line: per mode the seconds per image (text encoder + loop + VAE, after `--warmup-steps` of warm-up)
and the file with its final latents (compared with the pipeline's by bench/peer.ts: the same model gives the same
trajectory).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))
import clip_bpe  # noqa: E402
import divbind_reference as dbr  # noqa: E402
import make_reference_models as mrm  # noqa: E402
import schedulers_reference as sched_ref  # noqa: E402

TINY_TOKENIZER = os.path.join(REPO, 'test', 'fixtures', 'models', 'tiny-sd', 'tokenizer')
GUIDANCE = 7.5
SCALE_FACTOR = 20.0
SCALE_RANGE = (1.0, 0.5)


def tiny_models():
    """make_reference_models.build_models, with the tokenizer read from the fixture folder (the corpus it was learnt
    from lives outside worktrees)."""
    tok = clip_bpe.ClipTokenizer.from_folder(TINY_TOKENIZER)
    merges = sorted(tok.ranks, key=tok.ranks.get)
    mrm.learn_tokenizer = lambda: (tok.vocab, merges)
    return mrm.build_models()


def load_models(name: str, seed: int):
    if name == 'tiny':
        return tiny_models(), {'attentionResolution': 8, 'attributeResolutions': [32, 16]}
    import make_sd15_bench_model as sd15
    return sd15.build_models(seed), {}


def step_sizes(n: int) -> list:
    return [SCALE_FACTOR * math.sqrt(v) for v in np.linspace(SCALE_RANGE[0], SCALE_RANGE[1], n)]


def loss_options(mode: str, size: int, declared: dict, args, i: int) -> dict:
    r0 = declared.get('attentionResolution', math.ceil(size / 32))
    opts = dict(mode=mode, tokenIndices=args.token_indices, stepIndex=i, attentionResolution=r0,
                attributeResolutions=declared.get('attributeResolutions', [4 * r0, 2 * r0]))
    if mode == 'max':
        opts['maxVariant'] = 'attend-excite'
    if mode == 'tv_bind' and args.attribute_indices:
        opts['attributeIndices'] = args.attribute_indices
    return opts


def guided_update(unet, z, t, cond, opts, alpha, update: bool):
    """One gradient pass: the maps of a batch-1 forward, L, and (when `update`) z − α∇L by autograd."""
    zg = z.detach().requires_grad_(update)
    store = []
    unet.set_attention_store(store)
    try:
        with torch.set_grad_enabled(update):
            unet(zg, t, cond)
            # The loss in float64, as tools/reference_pipeline.py computes it (the maps are small next to the UNet).
            layers = [dict(probs=p[0].double(), resolution=int(round(p.shape[2] ** 0.5)), place=name.split('.')[0])
                      for name, p in store]
            loss = dbr.attention_loss(layers, **dbr.options_from_camel(opts))['loss']
    finally:
        unet.set_attention_store(None)
    if not update or float(loss) == 0.0 or not loss.requires_grad:
        return z.detach()
    g = torch.autograd.grad(loss, zg)[0]
    return (zg - alpha * g).detach()


def generate(models, declared, mode: str, latent0: np.ndarray, steps: int, args):
    tok, te, unet, vae = models
    ids = torch.tensor([tok(args.prompt), tok('')], dtype=torch.int64)
    with torch.no_grad():
        hidden = te(ids)[0]
    cond, uncond = hidden[0:1], hidden[1:2]
    sched = sched_ref.PNDMScheduler(**mrm.SD15_SCHEDULER)
    sched.set_timesteps(steps)
    timesteps = [int(t) for t in sched.timesteps]
    alphas = step_sizes(len(timesteps))
    z = torch.from_numpy(latent0).float()
    size = latent0.shape[-1] * 8
    for i, t in enumerate(timesteps):
        tt = torch.tensor([t])
        if mode != 'none' and i < args.max_iter:
            z = guided_update(unet, z, tt, cond, loss_options(mode, size, declared, args, i), alphas[i], True)
        with torch.no_grad():
            eps = unet(torch.cat([z, z]), tt, torch.cat([uncond, cond]))
            eps = eps[0:1] + GUIDANCE * (eps[1:2] - eps[0:1])
            z = torch.from_numpy(sched.step(eps.numpy(), t, z.numpy())['prev_sample']).float()
    with torch.no_grad():
        vae(z / mrm.VAE_SCALING)
    return z.numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', choices=['sd15', 'tiny'], required=True)
    ap.add_argument('--modes', default='none,tv_bind')
    ap.add_argument('--latents', required=True)
    ap.add_argument('--prompt', default='a red cat and a blue dog')
    ap.add_argument('--token-indices', type=lambda s: [int(x) for x in s.split(',')], default=None,
                    help='object token indices (required by the guided modes)')
    ap.add_argument('--attribute-indices', type=lambda s: [int(x) for x in s.split(',')], default=None)
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--max-iter', type=int, default=5)
    ap.add_argument('--warmup-steps', type=int, default=1)
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out-dir', default='.')
    args = ap.parse_args()
    if args.token_indices is None and any(m != 'none' for m in args.modes.split(',')):
        ap.error('--token-indices is required for the guided modes')
    torch.set_num_threads(args.threads)
    t0 = time.time()
    models, declared = load_models(args.model, args.seed)
    build = time.time() - t0
    latent0 = np.load(args.latents).astype(np.float32)
    result = dict(model=args.model, torch=torch.__version__, threads=args.threads, buildSeconds=build, modes={})
    for mode in args.modes.split(','):
        if args.warmup_steps > 0:
            generate(models, declared, mode, latent0, args.warmup_steps, args)
        t1 = time.time()
        final = generate(models, declared, mode, latent0, args.steps, args)
        seconds = time.time() - t1
        out = os.path.join(args.out_dir, f'{os.path.splitext(os.path.basename(args.latents))[0]}-{mode}-torch.npy')
        np.save(out, final)
        result['modes'][mode] = dict(secondsPerImage=seconds, finalLatents=out)
        print(f'torch peer {args.model} {mode}: {seconds:.2f} s/image', file=sys.stderr, flush=True)
    print(json.dumps(result))


if __name__ == '__main__':
    main()
