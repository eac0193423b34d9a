#!/usr/bin/python3
"""Golden data for the tiny reference models (see test/fixtures/README.md, section "Model golden data").

    /usr/bin/python3 tools/make_model_golden.py [--family sd1|sd2|sdxl] [--out test/fixtures/<golden folder>]

Writes tokenizer/ (token ids of test prompts), text_encoder/ (+ text_encoder_2/ for SDXL), unet/ (noise
predictions at batch 1 and 2 and every cross-attention probability tensor in graph order), vae/, and losses/ (each
loss mode on those maps: loss, indicator, per-token values, dL/dmaps (SD 1.x), and dL/dsample through the UNet,
the latter confirmed by a float64 directional finite-difference check before anything is written). The family
(model_families.py) decides the models, the conditioning (SDXL: two encoders, text_embeds, time_ids) and the
D&B defaults; sd1 writes test/fixtures/golden/, sd2 golden-sd2/, sdxl golden-sdxl/. Rebuilds the models from
their fixed seeds, so it must run from the same code as the ONNX export; it also checks that the exported ONNX
files were made from these weights (initializer comparison).
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
import model_families as mf  # noqa: E402

REPO = mf.REPO
LOSS_PROMPT = 'a red cat and a blue dog'
LOSS_TOKENS = [3, 7]  # cat, dog (SOT = 0)
LOSS_ATTRIBUTES = [2, 6]  # red, blue
LOSS_EOT = 8  # EOT position of LOSS_PROMPT
TIMESTEP = 801
TEXT_PROMPTS = [LOSS_PROMPT, 'a purple dog and a green bench on the street,snowy driving scene', '']

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

# (name, options (camelCase, as lib/loss/types.ts)) per family. SD 1.x: the 1:-1 token slice (D&B's); SD 2.x and
# SDXL: their declared default 'until-eot' (model_families) plus one all-but-last case, since "!" padding makes
# the two slices differ.
SD1_LOSS_CASES = [
    ('max', dict(mode='max')),
    ('max-attend-excite', dict(mode='max', maxVariant='attend-excite')),
    ('tv', dict(mode='tv')),
    ('tv-neighbor', dict(mode='tv', tvVertical='neighbor')),
    ('tv_bind', dict(mode='tv_bind', attributeIndices=LOSS_ATTRIBUTES)),
    ('tv_max', dict(mode='tv_max')),
]
NEW_LOSS_CASES = [
    ('max', dict(mode='max')),
    ('tv', dict(mode='tv')),
    ('tv_bind', dict(mode='tv_bind', attributeIndices=LOSS_ATTRIBUTES)),
    ('tv-all-but-last', dict(mode='tv', tokenSlice='all-but-last')),
]


def save(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(arr))


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def unet_with_maps(unet, sample, t, cond):
    """Forward with the cross-attention store on. Returns (out, [(name, probs (B, h, HW, L))])."""
    store = []
    unet.set_attention_store(store)
    try:
        out = unet(sample, t, **cond)
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


def onnx_components(models: mf.Models):
    """(module, path under models/, initializer-name prefix) of every exported graph."""
    folder = models.family.folder
    if models.family.name == 'sd1':
        tes = [(models.text_encoders[0], 'text_encoder', 'te.')]
    else:
        subs = ('text_encoder', 'text_encoder_2')
        tes = [(te, sub, 'te.') for te, sub in zip(models.text_encoders, subs)]
    return [(models.unet, f'{folder}/unet/model.onnx', ''),
            *[(te, f'{folder}/{sub}/model.onnx', prefix) for te, sub, prefix in tes],
            (models.vae, f'{folder}/vae_decoder/model.onnx', '')]


def check_onnx_matches_weights(models: mf.Models, models_dir: str) -> None:
    import onnx
    from onnx import numpy_helper
    for mod, rel, prefix in onnx_components(models):
        m = onnx.load(os.path.join(models_dir, rel))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        state = {k: v.detach().numpy() for k, v in mod.state_dict().items()}
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


def token_case(models: mf.Models, name: str, prompt: str, **extra) -> dict:
    tok = models.tokenizer
    pieces = tok.tokens(prompt)
    case = dict(name=name, prompt=prompt, pieces=pieces, ids=tok(prompt))
    if models.family.name != 'sd1':
        case['eotIndex'] = tok.eot_index(prompt)
        if len(models.tokenizers) > 1:
            case['ids2'] = models.tokenizers[1](prompt)
    case['truncated'] = len(pieces) > 75
    case.update(extra)
    return case


def make_tokens(models: mf.Models, out_dir):
    tok = models.tokenizer
    cases = []
    for name, prompt in TOKEN_PROMPTS:
        check_round_trip(tok, prompt, tok.tokens(prompt))
        cases.append(token_case(models, name, prompt))
    for line in list(open(os.path.join(mf.BENCH, 'golden-prompts.tsv')))[1:]:
        cols = line.rstrip('\n').split('\t')
        prompt = cols[0]
        pieces = tok.tokens(prompt)
        tokens = json.loads(cols[1])
        colors = json.loads(cols[2])
        cases.append(token_case(models, 'golden:' + prompt, prompt, truncated=False, tokenIndices=tokens,
                                attributeIndices=colors,
                                tokenWords=[pieces[i - 1].replace('</w>', '') for i in tokens]))
    assert any(c['truncated'] for c in cases)
    folder = models.family.folder
    if models.family.name == 'sd1':
        header = {'tokenizer': f'models/{folder}/tokenizer', 'maxLength': 77, 'sot': tok.sot, 'eot': tok.eot,
                  'padding': 'eot', 'note': 'pieces exclude SOT/EOT and are not truncated; ids are SOT + '
                                            'pieces[:75] + EOT, padded with EOT to 77'}
    else:
        header = {'tokenizer': f'models/{folder}/tokenizer', 'maxLength': 77, 'sot': tok.sot, 'eot': tok.eot,
                  'padding': tok.pad_token, 'padId': tok.pad,
                  'note': 'pieces exclude SOT/EOT and are not truncated; ids are SOT + pieces[:75] + EOT, padded '
                          f'with {tok.pad_token!r} (id {tok.pad}) to 77; eotIndex = the position of EOT in ids'}
        if len(models.tokenizers) > 1:
            header.update(tokenizer2=f'models/{folder}/tokenizer_2', padding2=models.tokenizers[1].pad_token,
                          padId2=models.tokenizers[1].pad)
            header['note'] += f'; ids2 = tokenizer_2 (padded with {models.tokenizers[1].pad_token!r})'
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'tokens.json'), 'w', encoding='utf-8') as f:
        json.dump({'version': 1, 'generator': 'tools/make_model_golden.py', **header, 'cases': cases}, f,
                  ensure_ascii=False, indent=1)
    print(f'tokens: {len(cases)} prompts')


def make_text_encoders(models: mf.Models, d: str) -> mf.Cond:
    """Every text-encoder output for TEXT_PROMPTS (as the ONNX graphs output them); returns the UNet
    conditioning of the three prompts."""
    ids = models.input_ids(TEXT_PROMPTS)
    subs = ['text_encoder'] if len(ids) == 1 else ['text_encoder', 'text_encoder_2']
    for sub, te, i in zip(subs, models.text_encoders, ids):
        with torch.no_grad():
            out = te.encode(i)
        files = {'last_hidden_state': out['last_hidden_state'], 'pooler_output': out['pooler_output']}
        if 'text_embeds' in out:
            files = {'text_embeds': out['text_embeds'], 'last_hidden_state': out['last_hidden_state']}
        if models.family.name == 'sdxl':
            files.update({f'hidden_states.{k}': h for k, h in enumerate(out['hidden_states'])})
        save(os.path.join(d, sub, 'input_ids.npy'), i.numpy())
        for name, value in files.items():
            save(os.path.join(d, sub, f'{name}.npy'), value.numpy())
        manifest = {'version': 1, 'prompts': TEXT_PROMPTS, 'inputs': {'input_ids': 'input_ids.npy'},
                    'outputs': {name: f'{name}.npy' for name in files}}
        if models.family.name == 'sd2':
            manifest['penultimate'] = check_sd2_penultimate(te, i)
        write_json(os.path.join(d, sub, 'manifest.json'), manifest)
    with torch.no_grad():
        cond = models.encode(TEXT_PROMPTS)
    if models.family.name == 'sdxl':
        # What the UNet gets: the concatenated penultimate states, text_embeds and time_ids of each prompt,
        # and the unconditional inputs of an empty negative prompt (zeros: force_zeros_for_empty_prompt).
        c = os.path.join(d, 'conditioning')
        for k, v in cond.items():
            save(os.path.join(c, f'{k}.npy'), v.numpy())
        neg = models.negative('', mf.cond_rows(cond, slice(2, 3)))
        write_json(os.path.join(c, 'manifest.json'), {
            'version': 1, 'prompts': TEXT_PROMPTS,
            'files': {k: f'{k}.npy' for k in cond},
            'encoderHiddenStates': 'concat(text_encoder hidden_states.1, text_encoder_2 hidden_states.2) on the '
                                   'last axis: the penultimate layer of each encoder, without its final LN',
            'textEmbeds': 'text_encoder_2 text_embeds (projected pooler output at the EOT position)',
            'timeIds': 'original size (h, w), crop top-left (y, x), target size (h, w) = '
                       f'{cond["time_ids"][0].tolist()}',
            'negativeEmptyPrompt': 'force_zeros_for_empty_prompt: encoder_hidden_states and text_embeds are zeros '
                                   '(time_ids unchanged)',
            'negativeIsZero': bool(all(float(v.abs().max()) == 0 for k, v in neg.items() if k != 'time_ids')),
        })
    return cond


def check_sd2_penultimate(te, ids) -> dict:
    """The exported encoder (last layer dropped) = final LN of the full encoder's penultimate hidden state."""
    full = mf.sd2_full_text_encoder()
    with torch.no_grad():
        mine = te.encode(ids)['last_hidden_state']
        hs = full.encode(ids)['hidden_states']
        ref = full.final_layer_norm(hs[-2])
    if not torch.equal(mine, ref):
        raise SystemExit('SD 2.x text encoder: last_hidden_state != final_layer_norm(penultimate hidden state)')
    return {'fullLayers': full.cfg.num_layers, 'exportedLayers': te.cfg.num_layers,
            'check': 'last_hidden_state == final_layer_norm(hidden_states[-2] of the full encoder), exactly'}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--family', default='sd1', choices=sorted(mf.FAMILIES))
    ap.add_argument('--out', default=None, help='default: test/fixtures/<the family\'s golden folder>')
    ap.add_argument('--models', default=os.path.join(REPO, 'test', 'fixtures', 'models'))
    args = ap.parse_args()
    torch.set_num_threads(2)
    fam = mf.FAMILIES[args.family]
    models = fam.build()
    check_onnx_matches_weights(models, args.models)
    out = args.out or os.path.join(REPO, 'test', 'fixtures', fam.golden)
    for sub in ('tokenizer', 'text_encoder', 'text_encoder_2', 'conditioning', 'unet', 'vae', 'losses'):
        if os.path.isdir(os.path.join(out, sub)):
            shutil.rmtree(os.path.join(out, sub))

    make_tokens(models, os.path.join(out, 'tokenizer'))
    conds = make_text_encoders(models, out)
    cond = mf.cond_rows(conds, slice(0, 1))
    uncond = models.negative('', mf.cond_rows(conds, slice(2, 3)))
    sample, t = make_unet(models, cond, uncond, os.path.join(out, 'unet'))
    make_vae(models, os.path.join(out, 'vae'))
    make_losses(models, sample, t, cond, os.path.join(out, 'losses'))


