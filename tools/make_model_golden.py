#!/usr/bin/python3
"""Golden data for the tiny reference models (see test/fixtures/README.md, section "Model golden data").

    /usr/bin/python3 tools/make_model_golden.py [--out test/fixtures/golden]

Writes tokenizer/ (token ids of test prompts), text_encoder/, unet/ (noise predictions at batch 1 and 2 and every
cross-attention probability tensor in graph order), vae/, and losses/ (each loss mode on those maps: loss,
indicator, per-token values, dL/dmaps, and dL/dsample through the UNet, the latter confirmed by a float64
directional finite-difference check before anything is written). Rebuilds the models with
make_reference_models.build_models() (fixed seeds), so it must run from the same code as the ONNX export;
it also checks that the exported ONNX files were made from these weights (initializer comparison).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import divbind_reference as dbr  # noqa: E402  (part A's reference losses)
import clip_bpe  # noqa: E402
import make_reference_models as mrm  # noqa: E402

REPO = mrm.REPO
LOSS_PROMPT = 'a red cat and a blue dog'
LOSS_TOKENS = [3, 7]  # cat, dog (SOT = 0)
LOSS_ATTRIBUTES = [2, 6]  # red, blue
TIMESTEP = 801
DIVBIND_DEFAULTS = dict(attention_resolution=8, attribute_resolutions=(32, 16))

TOKEN_PROMPTS = [
    # (name, prompt)
    ('ae-animal-animal', 'a cat and a dog'),
    ('ae-animal-with', 'a elephant with a crown'),
    ('ae-animal-object', 'a bear and a pink apple'),
    ('ae-object-object', 'a pink crown and a purple bow'),
    ('loss-prompt', LOSS_PROMPT),
    ('punctuation', 'A train driving down the tracks under a bridge.'),
    ('comma-no-space', 'street,snowy'),
    ('numbers', 'The flash with green suit, 8k, ultra hd 2023 and 42 dogs'),
    ('apostrophes', "it's a dog's life, isn't it? we'll see, they'd say, I'm sure"),
    ('multi-piece', 'an unbelievably gigantic skyscraper overlooking marshmallows'),
    ('whitespace-case', '  Multiple   SPACES\tand\nUPPER Case  '),
    ('html-entities', 'cats &amp; dogs &lt;3'),
    ('unicode', 'café naïve — ünïcödé ☃'),
    ('symbols', 'a (red) [cat] {and} #1 @home $5 50% a+b=c ~ok~ ...'),
    ('empty', ''),
    ('truncated', ' '.join(['a red cat and a blue dog'] * 14)),
]


def save(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(arr))


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def unet_with_maps(unet, sample, t, ehs):
    """Forward with the cross-attention store on. Returns (out, [(name, probs (B, h, HW, L))])."""
    store = []
    unet.set_attention_store(store)
    try:
        out = unet(sample, t, ehs)
    finally:
        unet.set_attention_store(None)
    return out, store


def place_of(name: str) -> str:
    return 'down' if name.startswith('down') else 'mid' if name.startswith('mid') else 'up'


def loss_layers(store, batch_index: int = 0):
    """part A's layer format: dict(probs=(heads, r*r, T), resolution, place)."""
    out = []
    for name, p in store:
        hw = p.shape[2]
        r = int(round(hw ** 0.5))
        out.append(dict(probs=p[batch_index], resolution=r, place=place_of(name)))
    return out


def check_onnx_matches_weights(unet, te, vae, models_dir: str) -> None:
    import onnx
    from onnx import numpy_helper
    for mod, rel in ((unet, 'tiny-sd/unet/model.onnx'), (te, 'tiny-sd/text_encoder/model.onnx'),
                     (vae, 'tiny-sd/vae_decoder/model.onnx')):
        m = onnx.load(os.path.join(models_dir, rel))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        state = {k: v.detach().numpy() for k, v in mod.state_dict().items()}
        prefix = 'te.' if rel.startswith('tiny-sd/text') else ''
        matched = 0
        for k, v in state.items():
            a = inits.get(prefix + k)
            if a is not None and a.shape == v.shape:
                if not np.array_equal(a, v):
                    raise SystemExit(f'{rel}: initializer {k} differs from the rebuilt weights; re-export first '
                                     f'(tools/make_reference_models.py)')
                matched += 1
        if matched < 10:
            raise SystemExit(f'{rel}: only {matched} initializers matched by name; re-export first')


