"""Small PyTorch modules with Stable Diffusion 1.x's architecture (diffusers layout and parameter names).

Written from the architecture description (CLIP text transformer, UNet2DConditionModel, AutoencoderKL decoder),
not copied from diffusers/transformers. Module names follow diffusers so that ONNX node scopes read like a real
SD export (`/down_blocks.0/attentions.0/transformer_blocks.0/attn2/...`).

Shapes: B batch, C channels, H/W spatial, L = 77 text positions, D = cross_attention_dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------
# Configs


@dataclass
class TextEncoderConfig:
    vocab_size: int
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5


@dataclass
class UNetConfig:
    """The SD 1.x UNet layout (CrossAttnDown ×3, DownBlock2D, mid, UpBlock2D, CrossAttnUp ×3), sizes free."""
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: Tuple[int, ...] = (16, 24, 24, 24)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    norm_eps: float = 1e-5
    num_heads: int = 2
    cross_attention_dim: int = 32
    sample_size: int = 32
    # 'classic': scores = (q·kᵀ)·scale on [B·h, HW, d] (torch 1.x / pre-SDPA exports);
    # 'sdpa': q·√scale and kᵀ·√scale before the MatMul on [B, h, HW, d] (the PyTorch-2 SDPA ONNX pattern).
    attention_impl: str = 'classic'
    # Multiplies the default init of attn2's to_q/to_k so cross-attention maps are peaky but not one-hot.
    cross_qk_gain: float = 1.5


@dataclass
class VaeDecoderConfig:
    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: Tuple[int, ...] = (8, 16, 16, 16)
    layers_per_block: int = 1
    norm_num_groups: int = 4
    mid_attention: bool = True


def tiny_unet_config(**overrides) -> UNetConfig:
    return UNetConfig(**overrides)


def sd15_unet_config(**overrides) -> UNetConfig:
    """SD 1.5's UNet: 320/640/1280/1280, 2 layers per block, 8 heads, cross dim 768, 64×64 latent."""
    base = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
                num_heads=8, cross_attention_dim=768, sample_size=64, cross_qk_gain=1.0)
    base.update(overrides)
    return UNetConfig(**base)


# ---------------------------------------------------------------------------------------------------------
# Shared pieces


def timestep_embedding(timesteps: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal embedding, flip_sin_to_cos=True, downscale_freq_shift=0: [cos(t·f_k), sin(t·f_k)],
    f_k = exp(−ln(10000)·k/half), k = 0..half−1. timesteps is (B,)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half
    args = timesteps.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb.to(dtype)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm, SiLU, conv3×3, + time projection, GroupNorm, SiLU, conv3×3, 1×1 shortcut if channels change."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: Optional[int], groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch) if temb_ch is not None else None
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest ×2 (exports as Resize nearest/asymmetric/floor) followed by conv3×3."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


# ---------------------------------------------------------------------------------------------------------
# Attention


class Attention(nn.Module):
    """Multi-head attention with diffusers' names (to_q, to_k, to_v, to_out.0).

    When `store` is a list, cross-attention probabilities P = softmax(q·kᵀ/√d) are appended to it as
    (name, P) with P shaped (B, heads, HW, L), still attached to the autograd graph.
    """

    def __init__(self, query_dim: int, context_dim: Optional[int], heads: int, impl: str = 'classic',
                 name: str = ''):
        super().__init__()
        context_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.head_dim = query_dim // heads
        self.scale = self.head_dim ** -0.5
        self.impl = impl
        self.name = name
        self.is_cross = False
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim), nn.Dropout(0.0)])
        self.store: Optional[list] = None

    def forward(self, x, context=None):
        ctx = x if context is None else context
        b, n, c = x.shape
        m = ctx.shape[1]
        h, d = self.heads, self.head_dim
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        if self.impl == 'sdpa':
            # (B, h, N, d) layout; √scale multiplies q and kᵀ separately, the scale itself comes from the
            # runtime shape (Shape → Slice → Cast → Sqrt → Div → Sqrt), as torch 2's SDPA symbolic emits it.
            q = q.reshape(b, n, h, d).transpose(1, 2)
            k = k.reshape(b, m, h, d).transpose(1, 2)
            v = v.reshape(b, m, h, d).transpose(1, 2)
            emb = torch._shape_as_tensor(q)[-1:].to(q.dtype)
            sqrt_scale = torch.sqrt(torch.div(torch.ones(1, dtype=q.dtype), torch.sqrt(emb)))
            kt = k.transpose(-2, -1)
            probs = torch.softmax(torch.matmul(q * sqrt_scale, kt * sqrt_scale), dim=-1)
            out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, c)
            if self.store is not None:
                self.store.append((self.name, probs))
        else:
            # (B·h, N, d) layout, scale applied after the MatMul (pre-SDPA diffusers processors).
            q = q.reshape(b, n, h, d).permute(0, 2, 1, 3).reshape(b * h, n, d)
            k = k.reshape(b, m, h, d).permute(0, 2, 1, 3).reshape(b * h, m, d)
            v = v.reshape(b, m, h, d).permute(0, 2, 1, 3).reshape(b * h, m, d)
            probs = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * self.scale, dim=-1)
            out = torch.matmul(probs, v)
            out = out.reshape(b, h, n, d).permute(0, 2, 1, 3).reshape(b, n, c)
            if self.store is not None:
                self.store.append((self.name, probs.reshape(b, h, n, m)))
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int, impl: str, name: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, impl, name + '.attn1')
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, impl, name + '.attn2')
        self.attn2.is_cross = True
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class Transformer2DModel(nn.Module):
    """GroupNorm (eps 1e-6), proj_in 1×1 conv, one BasicTransformerBlock, proj_out 1×1 conv, residual."""

    def __init__(self, ch: int, heads: int, context_dim: int, groups: int, impl: str, name: str):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(ch, heads, context_dim, impl, name + '.transformer_blocks.0')])
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x, context):
        b, c, hh, ww = x.shape
        res = x
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        for blk in self.transformer_blocks:
            h = blk(h, context)
        h = h.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return self.proj_out(h) + res


