"""The shapes-sd model: SD-architecture modules from tools/sd_modules.py sized for 64×64 images, plus the pieces
sd_modules lacks (a VAE-style encoder, a UNet whose 16² level has cross- but no self-attention, device-safe
forwards for CUDA training).

Layout (latent 16×16×4, 4× spatial compression), sized so that training runs at ≥ 150 samples/s on 2 CPU cores
(tools/shapes/README.md has the measurements that chose it):
  * text encoder: CLIP text transformer, hidden 64, 2 layers, 4 heads, causal mask (so a shape token sees the
    colour word before it, as in CLIP). Frozen at its seeded random init, like SD's frozen CLIP: its outputs for
    every caption of the grammar are computed once and cached (tools/shapes/dataset.py);
  * autoencoder: encoder 64² → 16²×4, decoder = sd_modules.VaeDecoder (block_out_channels (32, 64, 64): two ×2
    upsamplers); trained first with MSE + L1, then frozen;
  * UNet: block_out_channels (32, 64), 1 layer per block, 2 heads. Levels: 16² CrossAttnDown and CrossAttnUp with
    cross-attention only (no self-attention, no feed-forward: those dominate the CPU cost at 256 tokens and the
    D&B maps only need cross-attention), 8² DownBlock2D, mid at 8² (self + cross attention + feed-forward: the
    global view that places 1-3 objects apart), 8² UpBlock2D. Object and attribute maps both come from the three
    16² cross-attention layers.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import sd_modules as sm  # noqa: E402

LATENT_CHANNELS = 4
LATENT_SIZE = 16
IMAGE_SIZE = 64
SCALING_FACTOR = 0.18215  # SD's; the exported decoder folds the latent normalisation in (see export.py)


def default_config() -> Dict:
    return {
        'text_encoder': dict(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4),
        'unet': dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, num_heads=2,
                     cross_attention_dim=64, sample_size=LATENT_SIZE, attention_impl='classic', cross_qk_gain=1.0),
        'unet_no_self_attention_at': [LATENT_SIZE],
        # Transformer blocks at these latent sizes have no feed-forward either (cross-attention only).
        'unet_no_feed_forward_at': [LATENT_SIZE],
        'vae': dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, mid_attention=False,
                    encoder_channels=64),
    }


# ---------------------------------------------------------------------------------------------------------
# Text encoder


class ShapesTextEncoder(sm.CLIPTextModel):
    """sd_modules' CLIP text model whose attention stays inside each object phrase.

    In CLIP every position attends causally to the ones before it. A UNet trained from scratch on such a frozen
    encoder reads the caption wherever it is summarised: first from the 66 padding positions (84-99 % of its 16²
    cross-attention went there), then, with padding masked off, from the last word ("square" in "a red circle and
    a blue square" holds the whole caption), leaving the other objects' word maps flat (max 0.005 for "circle").
    Divide & Bind optimises exactly those maps, so here the attention mask also splits the sequence into phrases
    at "and" and "," and at the first EOT: a word attends causally within its own phrase only ("circle" sees
    "a red circle", as in CLIP, but nothing of "a blue square"), EOT and the padding only among themselves. Each
    object then reaches the UNet only through its own words. The mask is built from the ids inside the graph, so
    the export needs no extra input."""

    def phrase_mask(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, L, L) additive mask: causal, and no attention across a phrase boundary or the first EOT."""
        n = ids.shape[1]
        eot = (ids == self.eot_id).to(torch.int64).argmax(dim=-1)  # first EOT (ArgMax keeps the first maximum)
        tail = (self.position_ids[None, :] >= eot[:, None]).to(torch.int64)  # (B, L)
        starts = torch.zeros_like(ids)
        for sep in self.separator_ids:
            starts = starts + (ids == sep).to(torch.int64)
        phrase = torch.cumsum(starts, dim=1) + tail * n  # the tail is a phrase of its own
        same = phrase[:, :, None] == phrase[:, None, :]
        causal = self.position_ids[None, :, None] >= self.position_ids[None, None, :]
        allowed = same & causal
        big = torch.full((1,), -1e9, dtype=dtype)
        return torch.where(allowed, torch.zeros((1,), dtype=dtype), big)[:, None].expand(-1, 1, n, n)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to(torch.int64)
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding(self.position_ids)[None]
        mask = self.phrase_mask(ids, x.dtype)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)

    def forward(self, input_ids):
        ids = input_ids.to(torch.int64)
        x = self.hidden(ids)
        eot = ids.argmax(dim=-1)
        return x, x[torch.arange(x.shape[0]), eot]