def make_unet(models: mf.Models, cond: mf.Cond, uncond: mf.Cond, d: str):
    fam, unet = models.family, models.unet
    g = torch.Generator().manual_seed(2024)
    sample = torch.randn(1, 4, fam.latent, fam.latent, generator=g)
    # SD 1.x: a second random row; the 96²/128² families: [z, z] as classifier-free guidance feeds it (no file).
    second = torch.randn(1, 4, fam.latent, fam.latent, generator=g) if fam.name == 'sd1' else sample
    sample2 = torch.cat([sample, second])
    cond2 = mf.cond_cat(uncond, cond)
    t = torch.tensor([TIMESTEP])
    with torch.no_grad():
        out1, store = unet_with_maps(unet, sample, t, cond)
        out2 = unet(sample2, t, **cond2)
    save(os.path.join(d, 'sample.npy'), sample.numpy())
    save(os.path.join(d, 'out_sample.npy'), out1.numpy())
    save(os.path.join(d, 'out_sample_batch2.npy'), out2.numpy())
    batch1 = {'sample': 'sample.npy'}
    if fam.name == 'sd1':
        save(os.path.join(d, 'sample_batch2.npy'), sample2.numpy())
        batch2 = {'sample': 'sample_batch2.npy'}
    else:
        batch2 = {'sample': 'sample.npy', 'sampleRepeat': 2}
    for k in cond:
        save(os.path.join(d, f'{k}.npy'), cond[k].numpy())
        save(os.path.join(d, f'{k}_batch2.npy'), cond2[k].numpy())
        batch1[k], batch2[k] = f'{k}.npy', f'{k}_batch2.npy'
    batch1['out_sample'], batch2['out_sample'] = 'out_sample.npy', 'out_sample_batch2.npy'
    batch2['note'] = 'ehs rows are [uncond (""), cond]'
    if fam.name != 'sd1':
        batch2['note'] += '; the sample is sample.npy twice ([z, z], as classifier-free guidance feeds it)'
    if fam.force_zeros_for_empty_prompt:
        batch2['note'] += '; the uncond row of encoder_hidden_states and text_embeds is zeros ' \
                          '(force_zeros_for_empty_prompt)'
    cols = fam.map_columns
    maps = []
    for i, (name, p) in enumerate(store):
        f = f'attention/{i:02d}.npy'
        kept = p[0] if cols is None else p[0, :, :, :cols]
        save(os.path.join(d, f), kept.numpy())
        maps.append(dict(index=i, name=name, place=place_of(name), resolution=int(round(p.shape[2] ** 0.5)),
                         heads=int(p.shape[1]), shape=list(kept.shape), file=f))
    if cols is None:
        note = ('batch-1 cross-attention probabilities (attn2 softmax output), graph order, each (heads, HW, 77) '
                'float32, HW row-major over the r x r grid')
    else:
        note = ('batch-1 cross-attention probabilities (attn2 softmax output), graph order, each (heads, HW, '
                f'{cols}) float32 = token columns 0..{cols - 1} of the (heads, HW, 77) maps (SOT, the prompt, EOT '
                'and the first padding position; the files would be 7.7x larger with all 77), HW row-major over '
                'the r x r grid')
    manifest = {'version': 1, 'generator': 'tools/make_model_golden.py', 'timestep': TIMESTEP, 'prompt': LOSS_PROMPT,
                'batch1': batch1, 'batch2': batch2,
                'attention': {'note': note, 'layers': maps} if cols is None else
                {'note': note, 'columns': cols, 'layers': maps}}
    if fam.name != 'sd1':
        manifest = {'version': 1, 'generator': 'tools/make_model_golden.py', 'family': fam.name,
                    **{k: v for k, v in manifest.items() if k not in ('version', 'generator')}}
    write_json(os.path.join(d, 'manifest.json'), manifest)
    print(f'unet: out |max| {out1.abs().max():.3f}, {len(maps)} attention layers')
    return sample, t