# ---------------------------------------------------------------------------------------------------------
# UNet


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (with_attn) or DownBlock2D: resnets[i] (+ attentions[i]), optional downsampler."""

    def __init__(self, cfg: UNetConfig, in_ch: int, out_ch: int, temb_ch: int, with_attn: bool, add_down: bool,
                 name: str):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps)
            for i in range(cfg.layers_per_block)])
        self.attentions = nn.ModuleList([
            Transformer2DModel(out_ch, cfg.num_heads, cfg.cross_attention_dim, cfg.norm_num_groups,
                               cfg.attention_impl, f'{name}.attentions.{i}')
            for i in range(cfg.layers_per_block)]) if with_attn else None
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)]) if add_down else None

    def forward(self, x, temb, context):
        outs = []
        for i, res in enumerate(self.resnets):
            x = res(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            outs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outs.append(x)
        return x, outs


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D / UpBlock2D: layers_per_block + 1 resnets on [x, skip] concatenations."""

    def __init__(self, cfg: UNetConfig, in_ch: int, prev_ch: int, out_ch: int, temb_ch: int, with_attn: bool,
                 add_up: bool, name: str):
        super().__init__()
        n = cfg.layers_per_block + 1
        res = []
        for i in range(n):
            skip_ch = in_ch if i == n - 1 else out_ch
            res_in = prev_ch if i == 0 else out_ch
            res.append(ResnetBlock2D(res_in + skip_ch, out_ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps))
        self.resnets = nn.ModuleList(res)
        self.attentions = nn.ModuleList([
            Transformer2DModel(out_ch, cfg.num_heads, cfg.cross_attention_dim, cfg.norm_num_groups,
                               cfg.attention_impl, f'{name}.attentions.{i}')
            for i in range(n)]) if with_attn else None
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_up else None

    def forward(self, x, skips: List[torch.Tensor], temb, context):
        for i, res in enumerate(self.resnets):
            x = res(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

    def __init__(self, cfg: UNetConfig, ch: int, temb_ch: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps)
                                      for _ in range(2)])
        self.attentions = nn.ModuleList([
            Transformer2DModel(ch, cfg.num_heads, cfg.cross_attention_dim, cfg.norm_num_groups,
                               cfg.attention_impl, 'mid_block.attentions.0')])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UNet2DConditionModel(nn.Module):
    """forward(sample (B,4,H,W), timestep (scalar, (1,) or (B,), int or float), encoder_hidden_states (B,L,D))
    → noise prediction (B,4,H,W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        boc = cfg.block_out_channels
        temb_ch = boc[0] * 4
        self.conv_in = nn.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb_ch)
        n = len(boc)
        down = []
        out_ch = boc[0]
        for i in range(n):
            in_ch, out_ch = out_ch, boc[i]
            down.append(DownBlock(cfg, in_ch, out_ch, temb_ch, with_attn=i < n - 1, add_down=i < n - 1,
                                  name=f'down_blocks.{i}'))
        self.down_blocks = nn.ModuleList(down)
        self.mid_block = MidBlock(cfg, boc[-1], temb_ch)
        rev = list(reversed(boc))
        up = []
        out_ch = rev[0]
        for i in range(n):
            prev_ch, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, n - 1)]
            up.append(UpBlock(cfg, in_ch, prev_ch, out_ch, temb_ch, with_attn=i > 0, add_up=i < n - 1,
                              name=f'up_blocks.{i}'))
        self.up_blocks = nn.ModuleList(up)
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, boc[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(boc[0], cfg.out_channels, 3, padding=1)
        for name, mod in self.named_modules():
            if isinstance(mod, Attention):
                mod.name = name

    def cross_attention_modules(self) -> List[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention) and m.is_cross]

    def set_attention_store(self, store: Optional[list]) -> None:
        """Start (a list) or stop (None) recording cross-attention probabilities, in execution order."""
        for m in self.cross_attention_modules():
            m.store = store

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


def init_unet_(unet: UNet2DConditionModel, seed: int) -> UNet2DConditionModel:
    """Default PyTorch init from a fixed seed, then attn2's q/k scaled by cross_qk_gain so the cross-attention
    logits spread over several units (peaky maps) while the softmax stays far from one-hot."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound * math.sqrt(3.0))
            elif name.endswith('bias') and 'norm' not in name:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.05)
        for m in unet.cross_attention_modules():
            m.to_q.weight.mul_(unet.cfg.cross_qk_gain)
            m.to_k.weight.mul_(unet.cfg.cross_qk_gain)
    return unet


