#!/usr/bin/python3
"""Builds an SD 1.5-size Stable Diffusion ONNX folder (random weights) for the benchmarks. Not used by CI.

    /usr/bin/time -v /usr/bin/python3 tools/make_sd15_bench_model.py OUT_DIR [--seed 0]

OUT_DIR is an OnnxStableDiffusionPipeline folder: the UNet with SD 1.5's config (859,520,964 parameters, ~3.4 GB of
page-aligned external data, dynamic batch, height and width, so one export runs 256² and 512²), a text encoder with
CLIP ViT-L/14's size (hidden 768, 12 layers) over the tiny fixture's vocabulary, a VAE decoder with SD's channels
(128/256/512/512), and the tiny fixture's tokenizer and SD 1.5 scheduler. model_index.json declares no "divbind"
resolutions, so the pipeline applies SD's rule (object maps at height/32).

`build_models(seed)` is imported by bench/torch_peer.py: the PyTorch peer rebuilds exactly these weights (every
module is initialised from its own seeded generator), and checks its UNet output against the ONNX export.

Memory: the UNet exists once in torch (no gradients); its export streams tensors through a scratch folder
(make_full_size_unet.collate_external_data), peak RSS about 8.5 GB. Time: about 10 min on one core.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_bpe  # noqa: E402
import make_full_size_unet as mfu  # noqa: E402
import make_reference_models as mrm  # noqa: E402
import sd_modules as sm  # noqa: E402

TINY_SD = os.path.join(mrm.REPO, 'test', 'fixtures', 'models', 'tiny-sd')
SEED_OFFSETS = {'text_encoder': 1, 'unet': 2, 'vae_decoder': 3}
TRACE_LATENT = 64  # the export traces a 512² image; height and width stay dynamic


def text_encoder_config(vocab_size: int) -> sm.TextEncoderConfig:
    """CLIP ViT-L/14's text transformer (SD 1.5's text encoder) over `vocab_size` tokens."""
    return sm.TextEncoderConfig(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_layers=12,
                                num_heads=12)


def vae_config() -> sm.VaeDecoderConfig:
    return sm.VaeDecoderConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


def build_models(seed: int = 0):
    """(tokenizer, text_encoder, unet, vae_decoder): float32, eval mode, no gradients, weights fixed by `seed`."""
    tok = clip_bpe.ClipTokenizer.from_folder(os.path.join(TINY_SD, 'tokenizer'))
    with torch.no_grad():
        te = sm.init_text_encoder_(sm.CLIPTextModel(text_encoder_config(len(tok.vocab))),
                                   seed + SEED_OFFSETS['text_encoder']).eval()
        unet = sm.init_unet_(sm.UNet2DConditionModel(sm.sd15_unet_config()), seed + SEED_OFFSETS['unet']).eval()
        vae = sm.init_default_(sm.VaeDecoder(vae_config()), seed + SEED_OFFSETS['vae_decoder']).eval()
    for m in (te, unet, vae):
        for p in m.parameters():
            p.requires_grad_(False)
    n = sum(p.numel() for p in unet.parameters())
    if n != mfu.SD15_PARAMETERS:
        raise SystemExit(f'expected {mfu.SD15_PARAMETERS:,} UNet parameters (diffusers SD 1.5), got {n:,}')
    return tok, te, unet, vae


def export_unet(unet, out_dir: str) -> None:
    """unet/model.onnx + model.onnx_data (page-aligned, so onnxruntime maps the weights instead of copying them)."""
    os.makedirs(out_dir, exist_ok=True)
    sample = torch.randn(1, 4, TRACE_LATENT, TRACE_LATENT, generator=torch.Generator().manual_seed(5))
    ehs = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(6))
    ts = torch.tensor([981], dtype=torch.int64)
    scratch = tempfile.mkdtemp(prefix='unet-export-', dir=out_dir)
    try:
        axes = {'sample': {0: 'batch', 2: 'height', 3: 'width'}, 'encoder_hidden_states': {0: 'batch'},
                'out_sample': {0: 'batch', 2: 'height', 3: 'width'}}
        with torch.no_grad():
            torch.onnx.export(unet, (sample, ts, ehs), os.path.join(scratch, 'model.onnx'),
                              input_names=['sample', 'timestep', 'encoder_hidden_states'],
                              output_names=['out_sample'], dynamic_axes=axes, opset_version=17,
                              do_constant_folding=True)
        mfu.collate_external_data(os.path.join(scratch, 'model.onnx'), scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_folder_files(out: str) -> None:
    """Tokenizer and scheduler of the tiny fixture; model_index.json without D&B resolutions (SD's rule applies)."""
    shutil.copytree(os.path.join(TINY_SD, 'tokenizer'), os.path.join(out, 'tokenizer'))
    shutil.copytree(os.path.join(TINY_SD, 'scheduler'), os.path.join(out, 'scheduler'))
    with open(os.path.join(TINY_SD, 'model_index.json')) as f:
        index = json.load(f)
    index.pop('divbind', None)
    with open(os.path.join(out, 'model_index.json'), 'w') as f:
        json.dump(index, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('out_dir')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if os.path.exists(args.out_dir):
        raise SystemExit(f'{args.out_dir} exists; remove it or pick another folder')
    t0 = time.time()
    tok, te, unet, vae = build_models(args.seed)
    print(f'built in {time.time() - t0:.0f}s', flush=True)
    os.makedirs(args.out_dir)
    write_folder_files(args.out_dir)
    ids = torch.tensor([tok('a red cat and a blue dog')], dtype=torch.int32)
    mrm._export(mrm.TextEncoderExport(te), (ids,), os.path.join(args.out_dir, 'text_encoder', 'model.onnx'),
                ['input_ids'], ['last_hidden_state', 'pooler_output'],
                {'input_ids': {0: 'batch'}, 'last_hidden_state': {0: 'batch'}, 'pooler_output': {0: 'batch'}}, 17)
    z = torch.randn(1, 4, TRACE_LATENT, TRACE_LATENT, generator=torch.Generator().manual_seed(7))
    mrm._export(vae, (z,), os.path.join(args.out_dir, 'vae_decoder', 'model.onnx'), ['latent_sample'], ['sample'],
                {'latent_sample': {0: 'batch', 2: 'height', 3: 'width'},
                 'sample': {0: 'batch', 2: 'height', 3: 'width'}}, 17)
    print(f'text encoder and VAE decoder exported at {time.time() - t0:.0f}s', flush=True)
    del te, vae
    export_unet(unet, os.path.join(args.out_dir, 'unet'))
    size = os.path.getsize(os.path.join(args.out_dir, 'unet', 'model.onnx_data'))
    print(f'wrote {args.out_dir} (unet weights {size:,} B) in {time.time() - t0:.0f}s')


if __name__ == '__main__':
    main()
