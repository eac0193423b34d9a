"""The shapes-sd model: SD-architecture modules from tools/sd_modules.py sized for 64×64 images, plus the pieces
sd_modules lacks (a VAE-style encoder, a UNet whose 16² level has cross- but no self-attention, device-safe
forwards for CUDA training).

Layout (latent 16×16×4, 4× spatial compression):
  * text encoder: CLIP text transformer, hidden 64, 2 layers, 4 heads, causal mask (so a shape token sees the
    colour word before it, as in CLIP), trained from scratch jointly with the UNet;
  * autoencoder: encoder 64² → 16²×4, decoder = sd_modules.VaeDecoder (block_out_channels (32, 64, 64): two ×2
    upsamplers); trained first with MSE, then frozen;
  * UNet: block_out_channels (64, 96, 96), 1 layer per block (3.7 M parameters). Levels: 16² CrossAttnDown (cross-attention
    only: self-attention over 256 tokens is the cost driver and the D&B maps only need cross-attention),
    8² CrossAttnDown (self + cross), 4² DownBlock2D, mid at 4² (self + cross), up: 4² UpBlock2D, 8² and 16²
    CrossAttnUp (16² again cross-only). Object and attribute maps both come from the 16² cross-attention layers.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, Tuple

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
        'unet': dict(block_out_channels=(64, 96, 96), layers_per_block=1, norm_num_groups=16, num_heads=4,
                     cross_attention_dim=64, sample_size=LATENT_SIZE, attention_impl='classic', cross_qk_gain=1.0),
        'unet_no_self_attention_at': [LATENT_SIZE],
        'vae': dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, mid_attention=True),
    }


# ---------------------------------------------------------------------------------------------------------
# Text encoder


class ShapesTextEncoder(sm.CLIPTextModel):
    """sd_modules' CLIP text model; `hidden(ids)` is the device-safe training forward (last_hidden_state only)."""

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to(torch.int64)
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding(self.position_ids)[None]
        mask = self.causal_mask.to(x.dtype)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)


# ---------------------------------------------------------------------------------------------------------
# UNet


class CrossOnlyTransformerBlock(nn.Module):
    """BasicTransformerBlock without attn1/norm1: x + attn2(norm2 x), then x + ff(norm3 x). Parameter names match
    the full block's, so ONNX scopes still read .../transformer_blocks.0/attn2/..."""

    def __init__(self, full: sm.BasicTransformerBlock):
        super().__init__()
        self.norm2 = full.norm2
        self.attn2 = full.attn2
        self.norm3 = full.norm3
        self.ff = full.ff

    def forward(self, x, context):
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """sd_modules.timestep_embedding with the frequency table on t's device (the original builds it on the CPU)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)


class ShapesUNet(sm.UNet2DConditionModel):
    """sd_modules' SD UNet with self-attention removed at the listed query resolutions (given as latent sizes)."""

    def __init__(self, cfg: sm.UNetConfig, no_self_attention_at: List[int]):
        super().__init__(cfg)
        n = len(cfg.block_out_channels)
        size = cfg.sample_size
        # down block i runs at size / 2^i; up block i at size / 2^(n-1-i)
        for i, blk in enumerate(self.down_blocks):
            if blk.attentions is not None and size // (2 ** i) in no_self_attention_at:
                _strip_self_attention(blk.attentions)
        for i, blk in enumerate(self.up_blocks):
            if blk.attentions is not None and size // (2 ** (n - 1 - i)) in no_self_attention_at:
                _strip_self_attention(blk.attentions)
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


def _strip_self_attention(attentions: nn.ModuleList) -> None:
    for tr in attentions:
        tr.transformer_blocks = nn.ModuleList([CrossOnlyTransformerBlock(b) for b in tr.transformer_blocks])


# ---------------------------------------------------------------------------------------------------------
# Autoencoder


class Encoder(nn.Module):
    """64² RGB in [-1, 1] → 16²×4 latent: conv_in, per level a resnet (+ stride-2 conv), mid resnet, norm, conv.
    Mirrors the decoder's channels; no attention (local features are all a 4× compression needs)."""

    def __init__(self, block_out_channels=(32, 64, 64), groups: int = 8, latent_channels: int = LATENT_CHANNELS):
        super().__init__()
        boc = list(block_out_channels)
        self.conv_in = nn.Conv2d(3, boc[0], 3, padding=1)
        blocks = []
        prev = boc[0]
        for i, ch in enumerate(boc):
            blocks.append(sm.ResnetBlock2D(prev, ch, None, groups, 1e-6))
            if i < len(boc) - 1:
                blocks.append(sm.Downsample2D(ch))
            prev = ch
        self.blocks = nn.ModuleList(blocks)
        self.mid = sm.ResnetBlock2D(prev, prev, None, groups, 1e-6)
        self.norm_out = nn.GroupNorm(groups, prev, eps=1e-6)
        self.conv_out = nn.Conv2d(prev, latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for b in self.blocks:
            h = b(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.encoder = Encoder(cfg['block_out_channels'], cfg['norm_num_groups'])
        self.decoder = sm.VaeDecoder(sm.VaeDecoderConfig(**{**cfg, 'block_out_channels': tuple(cfg['block_out_channels'])}))
        # Per-channel latent statistics, measured after AE training; UNet latents are (z − mean) / std.
        self.register_buffer('latent_mean', torch.zeros(LATENT_CHANNELS))
        self.register_buffer('latent_std', torch.ones(LATENT_CHANNELS))

    def normalise(self, z):
        return (z - self.latent_mean[None, :, None, None]) / self.latent_std[None, :, None, None]

    def denormalise(self, x):
        return x * self.latent_std[None, :, None, None] + self.latent_mean[None, :, None, None]


# ---------------------------------------------------------------------------------------------------------


def build(cfg: Dict, vocab_size: int) -> Tuple[ShapesTextEncoder, ShapesUNet, AutoEncoder]:
    te = ShapesTextEncoder(sm.TextEncoderConfig(vocab_size=vocab_size, **cfg['text_encoder']))
    ucfg = dict(cfg['unet'])
    ucfg['block_out_channels'] = tuple(ucfg['block_out_channels'])
    unet = ShapesUNet(sm.UNetConfig(**ucfg), list(cfg['unet_no_self_attention_at']))
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