# ---------------------------------------------------------------------------------------------------------
# UNet


class CrossOnlyTransformerBlock(nn.Module):
    """BasicTransformerBlock without attn1/norm1: x + attn2(norm2 x), then (optionally) x + ff(norm3 x). Parameter
    names match the full block's, so ONNX scopes still read .../transformer_blocks.0/attn2/..."""

    def __init__(self, full: sm.BasicTransformerBlock, feed_forward: bool = True):
        super().__init__()
        self.norm2 = full.norm2
        self.attn2 = full.attn2
        if feed_forward:
            self.norm3 = full.norm3
            self.ff = full.ff
        self.feed_forward = feed_forward

    def forward(self, x, context):
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x if self.feed_forward else x


def fast_attention_forward(self: sm.Attention, x, context=None):
    """The same function as sm.Attention.forward ('classic'), arranged for CPU training speed: the 1/√d scale
    is applied to q (not to the larger score tensor), and the key axis is padded with −inf to a multiple of 16
    before the softmax (torch 1.13's CPU softmax and its backward are several times slower on a 77-long axis).
    Equal up to float rounding; the export uses the classic forward."""
    ctx = x if context is None else context
    b, n, c = x.shape
    m = ctx.shape[1]
    h, d = self.heads, self.head_dim
    q = (self.to_q(x) * self.scale).reshape(b, n, h, d).transpose(1, 2).reshape(b * h, n, d)
    k = self.to_k(ctx).reshape(b, m, h, d).transpose(1, 2).reshape(b * h, m, d)
    v = self.to_v(ctx).reshape(b, m, h, d).transpose(1, 2).reshape(b * h, m, d)
    scores = torch.bmm(q, k.transpose(1, 2))
    pad = (-m) % 16
    if pad:
        probs = torch.softmax(F.pad(scores, (0, pad), value=float('-inf')), dim=-1)[..., :m]
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, v).reshape(b, h, n, d).transpose(1, 2).reshape(b, n, c)
    return self.to_out[0](out)


