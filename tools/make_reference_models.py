#!/usr/bin/python3
"""Builds the tiny SD-architecture reference models (fixed seeds) and exports them to ONNX.

    /usr/bin/python3 tools/make_reference_models.py [--family sd1|sd2|sdxl] [--out test/fixtures/models]

sd1 (default) writes `tiny-sd/` (a standard OnnxStableDiffusionPipeline folder: tokenizer, text_encoder, unet,
vae_decoder, scheduler, model_index.json) and `unet-variants/<name>/` + `unet-variants/variants.json` (the same
UNet weights exported with other opsets, timestep dtypes/ranks, axes, external-data layouts and the SDPA
attention pattern). sd2 writes `tiny-sd2/` (the same layout, SD 2.x structure), sdxl `tiny-sdxl/` (Optimum's
SDXL layout). Deterministic: the same code gives the same weights; the models come from model_families.py,
which the golden generators import too.
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

# The SD 1.x definitions live in model_families (one place for every family); re-exported for the other tools.
from model_families import (BENCH, EXTRA_WORDS, LATENT, REPO, SD15_SCHEDULER, SEEDS, VAE_SCALING,  # noqa: E402,F401
                            build_models, corpus_words, learn_tokenizer)
import model_families as mf  # noqa: E402


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


# ---------------------------------------------------------------------------------------------------------
# SD 2.x and SDXL tiny models (model_families.FAMILIES['sd2'/'sdxl'])


class TextEncoderOutputs(torch.nn.Module):
    """Exports a text encoder with Optimum's outputs: `names` from CLIPTextModel(WithProjection).encode, then
    (with hidden_states) hidden_states.0 … hidden_states.N (embeddings, then each layer, before the final LN)."""

    def __init__(self, te, names, hidden_states: bool):
        super().__init__()
        self.te, self.names, self.hidden_states = te, list(names), hidden_states

    def forward(self, input_ids):
        out = self.te.encode(input_ids)
        return tuple(out[n] for n in self.names) + (tuple(out['hidden_states']) if self.hidden_states else ())

    def output_names(self):
        extra = [f'hidden_states.{i}' for i in range(self.te.cfg.num_layers + 1)] if self.hidden_states else []
        return self.names + extra


def _write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')


def _fresh(folder: str) -> None:
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)


def _export_text_encoder(te, ids, path: str, names, hidden_states: bool, batch: str) -> List[str]:
    wrapper = TextEncoderOutputs(te, names, hidden_states)
    outputs = wrapper.output_names()
    axes = {'input_ids': {0: batch}, **{n: {0: batch} for n in outputs}}
    _export(wrapper, (ids,), path, ['input_ids'], outputs, axes, 17)
    return outputs


def _export_vae(vae, latent: int, path: str, batch: str) -> None:
    z = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(7))
    _export(vae, (z,), path, ['latent_sample'], ['sample'],
            {'latent_sample': {0: batch, 2: 'height', 3: 'width'}, 'sample': {0: batch, 2: 'height', 3: 'width'}}, 17)


def _unet_example(fam, models, batch: int = 1):
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(batch, 4, fam.latent, fam.latent, generator=g)
    cond = mf.cond_cat(*[models.encode(['a red cat and a blue dog'])] * batch)
    return sample, cond


def export_sd2(out: str) -> None:
    """tiny-sd2/: diffusers' OnnxStableDiffusionPipeline layout (as convert_stable_diffusion_checkpoint_to_onnx.py
    writes it for an SD 2.x checkpoint): no per-component config.json, so a reader must take the v-prediction
    from the scheduler config and the "!" padding from the tokenizer files."""
    fam = mf.FAMILIES['sd2']
    models = fam.build()
    root = os.path.join(out, fam.folder)
    _fresh(root)
    vocab, merges = learn_tokenizer()
    clip_bpe.write_tokenizer_files(os.path.join(root, 'tokenizer'), merges, pad_token=clip_bpe.OPENCLIP_PAD)
    _write_json(os.path.join(root, 'scheduler', 'scheduler_config.json'), fam.scheduler_config)
    _write_json(os.path.join(root, 'model_index.json'), {
        '_class_name': 'OnnxStableDiffusionPipeline',
        '_diffusers_version': '0.8.0',
        'feature_extractor': [None, None],
        'requires_safety_checker': False,
        'safety_checker': [None, None],
        'scheduler': ['diffusers', fam.scheduler_config['_class_name']],
        'text_encoder': ['diffusers', 'OnnxRuntimeModel'],
        'tokenizer': ['transformers', 'CLIPTokenizer'],
        'unet': ['diffusers', 'OnnxRuntimeModel'],
        'vae_decoder': ['diffusers', 'OnnxRuntimeModel'],
        'vae_encoder': [None, None],
        'divbind': fam.divbind,
    })
    ids = models.input_ids(['a red cat and a blue dog'])[0]
    _export_text_encoder(models.text_encoders[0], ids, os.path.join(root, 'text_encoder', 'model.onnx'),
                         ['last_hidden_state', 'pooler_output'], False, 'batch')
    sample, cond = _unet_example(fam, models)
    _export(models.unet, (sample, torch.tensor([500], dtype=torch.int64), cond['encoder_hidden_states']),
            os.path.join(root, 'unet', 'model.onnx'), ['sample', 'timestep', 'encoder_hidden_states'], ['out_sample'],
            {'sample': {0: 'batch'}, 'encoder_hidden_states': {0: 'batch'}, 'out_sample': {0: 'batch'}}, 17)
    _export_vae(models.vae, fam.latent, os.path.join(root, 'vae_decoder', 'model.onnx'), 'batch')
    print(f'{fam.folder}: exported')


def _unet_config_json(cfg: sm.UNetConfig) -> dict:
    """unet/config.json with diffusers' keys (attention_head_dim = the per-block head counts, as diffusers
    reads it); no_self_attention_levels is this project's own key (see model_families)."""
    down, up = cfg.block_types()
    return {
        '_class_name': 'UNet2DConditionModel', '_diffusers_version': '0.19.0.dev0', 'act_fn': 'silu',
        'addition_embed_type': cfg.addition_embed_type, 'addition_time_embed_dim': cfg.addition_time_embed_dim,
        'attention_head_dim': list(cfg.per_block(cfg.num_heads)), 'block_out_channels': list(cfg.block_out_channels),
        'center_input_sample': False, 'cross_attention_dim': cfg.cross_attention_dim,
        'down_block_types': list(down), 'flip_sin_to_cos': True, 'freq_shift': 0,
        'in_channels': cfg.in_channels, 'layers_per_block': cfg.layers_per_block,
        'mid_block_type': 'UNetMidBlock2DCrossAttn', 'norm_eps': cfg.norm_eps, 'norm_num_groups': cfg.norm_num_groups,
        'out_channels': cfg.out_channels,
        'projection_class_embeddings_input_dim': cfg.projection_class_embeddings_input_dim,
        'sample_size': cfg.sample_size,
        'transformer_layers_per_block': list(cfg.per_block(cfg.transformer_layers_per_block)),
        'up_block_types': list(up), 'upcast_attention': None, 'use_linear_projection': cfg.use_linear_projection,
        'divbind_no_self_attention_levels': list(cfg.no_self_attention_levels),
    }