# SD 1.x decodes its whole 32² latent; the 96²/128² families a small non-square latent (the decoder is
# convolutional: the 768²/1024² images would be 7/12 MB of float32).
VAE_LATENT = {'sd1': (mf.LATENT, mf.LATENT), 'sd2': (8, 12), 'sdxl': (8, 12)}


def make_vae(models: mf.Models, d: str) -> None:
    fam = models.family
    h, w = VAE_LATENT[fam.name]
    z = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(77)) / fam.vae_scaling
    with torch.no_grad():
        img = models.vae(z)
    save(os.path.join(d, 'latent_sample.npy'), z.numpy())
    save(os.path.join(d, 'sample.npy'), img.numpy())
    write_json(os.path.join(d, 'manifest.json'), {
        'version': 1, 'inputs': {'latent_sample': 'latent_sample.npy'}, 'outputs': {'sample': 'sample.npy'},
        'note': f'latent_sample = N(0,1) draws / {fam.vae_scaling}, as the pipeline decodes latents / '
                f'{fam.vae_scaling}' + ('' if fam.name == 'sd1' else
                                        f'; a {h}x{w} latent (the decoder has dynamic height/width)')})
    print(f'vae: sample range [{img.min():.3f}, {img.max():.3f}]')


def loss_options(fam: mf.Family, opts: dict) -> dict:
    """The full TS LossOptions of a golden case."""
    if fam.name == 'sd1':
        return dict(tokenIndices=LOSS_TOKENS, stepIndex=0, attentionResolution=8, attributeResolutions=[32, 16],
                    **opts)
    full = dict(tokenIndices=LOSS_TOKENS, stepIndex=0, attentionResolution=fam.divbind['attentionResolution'],
                attributeResolutions=fam.divbind['attributeResolutions'], tokenSlice=fam.divbind['tokenSlice'],
                eotIndex=LOSS_EOT)
    full.update(opts)
    if full['tokenSlice'] != 'until-eot':
        del full['eotIndex']
    return full