def use_fast_attention(model: nn.Module, on: bool = True) -> None:
    """Switch every attention module of `model` to the training arrangement (or back to the export one)."""
    for mod in model.modules():
        if isinstance(mod, sm.Attention):
            if on:
                mod.forward = fast_attention_forward.__get__(mod)
            elif 'forward' in mod.__dict__:
                del mod.forward


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """sd_modules.timestep_embedding with the frequency table on t's device (the original builds it on the CPU)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)


class ShapesUNet(sm.UNet2DConditionModel):
    """sd_modules' SD UNet with self-attention removed at the listed query resolutions (given as latent sizes)."""

    def __init__(self, cfg: sm.UNetConfig, no_self_attention_at: List[int], no_feed_forward_at: List[int] = ()):
        super().__init__(cfg)
        n = len(cfg.block_out_channels)
        size = cfg.sample_size
        # down block i runs at size / 2^i; up block i at size / 2^(n-1-i)
        levels = [(blk, size // (2 ** i)) for i, blk in enumerate(self.down_blocks)]
        levels += [(blk, size // (2 ** (n - 1 - i))) for i, blk in enumerate(self.up_blocks)]
        for blk, at in levels:
            if blk.attentions is not None and at in no_self_attention_at:
                _strip_self_attention(blk.attentions, feed_forward=at not in no_feed_forward_at)
        for name, mod in self.named_modules():
            if isinstance(mod, sm.Attention):
                mod.name = name

    def forward(self, sample, timestep, encoder_hidden_states):
        b = sample.shape[0]
        t = timestep.reshape(-1)
        t = t.expand(b) if t.shape[0] == 1 else t
        temb = self.time_embedding(timestep_embedding(t, self.cfg.block_out_channels[0], sample.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for blk in self.down_blocks:
            x, outs = blk(x, temb, encoder_hidden_states)
            skips.extend(outs)
        x = self.mid_block(x, temb, encoder_hidden_states)
        for blk in self.up_blocks:
            k = len(blk.resnets)
            x = blk(x, skips[-k:], temb, encoder_hidden_states)
            del skips[-k:]
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def _strip_self_attention(attentions: nn.ModuleList, feed_forward: bool) -> None:
    for tr in attentions:
        tr.transformer_blocks = nn.ModuleList([CrossOnlyTransformerBlock(b, feed_forward)
                                               for b in tr.transformer_blocks])


# ---------------------------------------------------------------------------------------------------------
# Autoencoder


class Encoder(nn.Module):
    """64² RGB in [-1, 1] → 16²×4 latent: a lossless 4×4 space-to-depth (48 channels at 16²), then convolutions at
    16² only. The encoder is used only in training (text-to-image needs just the decoder), so it is kept cheap:
    encoding the cached scenes and the autoencoder phase are a real share of a CPU training budget."""

    def __init__(self, channels: int = 64, groups: int = 8, latent_channels: int = LATENT_CHANNELS, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.conv_in = nn.Conv2d(3 * factor * factor, channels, 3, padding=1)
        self.resnet = sm.ResnetBlock2D(channels, channels, None, groups, 1e-6)
        self.norm_out = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.resnet(self.conv_in(F.pixel_unshuffle(x, self.factor)))
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.encoder = Encoder(cfg.get('encoder_channels', 64), cfg['norm_num_groups'])
        dec = {k: v for k, v in cfg.items() if k != 'encoder_channels'}
        self.decoder = sm.VaeDecoder(sm.VaeDecoderConfig(**{**dec, 'block_out_channels': tuple(dec['block_out_channels'])}))
        # Per-channel latent statistics, measured after AE training; UNet latents are (z − mean) / std.
        self.register_buffer('latent_mean', torch.zeros(LATENT_CHANNELS))
        self.register_buffer('latent_std', torch.ones(LATENT_CHANNELS))

    def normalise(self, z):
        return (z - self.latent_mean[None, :, None, None]) / self.latent_std[None, :, None, None]

    def denormalise(self, x):
        return x * self.latent_std[None, :, None, None] + self.latent_mean[None, :, None, None]


# ---------------------------------------------------------------------------------------------------------


def build(cfg: Dict, vocab_size: int, eot_id: int, separator_ids: Sequence[int]) -> Tuple[ShapesTextEncoder, ShapesUNet, AutoEncoder]:
    """separator_ids: the token ids that start a new phrase in the text encoder's mask ("and", ",")."""
    te = ShapesTextEncoder(sm.TextEncoderConfig(vocab_size=vocab_size, **cfg['text_encoder']))
    te.eot_id = eot_id
    te.separator_ids = tuple(separator_ids)
    ucfg = dict(cfg['unet'])
    ucfg['block_out_channels'] = tuple(ucfg['block_out_channels'])
    unet = ShapesUNet(sm.UNetConfig(**ucfg), list(cfg['unet_no_self_attention_at']),
                      list(cfg.get('unet_no_feed_forward_at', [])))
    ae = AutoEncoder(cfg['vae'])
    return te, unet, ae


def param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# SD 1.5 DDPM schedule: scaled_linear, β from 0.00085 to 0.012 over 1000 steps.
def sd15_alphas_cumprod(device=None) -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32).to(device)


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