# ---------------------------------------------------------------------------------------------------------
# CLIP text encoder


class CLIPAttention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.head_dim = d // cfg.num_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, mask):
        b, n, c = x.shape
        h, d = self.heads, self.head_dim
        q = self.q_proj(x).reshape(b, n, h, d).transpose(1, 2) * (d ** -0.5)
        k = self.k_proj(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v_proj(x).reshape(b, n, h, d).transpose(1, 2)
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + mask, dim=-1)
        return self.out_proj(torch.matmul(w, v).transpose(1, 2).reshape(b, n, c))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg) for _ in range(cfg.num_layers)])


class CLIPTextModel(nn.Module):
    """input_ids (B, 77) → (last_hidden_state (B,77,D), pooler_output (B,D) at the first EOT = argmax id)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        n = cfg.max_position_embeddings
        # Causal mask as a constant; −1e9 (not −inf) keeps fp16/ORT softmax free of NaN.
        self.register_buffer('causal_mask', torch.full((n, n), -1e9).triu(1), persistent=False)
        self.register_buffer('position_ids', torch.arange(n), persistent=False)

    def forward(self, input_ids):
        ids = input_ids.to(torch.int64)
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding(self.position_ids)[None]
        mask = self.causal_mask.to(x.dtype)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        x = self.final_layer_norm(x)
        eot = ids.argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0]), eot]
        return x, pooled


def init_text_encoder_(model: CLIPTextModel, seed: int) -> CLIPTextModel:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'embedding' in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif 'layer_norm' in name and name.endswith('weight'):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------------------------------------------------
# VAE decoder


class VaeAttention(nn.Module):
    """Single-head spatial self-attention with group_norm, to_q/k/v, to_out.0 and a residual."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch), nn.Dropout(0.0)])

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        p = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * (c ** -0.5), dim=-1)
        o = self.to_out[0](torch.matmul(p, v))
        return o.transpose(1, 2).reshape(b, c, h, w) + x


class VaeMidBlock(nn.Module):
    def __init__(self, ch: int, groups: int, with_attn: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, None, groups, 1e-6) for _ in range(2)])
        self.attentions = nn.ModuleList([VaeAttention(ch, groups)]) if with_attn else None

    def forward(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class VaeUpBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n: int, groups: int, add_up: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, 1e-6)
                                      for i in range(n)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_up else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: VaeDecoderConfig):
        super().__init__()
        rev = list(reversed(cfg.block_out_channels))
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = VaeMidBlock(rev[0], cfg.norm_num_groups, cfg.mid_attention)
        ups = []
        prev = rev[0]
        for i, ch in enumerate(rev):
            ups.append(VaeUpBlock(prev, ch, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(rev) - 1))
            prev = ch
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, rev[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for u in self.up_blocks:
            x = u(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VaeDecoder(nn.Module):
    """latent_sample (B,4,h,w) (already divided by 0.18215) → sample (B,3,8h,8w), roughly in [−1, 1]."""

    def __init__(self, cfg: VaeDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    def forward(self, latent_sample):
        return self.decoder(self.post_quant_conv(latent_sample))


def init_default_(model: nn.Module, seed: int) -> nn.Module:
    """Uniform ±√3/√fan_in weights (unit-variance preserving), small biases, from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * math.sqrt(3.0 / fan_in))
            elif name.endswith('bias') and 'norm' not in name:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.05)
    return model