def finite_difference(loss64, sample, gx64, name: str) -> list:
    """Directional central differences in float64 (h = 1e-4) along 3 random unit directions; raises unless they
    agree with the autograd gradient to 1e-5 relative."""
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
    return fd


def make_losses(models: mf.Models, sample, t, cond, d):
    fam, unet = models.family, models.unet
    unet64 = fam.build().unet.double()
    cond64 = {k: v.double() for k, v in cond.items()}
    new = fam.name != 'sd1'
    manifest = []
    for name, opts in (NEW_LOSS_CASES if new else SD1_LOSS_CASES):
        full = loss_options(fam, opts)
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
            _, st = unet_with_maps(unet64, x, t, cond64)
            return dbr.attention_loss(loss_layers(st), **kw)

        x64 = sample.double().clone().requires_grad_(True)
        r64 = loss64(x64)
        gx64 = torch.autograd.grad(r64['loss'], x64)[0]
        # Directional central differences in float64 confirm the autograd gradient before anything is written.
        fd = finite_difference(loss64, sample, gx64, name)

        case = save_loss_case(d, name, full, res, r64, layers, gmaps, gx32, gx64, fd, new)
        manifest.append(case)
        print(f'losses/{name}: L {float(loss32):.6f} theta {res["indicator"]:.6f} '
              f'|dL/dx| {gx64.norm():.3e} f32-vs-f64 {case["gradSampleFloat32VsFloat64RelL2"]:.2e}')
    write_loss_manifest(d, cond, manifest, new)


