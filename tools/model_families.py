"""The reference-model families: what differs between the tiny SD 1.x, SD 2.x and SDXL models, in one place.

    import model_families as mf
    fam = mf.FAMILIES['sd2']; models = fam.build()      # fixed seeds → the same weights every time
    cond = models.encode(['a red cat and a blue dog'])   # dict of UNet inputs besides sample/timestep
    eps = models.unet(sample, t, **cond)

Used by make_reference_models.py (ONNX export), make_model_golden.py and reference_pipeline.py (golden data).

| family | folder | latent → image | text conditioning | UNet | scheduler (as shipped) |
|---|---|---|---|---|---|
| sd1 | tiny-sd | 32² → 256² | CLIP (quick_gelu), last layer + final LN; pad EOT | SD 1.x layout | SD 1.5 PNDM, ε |
| sd2 | tiny-sd2 | 96² → 768² | OpenCLIP-style (gelu), penultimate layer + final LN (the export drops the last layer, as diffusers' SD 2.x conversion); pad "!" (id 0) | SD 2.x: linear proj, heads per block | SD 2.1 DDIM, v-prediction |
| sdxl | tiny-sdxl | 128² → 1024² | CLIP (pad EOT) ⊕ OpenCLIP-bigG-style (pad "!"), penultimate hidden states of both (no final LN) concatenated; text_embeds = 2nd encoder's projected pooled output; time_ids (6) | SDXL: no top-level attention, depth per block, text_time | SDXL Euler, ε |
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import clip_bpe
import sd_modules as sm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find_benchmarks() -> str:
    """shared/benchmarks next to the checkout, or next to one of its parents (git worktrees live deeper)."""
    d = REPO
    while os.path.dirname(d) != d:
        d = os.path.dirname(d)
        candidate = os.path.join(d, 'shared', 'benchmarks')
        if os.path.isdir(candidate):
            return candidate
    raise SystemExit(f'shared/benchmarks not found above {REPO}')


BENCH = _find_benchmarks()

# Words added to the benchmark prompts so common shape/colour/scene words are single tokens.
EXTRA_WORDS = """
circle square triangle star hexagon heart diamond cross rectangle oval cube sphere cone
red orange yellow green blue purple pink brown gray grey black white cyan magenta gold silver
street snowy library kitchen beach forest park city room table field sky mountain river garden desert night
sunny rainy road lake sea ocean house window door car tree flower grass snow rain cloud sun moon
a an the of on in under above below next to with and near behind left right top bottom small big large tiny
photo painting drawing picture image of sitting standing running flying swimming
""".split()

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json.
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

# stabilityai/stable-diffusion-2-1 (768-v) scheduler/scheduler_config.json: DDIM, v-prediction.
SD21_SCHEDULER = {
    '_class_name': 'DDIMScheduler',
    '_diffusers_version': '0.8.0',
    'beta_end': 0.012,
    'beta_schedule': 'scaled_linear',
    'beta_start': 0.00085,
    'clip_sample': False,
    'num_train_timesteps': 1000,
    'prediction_type': 'v_prediction',
    'set_alpha_to_one': False,
    'skip_prk_steps': True,
    'steps_offset': 1,
    'trained_betas': None,
}

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json: Euler discrete, ε, leading spacing.
SDXL_SCHEDULER = {
    '_class_name': 'EulerDiscreteScheduler',
    '_diffusers_version': '0.19.0.dev0',
    'beta_end': 0.012,
    'beta_schedule': 'scaled_linear',
    'beta_start': 0.00085,
    'clip_sample': False,
    'interpolation_type': 'linear',
    'num_train_timesteps': 1000,
    'prediction_type': 'epsilon',
    'sample_max_value': 1.0,
    'set_alpha_to_one': False,
    'skip_prk_steps': True,
    'steps_offset': 1,
    'timestep_spacing': 'leading',
    'trained_betas': None,
    'use_karras_sigmas': False,
}

# SD 1.x tiny model (kept under these names: make_reference_models re-exports them).
SEEDS = {'text_encoder': 1001, 'unet': 1002, 'vae_decoder': 1003}
LATENT = 32  # 32×32 latent → 256×256 images
VAE_SCALING = 0.18215
SDXL_VAE_SCALING = 0.13025


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


@functools.lru_cache(maxsize=1)
def _learned() -> Tuple[Dict[str, int], Tuple[Tuple[str, str], ...]]:
    merges = clip_bpe.learn_merges(corpus_words())
    return clip_bpe.build_vocab(merges), tuple(merges)


def learn_tokenizer() -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """The tiny CLIP BPE vocabulary shared by every family (SD 2.x and SDXL reuse CLIP's vocabulary too)."""
    vocab, merges = _learned()
    return dict(vocab), list(merges)


def build_models(attention_impl: str = 'classic'):
    """SD 1.x: returns (tokenizer, text_encoder, unet, vae_decoder), float32, eval mode, fixed weights."""
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


# ---------------------------------------------------------------------------------------------------------
# Tiny SD 2.x and SDXL configurations

SD2_SEEDS = {'text_encoder': 2001, 'unet': 2002, 'vae_decoder': 2003}
SDXL_SEEDS = {'text_encoder': 3001, 'text_encoder_2': 3004, 'unet': 3002, 'vae_decoder': 3003}

# OpenCLIP-style text encoder: built with 3 layers, exported with 2 (diffusers' SD 2.x conversion drops the last
# of ViT-H's 24 layers), so the export's last_hidden_state is the full encoder's penultimate layer + final LN.
SD2_TEXT = dict(hidden_size=40, intermediate_size=160, num_layers=3, num_heads=2, hidden_act='gelu')
# Heads per block (1, 2, 3, 3) at head dim 8, like SD 2.1's (5, 10, 20, 20) at head dim 64.
SD2_UNET = dict(block_out_channels=(8, 16, 24, 24), layers_per_block=1, norm_num_groups=4, num_heads=(1, 2, 3, 3),
                cross_attention_dim=40, sample_size=96, use_linear_projection=True, no_self_attention_levels=(0, 1))

# SDXL: CLIP-L-style (2 layers) and OpenCLIP-bigG-style (3 layers, projection 24 ≠ hidden 32, so text_embeds and
# pooler_output cannot be confused) encoders; context = 16 + 32 = 48; added condition 6·8 + 24 = 72. Transformer
# depth (1, 2, 2) for SDXL's (1, 2, 10) (the first entry belongs to the attention-free DownBlock2D).
SDXL_TEXT_1 = dict(hidden_size=16, intermediate_size=64, num_layers=2, num_heads=2, hidden_act='quick_gelu')
SDXL_TEXT_2 = dict(hidden_size=32, intermediate_size=128, num_layers=3, num_heads=2, hidden_act='gelu',
                   projection_dim=24)
SDXL_UNET = dict(block_out_channels=(8, 16, 24), layers_per_block=1, norm_num_groups=4, num_heads=(1, 1, 3),
                 cross_attention_dim=48, sample_size=128, transformer_layers_per_block=(1, 2, 2),
                 use_linear_projection=True, down_block_types=sm.SDXL_DOWN, up_block_types=sm.SDXL_UP,
                 addition_embed_type='text_time', addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=sm.SDXL_TIME_IDS * 8 + 24, no_self_attention_levels=(1,))
# Both tiny UNets drop self-attention (attn1) where it would cost millions of scores per head and layer and
# dominate every generator and test run on a CPU (SD 2.x at 96² and 48²: 85M and 5.3M; SDXL at 64²: 17M). attn1
# stays at every lower level (SD 2.x 24², 12²; SDXL 32²); the full-size configs (sd_modules.sd21_unet_config /
# sdxl_unet_config) have all of them.
# The VAE decoders of the 96²/128² models skip the mid-block attention (at 128² it would be a 16384² matrix, 1 GiB
# per image in fp32, in every test run; SD 1.x's tiny VAE covers that block) and are narrower than SD 1.x's
# (they decode to 768²/1024²).
TINY_VAE = dict(block_out_channels=(4, 8, 8, 8), norm_num_groups=4, mid_attention=False)


# ---------------------------------------------------------------------------------------------------------
# Families


Cond = Dict[str, torch.Tensor]


def cond_rows(cond: Cond, rows: slice) -> Cond:
    return {k: v[rows] for k, v in cond.items()}


def cond_cat(*conds: Cond) -> Cond:
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


@dataclass
class Models:
    """One family's components and how a prompt conditions its UNet."""
    family: 'Family'
    tokenizers: List[clip_bpe.ClipTokenizer]
    text_encoders: List[sm.CLIPTextModel]
    unet: sm.UNet2DConditionModel
    vae: sm.VaeDecoder

    @property
    def tokenizer(self) -> clip_bpe.ClipTokenizer:
        """The first tokenizer: token indices and the EOT index refer to its ids (the same for both in SDXL)."""
        return self.tokenizers[0]

    def to(self, dtype: torch.dtype) -> 'Models':
        for m in (*self.text_encoders, self.unet, self.vae):
            m.to(dtype)
        return self

    def input_ids(self, prompts: Sequence[str]) -> List[torch.Tensor]:
        """int32 (B, 77) per tokenizer (the exports take int32 ids, as diffusers/Optimum cast them)."""
        return [torch.tensor([tok(p) for p in prompts], dtype=torch.int32) for tok in self.tokenizers]

    def encode(self, prompts: Sequence[str]) -> Cond:
        """The UNet's conditioning inputs for a batch of prompts."""
        ids = self.input_ids(prompts)
        if self.family.name != 'sdxl':
            return {'encoder_hidden_states': self.text_encoders[0](ids[0])[0]}
        first, second = (te.encode(i) for te, i in zip(self.text_encoders, ids))
        ehs = torch.cat([first['hidden_states'][-2], second['hidden_states'][-2]], dim=-1)
        return {'encoder_hidden_states': ehs, 'text_embeds': second['text_embeds'],
                'time_ids': self.family.time_ids(len(prompts), ehs.dtype)}

    def negative(self, prompt: str, encoded: Cond) -> Cond:
        """The unconditional inputs for `prompt` (already encoded as `encoded`): SDXL's
        force_zeros_for_empty_prompt replaces an empty negative prompt's embeddings by zeros."""
        if self.family.force_zeros_for_empty_prompt and prompt == '':
            return {k: (v if k == 'time_ids' else torch.zeros_like(v)) for k, v in encoded.items()}
        return encoded


@dataclass
class Family:
    name: str
    folder: str                      # test/fixtures/models/<folder>
    golden: str                      # test/fixtures/<golden>
    latent: int                      # latent side; image side = 8 × latent
    vae_scaling: float
    scheduler_config: dict           # as the family's checkpoint ships it
    divbind: dict                    # model_index.json "divbind": D&B defaults for this model (LossOptions keys)
    guidance: float                  # the pipeline's default guidance scale
    builder: Callable[['Family'], Models] = field(repr=False, default=None)
    force_zeros_for_empty_prompt: bool = False
    map_columns: Optional[int] = None  # golden attention maps keep token columns [0, map_columns) (None: all)

    @property
    def image(self) -> int:
        return 8 * self.latent

    def time_ids(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """SDXL's add_time_ids: original size (h, w), crop top-left (0, 0), target size (h, w), all = the image."""
        s = float(self.image)
        return torch.tensor([[s, s, 0.0, 0.0, s, s]] * batch, dtype=dtype)

    def build(self) -> Models:
        return self.builder(self)


def _build_sd1(fam: Family) -> Models:
    tok, te, unet, vae = build_models()
    return Models(fam, [tok], [te], unet, vae)


def _tokenizers(*pads: str) -> List[clip_bpe.ClipTokenizer]:
    vocab, merges = learn_tokenizer()
    return [clip_bpe.ClipTokenizer(vocab, merges, pad) for pad in pads]


def _text_encoder(vocab_size: int, spec: dict, seed: int) -> sm.CLIPTextModel:
    cfg = sm.TextEncoderConfig(vocab_size=vocab_size, **spec)
    cls = sm.CLIPTextModelWithProjection if cfg.projection_dim else sm.CLIPTextModel
    return sm.init_text_encoder_(cls(cfg), seed).eval()


def sd2_full_text_encoder() -> sm.CLIPTextModel:
    """The tiny OpenCLIP-style encoder before diffusers' conversion drops its last layer (for the penultimate-layer
    check of the golden data)."""
    return _text_encoder(len(learn_tokenizer()[0]), SD2_TEXT, SD2_SEEDS['text_encoder'])


def _build_sd2(fam: Family) -> Models:
    torch.manual_seed(0)
    toks = _tokenizers(clip_bpe.OPENCLIP_PAD)
    te = sm.drop_last_layers_(sd2_full_text_encoder(), 1)
    unet = sm.init_unet_(sm.UNet2DConditionModel(sm.UNetConfig(**SD2_UNET)), SD2_SEEDS['unet']).eval()
    vae = sm.init_default_(sm.VaeDecoder(sm.VaeDecoderConfig(**TINY_VAE)), SD2_SEEDS['vae_decoder']).eval()
    return Models(fam, toks, [te], unet, vae)


def _build_sdxl(fam: Family) -> Models:
    torch.manual_seed(0)
    toks = _tokenizers(clip_bpe.EOT, clip_bpe.OPENCLIP_PAD)
    n = len(toks[0].vocab)
    tes = [_text_encoder(n, SDXL_TEXT_1, SDXL_SEEDS['text_encoder']),
           _text_encoder(n, SDXL_TEXT_2, SDXL_SEEDS['text_encoder_2'])]
    unet = sm.init_unet_(sm.UNet2DConditionModel(sm.UNetConfig(**SDXL_UNET)), SDXL_SEEDS['unet']).eval()
    vae = sm.init_default_(sm.VaeDecoder(sm.VaeDecoderConfig(**TINY_VAE)), SDXL_SEEDS['vae_decoder']).eval()
    return Models(fam, toks, tes, unet, vae)


FAMILIES: Dict[str, Family] = {
    'sd1': Family('sd1', 'tiny-sd', 'golden', LATENT, VAE_SCALING, SD15_SCHEDULER,
                  {'attentionResolution': 8, 'attributeResolutions': [32, 16]}, 7.5, _build_sd1),
    # D&B's SD 1.x rule scaled to 768²: objects at 768/32 = 24, attributes from 96² and 48² (W/8, W/16). The
    # token slice stops before EOT (A&E's SD 2.1 `1:last_idx`): with "!" padding the 1:-1 slice would put 67
    # pad columns into the token softmax.
    'sd2': Family('sd2', 'tiny-sd2', 'golden-sd2', 96, VAE_SCALING, SD21_SCHEDULER,
                  {'attentionResolution': 24, 'attributeResolutions': [96, 48], 'tokenSlice': 'until-eot'}, 7.5,
                  _build_sd2, map_columns=10),
    # Objects at 1024/32 = 32 (the A&E-SDXL pipeline's ceil(W/32)); attributes from the only finer level, 64²
    # (there is no attention at 128²).
    'sdxl': Family('sdxl', 'tiny-sdxl', 'golden-sdxl', 128, SDXL_VAE_SCALING, SDXL_SCHEDULER,
                   {'attentionResolution': 32, 'attributeResolutions': [64], 'tokenSlice': 'until-eot'}, 5.0,
                   _build_sdxl, force_zeros_for_empty_prompt=True, map_columns=10),
}
