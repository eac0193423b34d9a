"""Export a shapes-sd training checkpoint to the standard SD ONNX folder layout (diffusers
OnnxStableDiffusionPipeline): model_index.json, scheduler/ (SD 1.5 PNDM), tokenizer/ (CLIP BPE), text_encoder/,
unet/ (dynamic batch), vae_decoder/, all opset 17, float32, self-contained .onnx files.

The exported decoder takes SD's convention (latents already divided by 0.18215): the training-time latent
standardisation (per-channel mean/std of the encoder output) is folded into post_quant_conv, so any SD pipeline
that scales by 0.18215 decodes correctly.

Also writes reference/ (.npy): fixed inputs and the PyTorch outputs of each exported model, so a runtime test can
check onnxruntime against PyTorch (test/eval/shapes-model.test.ts).

Usage: python3 tools/shapes/export.py CHECKPOINT OUTDIR
  CHECKPOINT: ckpt-ema.pt (or ckpt-unet.pt) from train.py; ckpt-ae.pt must sit next to it. loss.png / loss.json /
  samples.png / train.log next to it are copied as well when present.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import data as D  # noqa: E402
import model as M  # noqa: E402
import pngio  # noqa: E402
from model import sm  # noqa: E402

import clip_bpe  # noqa: E402

OPSET = 17


class TextEncoderExport(torch.nn.Module):
    def __init__(self, te):
        super().__init__()
        self.te = te

    def forward(self, input_ids):
        return self.te(input_ids)


def load_checkpoint(path: str):
    def _load(p):
        kwargs = {'map_location': 'cpu'}
        try:
            return torch.load(p, weights_only=False, **kwargs)
        except TypeError:  # torch < 1.13 has no weights_only
            return torch.load(p, **kwargs)

    if os.path.isdir(path):
        path = os.path.join(path, 'ckpt-ema.pt')
    if not os.path.isfile(path):
        raise SystemExit(f'checkpoint not found: {path} (pass ckpt-ema.pt written by tools/shapes/train.py)')
    ck = _load(path)
    ae_path = os.path.join(os.path.dirname(path), 'ckpt-ae.pt')
    if not os.path.isfile(ae_path):
        raise SystemExit(f'{ae_path} not found: the autoencoder checkpoint must sit next to {path}')
    return path, ck, _load(ae_path)


def training_curves(ckpt_path: str) -> dict:
    """The loss curves train.py keeps in ckpt-unet.pt (the EMA checkpoint does not carry them)."""
    unet_path = os.path.join(os.path.dirname(ckpt_path), 'ckpt-unet.pt')
    if not os.path.isfile(unet_path):
        return {}
    return torch.load(unet_path, map_location='cpu').get('curves') or {}


def fold_latent_scaling(ae: M.AutoEncoder) -> sm.VaeDecoder:
    """Decoder input u = x0 / 0.18215 with x0 = (z − mean) / std, so z = 0.18215·std·u + mean: fold into the
    1×1 post_quant_conv (W' = W·diag(0.18215·std), b' = b + W·mean)."""
    dec = ae.decoder
    conv = dec.post_quant_conv
    s = (M.SCALING_FACTOR * ae.latent_std).to(torch.float64)
    mean = ae.latent_mean.to(torch.float64)
    with torch.no_grad():
        w = conv.weight.to(torch.float64)
        conv.bias.copy_((conv.bias.to(torch.float64) + w[:, :, 0, 0] @ mean).to(torch.float32))
        conv.weight.copy_((w * s[None, :, None, None]).to(torch.float32))
    return dec


def export(ckpt_path: str, out: str) -> dict:
    ckpt_path, ck, ae_ck = load_checkpoint(ckpt_path)
    cfg = ck['config']
    merges = [tuple(m) for m in ck['merges']]
    vocab = clip_bpe.build_vocab(merges)
    if len(vocab) != ck['vocab_size']:
        raise SystemExit(f'tokenizer mismatch: {len(vocab)} entries rebuilt, checkpoint says {ck["vocab_size"]}')
    tok = clip_bpe.ClipTokenizer(vocab, merges)
    te, unet, ae = M.build(cfg, ck['vocab_size'], tok.eot, D.separator_ids(tok))
    te.load_state_dict(ck['text_encoder'])
    unet.load_state_dict(ck['unet'])
    ae.load_state_dict(ae_ck['model'])
    for m in (te, unet, ae):
        m.eval()

    if os.path.isdir(out):
        for sub in ('tokenizer', 'scheduler', 'text_encoder', 'unet', 'vae_decoder', 'reference'):
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    clip_bpe.write_tokenizer_files(os.path.join(out, 'tokenizer'), merges)
    os.makedirs(os.path.join(out, 'scheduler'), exist_ok=True)
    with open(os.path.join(out, 'scheduler', 'scheduler_config.json'), 'w') as f:
        json.dump(M.SD15_SCHEDULER, f, indent=2)
    state = ck.get('state', {})
    index = {
        '_class_name': 'OnnxStableDiffusionPipeline',
        '_diffusers_version': '0.6.0',
        'feature_extractor': [None, None],
        'requires_safety_checker': False,
        'safety_checker': [None, None],
        'scheduler': ['diffusers', 'PNDMScheduler'],
        'text_encoder': ['diffusers', 'OnnxRuntimeModel'],
        'tokenizer': ['transformers', 'CLIPTokenizer'],
        'unet': ['diffusers', 'OnnxRuntimeModel'],
        'vae_decoder': ['diffusers', 'OnnxRuntimeModel'],
        'vae_encoder': [None, None],
        # 16×16 latent: objects and attributes both from the 16² cross-attention layers (the only level with
        # room for several objects; 8² and 4² are too coarse).
        # The model's own D&B defaults (lib/options/model-defaults.ts), chosen on the dev prompts (README):
        # its padding tokens take most of the attention, so the token softmax stops at EOT; lower refinement caps.
        'divbind': {'attentionResolution': 16, 'attributeResolutions': [16],
                    'defaults': {'loss': {'tokenSlice': 'until-eot'}, 'refinement': {'initStep': 20, 'other': 10}}},
        'shapes_sd': {
            'image_size': M.IMAGE_SIZE, 'latent_size': M.LATENT_SIZE, 'vae_scale_factor': M.IMAGE_SIZE // M.LATENT_SIZE,
            'shapes': list(D.SHAPES), 'colours': {k: list(v) for k, v in D.COLOURS.items()},
            'background': list(D.BACKGROUND),
            'unet_steps': state.get('unet_step'), 'autoencoder_steps': state.get('ae_step'),
            'batch': ck.get('batch'), 'seed': ck.get('seed'), 'trained_with_torch': ck.get('torch'),
            'checkpoint': os.path.basename(ckpt_path),
        },
    }
    with open(os.path.join(out, 'model_index.json'), 'w') as f:
        json.dump(index, f, indent=2)

    ref = os.path.join(out, 'reference')
    os.makedirs(ref)
    # text encoder: int32 ids (the diffusers export casts to int32), dynamic batch
    prompt = 'a red circle and a blue square'
    ids = torch.tensor([tok(prompt), tok('')], dtype=torch.int32)
    with torch.no_grad():
        torch.onnx.export(TextEncoderExport(te), (ids,), _mk(out, 'text_encoder'), input_names=['input_ids'],
                          output_names=['last_hidden_state', 'pooler_output'],
                          dynamic_axes={'input_ids': {0: 'batch'}, 'last_hidden_state': {0: 'batch'},
                                        'pooler_output': {0: 'batch'}}, opset_version=OPSET, do_constant_folding=True)
        hidden = te(ids)[0]
    np.save(os.path.join(ref, 'input_ids.npy'), ids.numpy())
    np.save(os.path.join(ref, 'last_hidden_state.npy'), hidden.numpy())

    # unet: int64 timestep [1] (the 2022 diffusers export), dynamic batch
    g = torch.Generator().manual_seed(11)
    sample = torch.randn(2, 4, M.LATENT_SIZE, M.LATENT_SIZE, generator=g)
    timestep = torch.tensor([501], dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(unet, (sample, timestep, hidden), _mk(out, 'unet'),
                          input_names=['sample', 'timestep', 'encoder_hidden_states'], output_names=['out_sample'],
                          dynamic_axes={'sample': {0: 'batch'}, 'encoder_hidden_states': {0: 'batch'},
                                        'out_sample': {0: 'batch'}}, opset_version=OPSET, do_constant_folding=True)
        eps = unet(sample, timestep, hidden)
    np.save(os.path.join(ref, 'sample.npy'), sample.numpy())
    np.save(os.path.join(ref, 'timestep.npy'), timestep.numpy())
    np.save(os.path.join(ref, 'out_sample.npy'), eps.numpy())

    # vae decoder with the latent standardisation folded in
    dec = fold_latent_scaling(ae)
    latent = torch.randn(1, 4, M.LATENT_SIZE, M.LATENT_SIZE, generator=g) / M.SCALING_FACTOR
    with torch.no_grad():
        torch.onnx.export(dec, (latent,), _mk(out, 'vae_decoder'), input_names=['latent_sample'],
                          output_names=['sample'],
                          dynamic_axes={'latent_sample': {0: 'batch', 2: 'height', 3: 'width'},
                                        'sample': {0: 'batch', 2: 'height', 3: 'width'}},
                          opset_version=OPSET, do_constant_folding=True)
        img = dec(latent)
        # The fold must reproduce decoder(denormalise(x0)) exactly (up to float rounding).
        ae2 = M.build(cfg, ck['vocab_size'], tok.eot, D.separator_ids(tok))[2]
        ae2.load_state_dict(ae_ck['model'])
        ref_img = ae2.decoder(ae2.denormalise(latent * M.SCALING_FACTOR))
        err = float((img - ref_img).abs().max())
        if err > 1e-4:
            raise SystemExit(f'latent-scaling fold is wrong: max |Δ| = {err}')
    np.save(os.path.join(ref, 'latent_sample.npy'), latent.numpy())
    np.save(os.path.join(ref, 'decoded.npy'), img.numpy())
    with open(os.path.join(out, 'vae_decoder', 'config.json'), 'w') as f:
        json.dump({'scaling_factor': M.SCALING_FACTOR, 'latent_channels': 4, 'sample_size': M.IMAGE_SIZE,
                   'vae_scale_factor': M.IMAGE_SIZE // M.LATENT_SIZE}, f, indent=2)
    with open(os.path.join(ref, 'README.md'), 'w') as f:
        f.write(f'PyTorch outputs of the exported models on fixed inputs (tools/shapes/export.py).\n'
                f'input_ids: tokenizer({prompt!r}) and tokenizer(\'\') → last_hidden_state;\n'
                f'sample + timestep + last_hidden_state → out_sample (unet); latent_sample → decoded (vae_decoder).\n')

    for extra in ('loss.png', 'loss.json', 'samples.png', 'train.log'):
        src = os.path.join(os.path.dirname(ckpt_path), extra)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out, extra))

    curves = ck.get('curves') or training_curves(ckpt_path)
    if curves and not os.path.isfile(os.path.join(out, 'loss.png')):
        # A run stopped by its budget before finish() has no loss.json/loss.png: draw them from the checkpoint.
        with open(os.path.join(out, 'loss.json'), 'w') as f:
            json.dump({'curves': curves, 'state': state,
                       'columns': {'ae': ['step', 'loss'], 'unet': ['step', 'loss', 'lr', 'elapsed_s', 'samples_per_s']}}, f)
        pngio.plot_losses(os.path.join(out, 'loss.png'), curves)
    write_readme(out, {**ck, 'curves': curves}, ae_ck, state)

    import onnx
    sizes = {}
    for sub in ('text_encoder', 'unet', 'vae_decoder'):
        p = os.path.join(out, sub, 'model.onnx')
        onnx.checker.check_model(onnx.load(p))
        sizes[sub] = os.path.getsize(p)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out) for fn in fns)
    info = {'out': out, 'bytes': sizes, 'total_bytes': total, 'unet_steps': state.get('unet_step'),
            'fold_max_abs_err': err}
    print(json.dumps(info, indent=2))
    return info


def write_readme(out: str, ck: dict, ae_ck: dict, state: dict) -> None:
    """models/shapes-sd/README.md: what the model is, and the training numbers read from the checkpoint. The
    measured quality (detector-scored grids and the benchmark table) is appended by the project README's eval run."""
    curves = ck.get('curves') or {}
    unet_curve = curves.get('unet') or []
    last = [r[1] for r in unet_curve[-10:]]
    final_loss = f'{sum(last) / len(last):.4f} (mean of the last {len(last)} logged points)' if last else 'n/a'
    cfg, recipe = ck['config'], ck.get('recipe', {})
    unet_s = state.get('unet_s') or 0.0
    rate = state.get('samples_seen', 0) / unet_s if unet_s else float('nan')
    te, un, vae = cfg['text_encoder'], cfg['unet'], cfg['vae']
    text = f"""# shapes-sd: the bundled small text-to-image model

A Stable-Diffusion-architecture model trained from scratch, on a 2-core CPU, on the **Shapes world**
(tools/shapes/data.py): 64×64 scenes of 1-3 shapes (circle, square, triangle) in 8 named colours
({', '.join(D.COLOUR_NAMES)}) on a grey background, with captions such as "a red circle and a blue square" or
"two circles and a triangle". Because the truth of every scene is known, the project can *measure* what Divide &
Bind claims (fewer missing objects, correct colour binding) with `divbind-native eval` (lib/eval/).

## Files
Standard diffusers ONNX layout (OnnxStableDiffusionPipeline), opset {OPSET}, float32: `model_index.json`,
`scheduler/` (SD 1.5 PNDM config), `tokenizer/` (CLIP BPE learnt over the caption words, each word one token),
`text_encoder/`, `unet/` (dynamic batch, int64 timestep [1]), `vae_decoder/` (latent standardisation folded in;
SD's 0.18215 convention; `config.json` says the VAE factor is 4, not SD's 8), `reference/` (PyTorch outputs on
fixed inputs, checked against onnxruntime by test/eval/shapes-model.test.ts), `loss.png` / `loss.json`
(training curves), `samples.png` (plain sampling through this package, 9 prompts × seeds 0-3; a run that reaches its end also writes a PyTorch preview there), `train.log`.

## Architecture
- Text encoder: CLIP text transformer, hidden {te['hidden_size']}, {te['num_layers']} layers, {te['num_heads']} heads, 77 positions, a
  *phrase* mask: attention is causal within each object phrase (the caption split at "and", "," and the first EOT),
  so every object reaches the UNet only through its own words;
  **frozen** at its seeded random initialisation (as SD keeps CLIP frozen), so its outputs for every training
  caption were computed once.
- Autoencoder: 64×64×3 → 16×16×4 latent. Encoder (training only): 4×4 space-to-depth + convolutions at 16².
  Decoder: SD's VAE decoder layout, block_out_channels {tuple(vae['block_out_channels'])}, no mid attention.
- UNet: SD layout, block_out_channels {tuple(un['block_out_channels'])}, {un['layers_per_block']} layer per block, {un['num_heads']} heads, cross-attention dim
  {un['cross_attention_dim']}. 16²: cross-attention only (no self-attention or feed-forward); 8²: resnets; mid at 8²:
  self- and cross-attention with feed-forward. Object and attribute maps both come from the three 16²
  cross-attention layers: `"divbind": {{"attentionResolution": 16, "attributeResolutions": [16]}}` in
  model_index.json.

## Training (tools/shapes/train.py; recipe in the checkpoint, reproduced here)
- Data: {recipe.get('scenes')} scenes rendered once (seed {ck.get('seed')}), encoded once by the frozen encoder and cached;
  each draw picks a caption variant at random (object order; {recipe.get('p_uncoloured')} without colour words,
  half of those counting repeated shapes; {recipe.get('p_empty')} empty for classifier-free guidance).
- Autoencoder: {state.get('ae_step')} steps (AdamW {recipe.get('ae_lr')}, MSE + 0.5·L1, latent noise); reconstruction MSE
  {state.get('ae_eval_mse', float('nan')):.5f} on [-1, 1] images.
- UNet: ε-prediction, SD 1.5 noise schedule (scaled_linear 0.00085-0.012, 1000 steps), min-SNR-5 loss weights,
  AdamW {recipe.get('lr')} (β₂ 0.99, weight decay 0.01, warm-up {recipe.get('warmup')} steps, cosine to 10 % over the wall-clock budget),
  grad-norm clip 1, EMA {recipe.get('ema')} (exported). {recipe.get('procs')} worker processes × batch {recipe.get('batch')}.
- {state.get('unet_step')} UNet steps, **{state.get('samples_seen')} samples seen at {rate:.0f} samples/s**; final ε-loss {final_loss}.
  Total wall time {state.get('elapsed_s', 0) / 60:.1f} min over {state.get('runs')} run(s), torch {ck.get('torch')}, one worker
  pinned to one core of a 2-core machine (train.log records the run, including two text-encoder mask changes).
- Export: `/usr/bin/python3 tools/shapes/export.py <out>/ckpt-ema.pt models/shapes-sd`.

![loss curves](loss.png)

Loss curves (log scale): autoencoder reconstruction on the left, UNet ε-MSE (min-SNR-5 weighted) on the right;
raw in blue, smoothed in red.

![samples](samples.png)

## What it draws, and its limits
- Prompts in the caption grammar: "a [colour] shape", "two|three shapes", joined by "," and "and". Other words
  tokenize into byte pieces the model never saw: expect arbitrary scenes.
- Scenes are 64×64 only (latent 16×16; `--height 64 --width 64` are the only sizes); 8 colours × 3 shapes; a
  scene never has two objects of the same colour, so "two red circles" is outside what it learnt.
- It is a small model trained for a couple of hours on a CPU: objects can be missing, merged or miscoloured,
  which is exactly what the benchmark measures (see the project README for the table per guidance method).
"""
    with open(os.path.join(out, 'README.md'), 'w') as f:
        f.write(text)


def _mk(out: str, sub: str) -> str:
    os.makedirs(os.path.join(out, sub), exist_ok=True)
    return os.path.join(out, sub, 'model.onnx')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('checkpoint', help='ckpt-ema.pt (or its folder) written by tools/shapes/train.py')
    ap.add_argument('outdir')
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    export(a.checkpoint, a.outdir)


if __name__ == '__main__':
    main()