def check_round_trip(tok, prompt: str, pieces) -> None:
    """The pieces must spell the cleaned prompt without its spaces (BPE only regroups bytes)."""
    decoder = {v: k for k, v in clip_bpe.BYTE_ENCODER.items()}
    text = bytes(decoder[ch] for ch in ''.join(pieces).replace('</w>', '')).decode('utf-8')
    if text != clip_bpe.clean_text(prompt).replace(' ', ''):
        raise SystemExit(f'tokenizer round trip failed for {prompt!r}: {text!r}')


def make_tokens(tok, out_dir):
    cases = []
    for name, prompt in TOKEN_PROMPTS:
        pieces = tok.tokens(prompt)
        check_round_trip(tok, prompt, pieces)
        ids = tok(prompt)
        cases.append(dict(name=name, prompt=prompt, pieces=pieces, ids=ids, truncated=len(pieces) > 75))
    for line in list(open(os.path.join(mrm.BENCH, 'golden-prompts.tsv')))[1:]:
        cols = line.rstrip('\n').split('\t')
        prompt = cols[0]
        pieces = tok.tokens(prompt)
        tokens = json.loads(cols[1])
        colors = json.loads(cols[2])
        cases.append(dict(name='golden:' + prompt, prompt=prompt, pieces=pieces, ids=tok(prompt),
                          truncated=False, tokenIndices=tokens, attributeIndices=colors,
                          tokenWords=[pieces[i - 1].replace('</w>', '') for i in tokens]))
    assert any(c['truncated'] for c in cases)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'tokens.json'), 'w', encoding='utf-8') as f:
        json.dump({'version': 1, 'generator': 'tools/make_model_golden.py', 'tokenizer': 'models/tiny-sd/tokenizer',
                   'maxLength': 77, 'sot': tok.sot, 'eot': tok.eot, 'padding': 'eot',
                   'note': 'pieces exclude SOT/EOT and are not truncated; ids are SOT + pieces[:75] + EOT, '
                           'padded with EOT to 77', 'cases': cases}, f, ensure_ascii=False, indent=1)
    print(f'tokens: {len(cases)} prompts')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(REPO, 'test', 'fixtures', 'golden'))
    ap.add_argument('--models', default=os.path.join(REPO, 'test', 'fixtures', 'models'))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok, te, unet, vae = mrm.build_models()
    check_onnx_matches_weights(unet, te, vae, args.models)
    out = args.out
    for sub in ('tokenizer', 'text_encoder', 'unet', 'vae', 'losses'):
        if os.path.isdir(os.path.join(out, sub)):
            shutil.rmtree(os.path.join(out, sub))

    # tokenizer
    make_tokens(tok, os.path.join(out, 'tokenizer'))

    # text encoder
    prompts = [LOSS_PROMPT, 'a purple dog and a green bench on the street,snowy driving scene', '']
    ids = torch.tensor([tok(p) for p in prompts], dtype=torch.int32)
    with torch.no_grad():
        hidden, pooled = te(ids)
    d = os.path.join(out, 'text_encoder')
    save(os.path.join(d, 'input_ids.npy'), ids.numpy())
    save(os.path.join(d, 'last_hidden_state.npy'), hidden.numpy())
    save(os.path.join(d, 'pooler_output.npy'), pooled.numpy())
    with open(os.path.join(d, 'manifest.json'), 'w') as f:
        json.dump({'version': 1, 'prompts': prompts, 'inputs': {'input_ids': 'input_ids.npy'},
                   'outputs': {'last_hidden_state': 'last_hidden_state.npy', 'pooler_output': 'pooler_output.npy'}},
                  f, indent=2)
    cond, uncond = hidden[0:1], hidden[2:3]

    # unet
    d = os.path.join(out, 'unet')
    g = torch.Generator().manual_seed(2024)
    sample = torch.randn(1, 4, mrm.LATENT, mrm.LATENT, generator=g)
    sample2 = torch.cat([sample, torch.randn(1, 4, mrm.LATENT, mrm.LATENT, generator=g)])
    ehs2 = torch.cat([uncond, cond])
    t = torch.tensor([TIMESTEP])
    with torch.no_grad():
        out1, store = unet_with_maps(unet, sample, t, cond)
        out2 = unet(sample2, t, ehs2)
    save(os.path.join(d, 'sample.npy'), sample.numpy())
    save(os.path.join(d, 'encoder_hidden_states.npy'), cond.numpy())
    save(os.path.join(d, 'out_sample.npy'), out1.numpy())
    save(os.path.join(d, 'sample_batch2.npy'), sample2.numpy())
    save(os.path.join(d, 'encoder_hidden_states_batch2.npy'), ehs2.numpy())
    save(os.path.join(d, 'out_sample_batch2.npy'), out2.numpy())
    maps = []
    for i, (name, p) in enumerate(store):
        f = f'attention/{i:02d}.npy'
        save(os.path.join(d, f), p[0].numpy())
        maps.append(dict(index=i, name=name, place=place_of(name), resolution=int(round(p.shape[2] ** 0.5)),
                         heads=int(p.shape[1]), shape=list(p[0].shape), file=f))
    with open(os.path.join(d, 'manifest.json'), 'w') as f:
        json.dump({
            'version': 1, 'generator': 'tools/make_model_golden.py', 'timestep': TIMESTEP,
            'prompt': LOSS_PROMPT,
            'batch1': {'sample': 'sample.npy', 'encoder_hidden_states': 'encoder_hidden_states.npy',
                       'out_sample': 'out_sample.npy'},
            'batch2': {'sample': 'sample_batch2.npy', 'encoder_hidden_states': 'encoder_hidden_states_batch2.npy',
                       'out_sample': 'out_sample_batch2.npy', 'note': 'ehs rows are [uncond (""), cond]'},
            'attention': {'note': 'batch-1 cross-attention probabilities (attn2 softmax output), graph order, '
                                  'each (heads, HW, 77) float32, HW row-major over the r x r grid',
                          'layers': maps},
        }, f, indent=2)
    print(f'unet: out |max| {out1.abs().max():.3f}, {len(maps)} attention layers')

    # vae
    d = os.path.join(out, 'vae')
    z = torch.randn(1, 4, mrm.LATENT, mrm.LATENT, generator=torch.Generator().manual_seed(77)) / mrm.VAE_SCALING
    with torch.no_grad():
        img = vae(z)
    save(os.path.join(d, 'latent_sample.npy'), z.numpy())
    save(os.path.join(d, 'sample.npy'), img.numpy())
    with open(os.path.join(d, 'manifest.json'), 'w') as f:
        json.dump({'version': 1, 'inputs': {'latent_sample': 'latent_sample.npy'},
                   'outputs': {'sample': 'sample.npy'},
                   'note': 'latent_sample = N(0,1) draws / 0.18215, as the pipeline decodes latents / 0.18215'},
                  f, indent=2)
    print(f'vae: sample range [{img.min():.3f}, {img.max():.3f}]')

    make_losses(unet, sample, t, cond, os.path.join(out, 'losses'))