def save_loss_case(d, name, full, res, r64, layers, gmaps, gx32, gx64, fd, new: bool) -> dict:
    """Writes one loss case's gradient files; returns its manifest entry."""
    cd = os.path.join(d, name)
    grads = []
    if not new:
        for i, (l, gm) in enumerate(zip(layers, gmaps)):
            if gm is None or not torch.any(gm != 0):
                continue
            f = f'{name}/grad_map_{i:02d}.npy'
            save(os.path.join(d, f), gm.numpy().astype(np.float32))
            grads.append(dict(layer=i, file=f))
    # SD 1.x stores the float64 gradient; the 96²/128² families round it to float32 (half the bytes; the
    # float32-vs-float64 UNet difference below is ~1e-6, far above float32 rounding).
    save(os.path.join(cd, 'grad_sample.npy'), gx64.numpy().astype(np.float32) if new else gx64.numpy())
    if not new:
        save(os.path.join(cd, 'grad_sample_float32_unet.npy'), gx32.numpy())
    tokens = [{'tokenIndex': tk['token_index'], 'attributeIndex': tk['attribute_index'],
               'maxAttention': tk['max_attention'], 'tv': tk['tv'], 'jsd': tk['jsd'],
               'coefficient': tk['coefficient'], 'value': tk['value']} for tk in res['tokens']]
    case = {
        'name': name, 'options': full,
        'expected': {'loss': float(res['loss']), 'indicator': res['indicator'], 'tokens': tokens,
                     'lossFloat64Unet': float(r64['loss']), 'indicatorFloat64Unet': r64['indicator']},
        'gradMaps': grads,
        'gradSample': f'{name}/grad_sample.npy',
        'gradSampleFloat32Unet': f'{name}/grad_sample_float32_unet.npy',
        'gradSampleFloat32VsFloat64RelL2': rel_l2(gx32.numpy(), gx64.numpy()),
        'finiteDifference': fd,
    }
    if new:
        del case['gradMaps'], case['gradSampleFloat32Unet']
        case['layersReachingLoss'] = [i for i, gm in enumerate(gmaps) if gm is not None and torch.any(gm != 0)]
    return case


def write_loss_manifest(d, cond, manifest, new: bool) -> None:
    inputs = {'sample': '../unet/sample.npy', 'timestep': TIMESTEP,
              **{k: f'../unet/{k}.npy' for k in cond},
              'attention': '../unet/manifest.json (attention.layers, graph order)'}
    if new:
        note = ('L from tools/divbind_reference.py on the batch-1 maps (computed in float64 from the float32 maps). '
                'gradSample: dL/dsample through a float64 copy of the UNet (same weights), rounded to float32, '
                'confirmed by directional central differences (h = 1e-4, finiteDifference); '
                'gradSampleFloat32VsFloat64RelL2: how far the same gradient through the float32 UNet is from it. '
                'layersReachingLoss: the layers whose dL/dprobs is not zero.')
    else:
        note = ('L from tools/divbind_reference.py on the batch-1 maps (computed in float64 from the float32 '
                'maps). gradMaps: float32 dL/dprobs for the layers that reach L (all others are 0). '
                'gradSample: float64 dL/dsample through a float64 copy of the UNet (same weights), '
                'confirmed by directional central differences (h = 1e-4, finiteDifference); '
                'gradSampleFloat32Unet: the same through the float32 UNet.')
    write_json(os.path.join(d, 'manifest.json'), {
        'version': 1, 'generator': 'tools/make_model_golden.py', 'inputs': inputs, 'note': note, 'cases': manifest})


if __name__ == '__main__':
    main()