def _text_config_json(te, tok: clip_bpe.ClipTokenizer) -> dict:
    c = te.cfg
    out = {
        'architectures': ['CLIPTextModelWithProjection' if c.projection_dim else 'CLIPTextModel'],
        'model_type': 'clip_text_model', 'hidden_act': c.hidden_act, 'hidden_size': c.hidden_size,
        'intermediate_size': c.intermediate_size, 'num_attention_heads': c.num_heads,
        'num_hidden_layers': c.num_layers, 'max_position_embeddings': c.max_position_embeddings,
        'layer_norm_eps': c.layer_norm_eps, 'vocab_size': c.vocab_size,
        'bos_token_id': tok.sot, 'eos_token_id': tok.eot, 'pad_token_id': tok.pad,
    }
    if c.projection_dim:
        out['projection_dim'] = c.projection_dim
    return out


def export_sdxl(out: str) -> None:
    """tiny-sdxl/: Optimum's SDXL layout (`optimum-cli export onnx`): model_index.json as diffusers'
    StableDiffusionXLPipeline saves it, text_encoder/ + text_encoder_2/ with every hidden state as an output,
    tokenizer/ + tokenizer_2/, unet/ (sample, timestep, encoder_hidden_states, text_embeds, time_ids), vae_decoder/,
    scheduler/, and each component's config.json."""
    fam = mf.FAMILIES['sdxl']
    models = fam.build()
    root = os.path.join(out, fam.folder)
    _fresh(root)
    vocab, merges = learn_tokenizer()
    for sub, tok in zip(('tokenizer', 'tokenizer_2'), models.tokenizers):
        clip_bpe.write_tokenizer_files(os.path.join(root, sub), merges, pad_token=tok.pad_token)
    _write_json(os.path.join(root, 'scheduler', 'scheduler_config.json'), fam.scheduler_config)
    _write_json(os.path.join(root, 'model_index.json'), {
        '_class_name': 'StableDiffusionXLPipeline',
        '_diffusers_version': '0.19.0.dev0',
        'add_watermarker': None,
        'force_zeros_for_empty_prompt': fam.force_zeros_for_empty_prompt,
        'scheduler': ['diffusers', fam.scheduler_config['_class_name']],
        'text_encoder': ['transformers', 'CLIPTextModel'],
        'text_encoder_2': ['transformers', 'CLIPTextModelWithProjection'],
        'tokenizer': ['transformers', 'CLIPTokenizer'],
        'tokenizer_2': ['transformers', 'CLIPTokenizer'],
        'unet': ['diffusers', 'UNet2DConditionModel'],
        'vae': ['diffusers', 'AutoencoderKL'],
        'divbind': fam.divbind,
    })
    ids = models.input_ids(['a red cat and a blue dog'])
    for sub, te, tok, i, names in (
            ('text_encoder', models.text_encoders[0], models.tokenizers[0], ids[0],
             ['last_hidden_state', 'pooler_output']),
            ('text_encoder_2', models.text_encoders[1], models.tokenizers[1], ids[1],
             ['text_embeds', 'last_hidden_state'])):
        _export_text_encoder(te, i, os.path.join(root, sub, 'model.onnx'), names, True, 'batch_size')
        _write_json(os.path.join(root, sub, 'config.json'), _text_config_json(te, tok))
    sample, cond = _unet_example(fam, models)
    batch = {0: 'batch_size'}
    # forward(sample, timestep, encoder_hidden_states, text_embeds, time_ids): Optimum's input order, positional.
    _export(models.unet,
            (sample, torch.tensor([500], dtype=torch.int64), cond['encoder_hidden_states'], cond['text_embeds'],
             cond['time_ids']),
            os.path.join(root, 'unet', 'model.onnx'),
            ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids'], ['out_sample'],
            {'sample': {0: 'batch_size', 2: 'height', 3: 'width'}, 'timestep': {0: 'steps'},
             'encoder_hidden_states': batch, 'text_embeds': batch, 'time_ids': batch,
             'out_sample': {0: 'batch_size', 2: 'height', 3: 'width'}}, 17)
    _write_json(os.path.join(root, 'unet', 'config.json'), _unet_config_json(models.unet.cfg))
    _export_vae(models.vae, fam.latent, os.path.join(root, 'vae_decoder', 'model.onnx'), 'batch_size')
    vcfg = models.vae.cfg
    _write_json(os.path.join(root, 'vae_decoder', 'config.json'), {
        '_class_name': 'AutoencoderKL', '_diffusers_version': '0.19.0.dev0', 'act_fn': 'silu',
        'block_out_channels': list(vcfg.block_out_channels), 'force_upcast': True, 'in_channels': 3,
        'latent_channels': vcfg.latent_channels, 'layers_per_block': vcfg.layers_per_block,
        'norm_num_groups': vcfg.norm_num_groups, 'out_channels': vcfg.out_channels, 'sample_size': fam.image,
        'scaling_factor': fam.vae_scaling, 'divbind_mid_attention': vcfg.mid_attention,
    })
    print(f'{fam.folder}: exported')


EXPORTS = {'sd1': export_all, 'sd2': export_sd2, 'sdxl': export_sdxl}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(REPO, 'test', 'fixtures', 'models'))
    ap.add_argument('--family', default='sd1', choices=sorted(EXPORTS),
                    help='sd1: tiny-sd + unet-variants; sd2: tiny-sd2; sdxl: tiny-sdxl')
    args = ap.parse_args()
    torch.set_num_threads(2)
    EXPORTS[args.family](args.out)


if __name__ == '__main__':
    main()