LOSS_CASES = [
    # name, options (camelCase, as lib/loss/types.ts), store grads for every layer that reaches L
    ('max', dict(mode='max')),
    ('max-attend-excite', dict(mode='max', maxVariant='attend-excite')),
    ('tv', dict(mode='tv')),
    ('tv-neighbor', dict(mode='tv', tvVertical='neighbor')),
    ('tv_bind', dict(mode='tv_bind', attributeIndices=LOSS_ATTRIBUTES)),
    ('tv_max', dict(mode='tv_max')),
]


def make_losses(unet, sample, t, cond, d):
    unet64 = mrm.build_models()[2].double()
    manifest = []
    for name, opts in LOSS_CASES:
        full = dict(tokenIndices=LOSS_TOKENS, stepIndex=0, attentionResolution=8, attributeResolutions=[32, 16],
                    **opts)
        kw = dbr.options_from_camel(full)

        # dL/dmaps and dL/dsample with the float32 UNet (what an ORT float32 graph computes) ...
        x32 = sample.clone().requires_grad_(True)
        _, store = unet_with_maps(unet, x32, t, cond)
        layers = [dict(probs=l['probs'].double(), resolution=l['resolution'], place=l['place'])
                  for l in loss_layers(store)]
        res = dbr.attention_loss(layers, **kw)
        loss32 = res['loss']
        probs = [l['probs'] for l in layers]
        gmaps = torch.autograd.grad(loss32, probs, retain_graph=True, allow_unused=True)
        gx32 = torch.autograd.grad(loss32, x32)[0]

        # ... and with the float64 UNet (same float32 weights and inputs, widened): the golden dL/dsample.
        def loss64(x):
            _, st = unet_with_maps(unet64, x, t, cond.double())
            return dbr.attention_loss(loss_layers(st), **kw)

        x64 = sample.double().clone().requires_grad_(True)
        r64 = loss64(x64)
        gx64 = torch.autograd.grad(r64['loss'], x64)[0]

        # Directional central differences in float64 confirm the autograd gradient before anything is written.
        fd = []
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for k in range(3):
                v = torch.randn(sample.shape, generator=gen, dtype=torch.float64)
                v /= v.norm()
                h = 1e-4
                lp = float(loss64(sample.double() + h * v)['loss'])
                lm = float(loss64(sample.double() - h * v)['loss'])
                num = (lp - lm) / (2 * h)
                ana = float((gx64 * v).sum())
                err = abs(num - ana) / max(abs(ana), 1e-12)
                fd.append(dict(direction=k, numeric=num, analytic=ana, relError=err))
                print(f'  {name}: FD dir {k}: numeric {num:.10e} analytic {ana:.10e} rel {err:.2e}')
        worst = max(f['relError'] for f in fd)
        if worst > 1e-5:
            raise SystemExit(f'{name}: finite-difference check failed (rel {worst:.2e}); nothing written')
        g32_vs_64 = rel_l2(gx32.numpy(), gx64.numpy())

        cd = os.path.join(d, name)
        grads = []
        for i, (l, gm) in enumerate(zip(layers, gmaps)):
            if gm is None or not torch.any(gm != 0):
                continue
            f = f'{name}/grad_map_{i:02d}.npy'
            save(os.path.join(d, f), gm.numpy().astype(np.float32))
            grads.append(dict(layer=i, file=f))
        save(os.path.join(cd, 'grad_sample.npy'), gx64.numpy())
        save(os.path.join(cd, 'grad_sample_float32_unet.npy'), gx32.numpy())
        tokens = [{'tokenIndex': tk['token_index'], 'attributeIndex': tk['attribute_index'],
                   'maxAttention': tk['max_attention'], 'tv': tk['tv'], 'jsd': tk['jsd'],
                   'coefficient': tk['coefficient'], 'value': tk['value']} for tk in res['tokens']]
        manifest.append({
            'name': name, 'options': full,
            'expected': {'loss': float(loss32), 'indicator': res['indicator'], 'tokens': tokens,
                         'lossFloat64Unet': float(r64['loss']), 'indicatorFloat64Unet': r64['indicator']},
            'gradMaps': grads,
            'gradSample': f'{name}/grad_sample.npy',
            'gradSampleFloat32Unet': f'{name}/grad_sample_float32_unet.npy',
            'gradSampleFloat32VsFloat64RelL2': g32_vs_64,
            'finiteDifference': fd,
        })
        print(f'losses/{name}: L {float(loss32):.6f} theta {res["indicator"]:.6f} '
              f'|dL/dx| {gx64.norm():.3e} f32-vs-f64 {g32_vs_64:.2e}')
    with open(os.path.join(d, 'manifest.json'), 'w') as f:
        json.dump({
            'version': 1, 'generator': 'tools/make_model_golden.py',
            'inputs': {'sample': '../unet/sample.npy', 'timestep': TIMESTEP,
                       'encoder_hidden_states': '../unet/encoder_hidden_states.npy',
                       'attention': '../unet/manifest.json (attention.layers, graph order)'},
            'note': 'L from tools/divbind_reference.py on the batch-1 maps (computed in float64 from the float32 '
                    'maps). gradMaps: float32 dL/dprobs for the layers that reach L (all others are 0). '
                    'gradSample: float64 dL/dsample through a float64 copy of the UNet (same weights), '
                    'confirmed by directional central differences (h = 1e-4, finiteDifference); '
                    'gradSampleFloat32Unet: the same through the float32 UNet.',
            'cases': manifest,
        }, f, indent=2)


if __name__ == '__main__':
    main()
