#!/usr/bin/python3
"""Builds the tiny SD-architecture reference models (fixed seeds) and exports them to ONNX.

    /usr/bin/python3 tools/make_reference_models.py [--out test/fixtures/models]

Writes `tiny-sd/` (a standard OnnxStableDiffusionPipeline folder: tokenizer, text_encoder, unet, vae_decoder,
scheduler, model_index.json) and `unet-variants/<name>/` + `unet-variants/variants.json` (the same UNet weights
exported with other opsets, timestep dtypes/ranks, axes, external-data layouts and the SDPA attention pattern).
Deterministic: the same code gives the same weights; `build_models()` is imported by the golden generators.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_bpe  # noqa: E402
import sd_modules as sm  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(os.path.dirname(REPO), 'shared', 'benchmarks')
SEEDS = {'text_encoder': 1001, 'unet': 1002, 'vae_decoder': 1003}
LATENT = 32  # 32×32 latent → 256×256 images
VAE_SCALING = 0.18215

# Words added to the benchmark prompts so common shape/colour/scene words are single tokens.
EXTRA_WORDS = """
circle square triangle star hexagon heart diamond cross rectangle oval cube sphere cone
red orange yellow green blue purple pink brown gray grey black white cyan magenta gold silver
street snowy library kitchen beach forest park city room table field sky mountain river garden desert night
sunny rainy road lake sea ocean house window door car tree flower grass snow rain cloud sun moon
a an the of on in under above below next to with and near behind left right top bottom small big large tiny
photo painting drawing picture image of sitting standing running flying swimming
""".split()

# The SD 1.5 scheduler config (runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json).
SD15_SCHEDULER = {
    '_class_name': 'PNDMScheduler',
    '_diffusers_version': '0.6.0',
    'beta_end': 0.012,
    'beta_schedule': 'scaled_linear',
    'beta_start': 0.00085,
    'clip_sample': False,
    'num_train_timesteps': 1000,
    'set_alpha_to_one': False,
    'skip_prk_steps': True,
    'steps_offset': 1,
    'trained_betas': None,
}


def corpus_words() -> List[str]:
    words: List[str] = []
    with open(os.path.join(BENCH, 'ae-prompts.txt')) as f:
        for line in f:
            if line.strip():
                words += line.rstrip('\n').split('\t')[-1].split()
    with open(os.path.join(BENCH, 'golden-prompts.tsv')) as f:
        for line in list(f)[1:]:
            if line.strip():
                words += line.split('\t')[0].split()
    return words + EXTRA_WORDS


def learn_tokenizer() -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    merges = clip_bpe.learn_merges(corpus_words())
    return clip_bpe.build_vocab(merges), merges


def build_models(attention_impl: str = 'classic'):
    """Returns (tokenizer, text_encoder, unet, vae_decoder), float32, eval mode, fixed weights."""
    torch.manual_seed(0)
    vocab, merges = learn_tokenizer()
    tok = clip_bpe.ClipTokenizer(vocab, merges)
    te = sm.init_text_encoder_(sm.CLIPTextModel(sm.TextEncoderConfig(vocab_size=len(vocab))),
                               SEEDS['text_encoder']).eval()
    unet = sm.init_unet_(sm.UNet2DConditionModel(sm.tiny_unet_config()), SEEDS['unet']).eval()
    if attention_impl != 'classic':
        other = sm.UNet2DConditionModel(sm.tiny_unet_config(attention_impl=attention_impl)).eval()
        other.load_state_dict(unet.state_dict())
        unet = other
    vae = sm.init_default_(sm.VaeDecoder(sm.VaeDecoderConfig()), SEEDS['vae_decoder']).eval()
    return tok, te, unet, vae


class TextEncoderExport(torch.nn.Module):
    def __init__(self, te):
        super().__init__()
        self.te = te

    def forward(self, input_ids):
        return self.te(input_ids)


def _export(model, args, path, input_names, output_names, dynamic_axes, opset):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, args, path, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True)


def _move_to_external(path: str, location: str) -> None:
    """Rewrites model.onnx so its initializers live in `location` next to it (all in one file)."""
    import onnx
    model = onnx.load(path)
    data = os.path.join(os.path.dirname(path), location)
    if os.path.exists(data):
        os.remove(data)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=1024)


TIMESTEP_EXAMPLES = {
    'int64[1]': lambda: torch.tensor([500], dtype=torch.int64),
    'float32[1]': lambda: torch.tensor([500.0], dtype=torch.float32),
    'float32[]': lambda: torch.tensor(500.0, dtype=torch.float32),
}

CLASSIC = 'MatMul(q, kT) -> Mul(scale) -> Softmax on [B*heads, HW, d]'
SDPA = 'Mul(q, sqrt(scale)), Mul(kT, sqrt(scale)) -> MatMul -> Softmax on [B, heads, HW, d]'

UNET_VARIANTS = [
    # name, opset, timestep, axes, external data, attention
    dict(name='opset14-int64-dynbatch', opset=14, timestep='int64[1]', axes='batch', external=None,
         attention='classic'),
    dict(name='opset17-float32-dynbatch', opset=17, timestep='float32[1]', axes='batch', external=None,
         attention='classic'),
    dict(name='opset17-float32scalar-dynbatch', opset=17, timestep='float32[]', axes='batch', external=None,
         attention='classic'),
    dict(name='opset17-int64-static', opset=17, timestep='int64[1]', axes='static', external=None,
         attention='classic'),
    dict(name='opset17-int64-dynhw', opset=17, timestep='int64[1]', axes='batch_hw', external=None,
         attention='classic'),
    dict(name='opset17-int64-external-onnxdata', opset=17, timestep='int64[1]', axes='batch',
         external='model.onnx_data', attention='classic'),
    dict(name='opset14-int64-weightspb', opset=14, timestep='int64[1]', axes='batch', external='weights.pb',
         attention='classic'),
    dict(name='opset17-float32-sdpa', opset=17, timestep='float32[1]', axes='batch', external=None,
         attention='sdpa'),
]


def unet_dynamic_axes(kind: str):
    if kind == 'static':
        return None, {}
    if kind == 'batch':
        ax = {'sample': {0: 'batch'}, 'encoder_hidden_states': {0: 'batch'}, 'out_sample': {0: 'batch'}}
        return ax, {'sample': ['batch', 4, LATENT, LATENT], 'encoder_hidden_states': ['batch', 77, 32]}
    if kind == 'batch_hw':
        ax = {'sample': {0: 'batch', 2: 'height', 3: 'width'}, 'encoder_hidden_states': {0: 'batch'},
              'out_sample': {0: 'batch', 2: 'height', 3: 'width'}}
        return ax, {'sample': ['batch', 4, 'height', 'width'], 'encoder_hidden_states': ['batch', 77, 32]}
    raise ValueError(kind)


def export_unet(unet, path: str, opset: int, timestep: str, axes: str, external) -> dict:
    dyn, shapes = unet_dynamic_axes(axes)
    sample = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(5))
    ehs = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(6))
    _export(unet, (sample, TIMESTEP_EXAMPLES[timestep](), ehs), path,
            ['sample', 'timestep', 'encoder_hidden_states'], ['out_sample'], dyn, opset)
    if external:
        _move_to_external(path, external)
    dtype, rank = timestep.split('[')
    return {
        'timestep': {'dtype': dtype, 'shape': [1] if rank == '1]' else []},
        'inputShapes': shapes or {'sample': [1, 4, LATENT, LATENT], 'encoder_hidden_states': [1, 77, 32]},
    }


def export_all(out: str) -> None:
    tok, te, unet, vae = build_models()
    sd = os.path.join(out, 'tiny-sd')
    if os.path.isdir(sd):
        shutil.rmtree(sd)
    os.makedirs(sd)
    # tokenizer
    vocab, merges = learn_tokenizer()
    clip_bpe.write_tokenizer_files(os.path.join(sd, 'tokenizer'), merges)
    print(f'tokenizer: {len(vocab)} entries, {len(merges)} merges')
    # scheduler + model_index
    os.makedirs(os.path.join(sd, 'scheduler'))
    with open(os.path.join(sd, 'scheduler', 'scheduler_config.json'), 'w') as f:
        json.dump(SD15_SCHEDULER, f, indent=2)
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
        # D&B defaults scaled to a 32×32 latent: object maps at ceil(256/32) = 8, attributes from 32² and 16².
        'divbind': {'attentionResolution': 8, 'attributeResolutions': [32, 16]},
    }
    with open(os.path.join(sd, 'model_index.json'), 'w') as f:
        json.dump(index, f, indent=2)
    # text encoder: int32 ids, as the diffusers export script casts them
    ids = torch.tensor([tok('a red cat and a blue dog')], dtype=torch.int32)
    _export(TextEncoderExport(te), (ids,), os.path.join(sd, 'text_encoder', 'model.onnx'), ['input_ids'],
            ['last_hidden_state', 'pooler_output'],
            {'input_ids': {0: 'batch'}, 'last_hidden_state': {0: 'batch'}, 'pooler_output': {0: 'batch'}}, 17)
    # unet (= variant opset17-int64-dynbatch)
    export_unet(unet, os.path.join(sd, 'unet', 'model.onnx'), 17, 'int64[1]', 'batch', None)
    # vae decoder
    z = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(7))
    _export(vae, (z,), os.path.join(sd, 'vae_decoder', 'model.onnx'), ['latent_sample'], ['sample'],
            {'latent_sample': {0: 'batch', 2: 'height', 3: 'width'},
             'sample': {0: 'batch', 2: 'height', 3: 'width'}}, 17)
    # variants
    vroot = os.path.join(out, 'unet-variants')
    if os.path.isdir(vroot):
        shutil.rmtree(vroot)
    os.makedirs(vroot)
    sdpa_unet = build_models('sdpa')[2]
    # The main export is itself the opset-17 / int64[1] / dynamic-batch variant; it is listed, not copied.
    entries = [{
        'name': 'opset17-int64-dynbatch', 'dir': '../tiny-sd/unet', 'model': 'model.onnx', 'externalData': None,
        'opset': 17, 'layerNorm': 'LayerNormalization', 'attention': CLASSIC, 'axes': 'batch',
        'timestep': {'dtype': 'int64', 'shape': [1]},
        'inputShapes': unet_dynamic_axes('batch')[1],
    }]
    for v in UNET_VARIANTS:
        d = os.path.join(vroot, v['name'])
        model = sdpa_unet if v['attention'] == 'sdpa' else unet
        meta = export_unet(model, os.path.join(d, 'model.onnx'), v['opset'], v['timestep'], v['axes'],
                           v['external'])
        entries.append({
            'name': v['name'],
            'dir': v['name'],
            'model': 'model.onnx',
            'externalData': v['external'],
            'opset': v['opset'],
            'layerNorm': 'LayerNormalization' if v['opset'] >= 17 else 'decomposed',
            'attention': CLASSIC if v['attention'] == 'classic' else SDPA,
            'axes': v['axes'],
            **meta,
        })
        print('exported', v['name'])
    with open(os.path.join(vroot, 'variants.json'), 'w') as f:
        json.dump({'version': 1, 'generator': 'tools/make_reference_models.py',
                   'note': 'all variants share the tiny-sd/unet weights and compute the same function',
                   'crossAttentionLayers': 10, 'heads': 2, 'variants': entries}, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(REPO, 'test', 'fixtures', 'models'))
    args = ap.parse_args()
    torch.set_num_threads(2)
    export_all(args.out)


if __name__ == '__main__':
    main()
