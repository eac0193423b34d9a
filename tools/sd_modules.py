"""Small PyTorch modules with Stable Diffusion's architecture (diffusers layout and parameter names): SD 1.x,
SD 2.x and SDXL.

Written from the architecture description (CLIP text transformer, UNet2DConditionModel, AutoencoderKL decoder),
not copied from diffusers/transformers. Module names follow diffusers so that ONNX node scopes read like a real
SD export (`/down_blocks.0/attentions.0/transformer_blocks.0/attn2/...`).

What differs between the families is configuration only:
  SD 1.x  conv proj_in/proj_out, one head count, CLIP text encoder (quick_gelu, last layer + final LN);
  SD 2.x  linear proj_in/proj_out (use_linear_projection), head counts per block, OpenCLIP-style text encoder
          (gelu; diffusers' conversion drops the last layer, so the export's last_hidden_state is the
          penultimate layer + final LN);
  SDXL    no attention at the top level (DownBlock2D first, UpBlock2D last), transformer depth per block,
          two text encoders (penultimate hidden states concatenated, the second one's projected pooled output
          as `text_embeds`), and the "text_time" added condition: emb += add_embedding([text_embeds,
          timestep_embedding(time_ids)]).

Shapes: B batch, C channels, H/W spatial, L = 77 text positions, D = cross_attention_dim.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

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
    hidden_act: str = 'quick_gelu'  # CLIP; OpenCLIP (SD 2.x, SDXL's second encoder) uses 'gelu' (erf)
    projection_dim: Optional[int] = None  # CLIPTextModelWithProjection's text_projection (SDXL's 2nd encoder)


CROSS_DOWN, PLAIN_DOWN = 'CrossAttnDownBlock2D', 'DownBlock2D'
CROSS_UP, PLAIN_UP = 'CrossAttnUpBlock2D', 'UpBlock2D'


@dataclass
class UNetConfig:
    """UNet2DConditionModel with diffusers' config keys. The defaults are the SD 1.x layout (CrossAttnDown ×3,
    DownBlock2D, mid, UpBlock2D, CrossAttnUp ×3) at tiny sizes; block types None mean that layout."""
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: Tuple[int, ...] = (16, 24, 24, 24)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    norm_eps: float = 1e-5
    # Head count, one per block when a tuple (diffusers' `attention_head_dim` of SD 2.x/SDXL, which diffusers
    # reads as the number of heads). Up blocks use the reversed tuple, the mid block the last entry.
    num_heads: Union[int, Tuple[int, ...]] = 2
    cross_attention_dim: int = 32
    sample_size: int = 32
    # BasicTransformerBlocks per Transformer2DModel, per block like num_heads (SDXL: (1, 2, 10)).
    transformer_layers_per_block: Union[int, Tuple[int, ...]] = 1
    # proj_in/proj_out as Linear on (B, HW, C) after the GroupNorm (SD 2.x, SDXL) instead of 1×1 convs.
    use_linear_projection: bool = False
    down_block_types: Optional[Tuple[str, ...]] = None
    up_block_types: Optional[Tuple[str, ...]] = None
    # SDXL: 'text_time' adds add_embedding(cat(text_embeds, timestep_embedding(time_ids))) to the time embedding.
    addition_embed_type: Optional[str] = None
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: Optional[int] = None
    # Levels (0 = the top, full latent size) whose transformer blocks have no self-attention (attn1). Not a
    # diffusers option: the tiny 96²/128² reference models drop attn1 at their finest attention levels, where it
    # would dominate their CPU cost (9216² scores per head at 96²). Empty for every real layout.
    no_self_attention_levels: Tuple[int, ...] = ()
    # 'classic': scores = (q·kᵀ)·scale on [B·h, HW, d] (torch 1.x / pre-SDPA exports);
    # 'sdpa': q·√scale and kᵀ·√scale before the MatMul on [B, h, HW, d] (the PyTorch-2 SDPA ONNX pattern).
    attention_impl: str = 'classic'
    # Multiplies the default init of attn2's to_q/to_k so cross-attention maps are peaky but not one-hot.
    cross_qk_gain: float = 1.5

    def per_block(self, value) -> Tuple[int, ...]:
        n = len(self.block_out_channels)
        out = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
        if len(out) != n:
            raise ValueError(f'{value!r} needs one entry per block ({n})')
        return out

    def block_types(self) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        n = len(self.block_out_channels)
        down = self.down_block_types or tuple(CROSS_DOWN if i < n - 1 else PLAIN_DOWN for i in range(n))
        up = self.up_block_types or tuple(PLAIN_UP if i == 0 else CROSS_UP for i in range(n))
        if len(down) != n or len(up) != n:
            raise ValueError('down_block_types and up_block_types need one entry per block')
        return tuple(down), tuple(up)


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


def sd21_unet_config(**overrides) -> UNetConfig:
    """SD 2.1's (768-v) UNet: SD 1.5's blocks with heads (5, 10, 20, 20) (head dim 64), linear projections,
    cross dim 1024 (OpenCLIP ViT-H), 96×96 latent."""
    base = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
                num_heads=(5, 10, 20, 20), cross_attention_dim=1024, sample_size=96, use_linear_projection=True,
                cross_qk_gain=1.0)
    base.update(overrides)
    return UNetConfig(**base)


SDXL_DOWN = (PLAIN_DOWN, CROSS_DOWN, CROSS_DOWN)
SDXL_UP = (CROSS_UP, CROSS_UP, PLAIN_UP)
SDXL_TIME_IDS = 6  # original size (h, w), crop top-left (y, x), target size (h, w)


def sdxl_unet_config(**overrides) -> UNetConfig:
    """SDXL base 1.0's UNet: 320/640/1280, DownBlock2D first (no attention at 128²), transformer depth
    (1, 2, 10) (the first entry is unused), heads (5, 10, 20), linear projections, cross dim 2048 (768 + 1280),
    text_time added condition (6 time ids × 256 + pooled 1280 = 2816), 128×128 latent."""
    base = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, norm_num_groups=32, num_heads=(5, 10, 20),
                cross_attention_dim=2048, sample_size=128, transformer_layers_per_block=(1, 2, 10),
                use_linear_projection=True, down_block_types=SDXL_DOWN, up_block_types=SDXL_UP,
                addition_embed_type='text_time', addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=SDXL_TIME_IDS * 256 + 1280, cross_qk_gain=1.0)
    base.update(overrides)
    return UNetConfig(**base)


@contextlib.contextmanager
def meta_device():
    """Modules built inside this block get their parameters on torch's 'meta' device: shapes without storage, so
    a full-size model can be built and its parameters counted at no memory cost."""
    classes = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.Embedding)
    originals = {cls: cls.__init__ for cls in classes}

    def on_meta(original):
        def init(self, *args, **kwargs):
            kwargs.setdefault('device', 'meta')
            original(self, *args, **kwargs)
        return init

    try:
        for cls in classes:
            cls.__init__ = on_meta(originals[cls])
        yield
    finally:
        for cls, original in originals.items():
            cls.__init__ = original


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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
    """x + attn1(norm1 x) (self-attention; absent when self_attention is False), x + attn2(norm2 x, context),
    x + ff(norm3 x)."""

    def __init__(self, dim: int, heads: int, context_dim: int, impl: str, name: str, self_attention: bool = True):
        super().__init__()
        if self_attention:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(dim, None, heads, impl, name + '.attn1')
        self.self_attention = self_attention
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, impl, name + '.attn2')
        self.attn2.is_cross = True
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        if self.self_attention:
            x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class Transformer2DModel(nn.Module):
    """GroupNorm (eps 1e-6), proj_in, `depth` BasicTransformerBlocks, proj_out, residual. proj_in/proj_out are
    1×1 convs on (B, C, H, W) (SD 1.x) or, with `linear`, Linear layers on (B, HW, C) (SD 2.x, SDXL)."""

    def __init__(self, ch: int, heads: int, context_dim: int, groups: int, impl: str, name: str, depth: int = 1,
                 linear: bool = False, self_attention: bool = True):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, ch) if linear else nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(ch, heads, context_dim, impl, f'{name}.transformer_blocks.{k}', self_attention)
             for k in range(depth)])
        self.proj_out = nn.Linear(ch, ch) if linear else nn.Conv2d(ch, ch, 1)

    def forward(self, x, context):
        h = self.project_in(x)
        for blk in self.transformer_blocks:
            h = blk(h, context)
        return self.project_out(h, x)

    def project_in(self, x):
        """(B, C, H, W) → tokens (B, HW, C): norm, proj_in, flatten."""
        b, c, hh, ww = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        return self.proj_in(h) if self.linear else h

    def project_out(self, h, res):
        """tokens (B, HW, C) → (B, C, H, W) (H, W from the block input `res`): proj_out, unflatten, + res."""
        b, c, hh, ww = res.shape
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return (h if self.linear else self.proj_out(h)) + res


# ---------------------------------------------------------------------------------------------------------
# UNet


def _transformer(cfg: UNetConfig, ch: int, heads: int, depth: int, name: str, level: int) -> Transformer2DModel:
    return Transformer2DModel(ch, heads, cfg.cross_attention_dim, cfg.norm_num_groups, cfg.attention_impl, name,
                              depth=depth, linear=cfg.use_linear_projection,
                              self_attention=level not in cfg.no_self_attention_levels)


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (heads given) or DownBlock2D (heads None): resnets[i] (+ attentions[i]), optional
    downsampler."""

    def __init__(self, cfg: UNetConfig, in_ch: int, out_ch: int, temb_ch: int, heads: Optional[int], depth: int,
                 add_down: bool, name: str, level: int):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps)
            for i in range(cfg.layers_per_block)])
        self.attentions = nn.ModuleList([
            _transformer(cfg, out_ch, heads, depth, f'{name}.attentions.{i}', level)
            for i in range(cfg.layers_per_block)]) if heads is not None else None
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
    """CrossAttnUpBlock2D (heads given) / UpBlock2D: layers_per_block + 1 resnets on [x, skip] concatenations."""

    def __init__(self, cfg: UNetConfig, in_ch: int, prev_ch: int, out_ch: int, temb_ch: int, heads: Optional[int],
                 depth: int, add_up: bool, name: str, level: int):
        super().__init__()
        n = cfg.layers_per_block + 1
        res = []
        for i in range(n):
            skip_ch = in_ch if i == n - 1 else out_ch
            res_in = prev_ch if i == 0 else out_ch
            res.append(ResnetBlock2D(res_in + skip_ch, out_ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps))
        self.resnets = nn.ModuleList(res)
        self.attentions = nn.ModuleList([
            _transformer(cfg, out_ch, heads, depth, f'{name}.attentions.{i}', level)
            for i in range(n)]) if heads is not None else None
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

    def __init__(self, cfg: UNetConfig, ch: int, temb_ch: int, heads: int, depth: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps)
                                      for _ in range(2)])
        level = len(cfg.block_out_channels) - 1
        self.attentions = nn.ModuleList([_transformer(cfg, ch, heads, depth, 'mid_block.attentions.0', level)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UNet2DConditionModel(nn.Module):
    """forward(sample (B,4,H,W), timestep (scalar, (1,) or (B,), int or float), encoder_hidden_states (B,L,D)
    [, text_embeds (B,P), time_ids (B,6): SDXL's added conditions]) → noise prediction (B,4,H,W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        boc = cfg.block_out_channels
        n = len(boc)
        heads, depths = cfg.per_block(cfg.num_heads), cfg.per_block(cfg.transformer_layers_per_block)
        down_types, up_types = cfg.block_types()
        temb_ch = boc[0] * 4
        self.conv_in = nn.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb_ch)
        self.add_embedding = None
        if cfg.addition_embed_type == 'text_time':
            self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb_ch)
        elif cfg.addition_embed_type is not None:
            raise ValueError(f'addition_embed_type {cfg.addition_embed_type!r} is not supported (None or text_time)')
        down = []
        out_ch = boc[0]
        for i in range(n):
            in_ch, out_ch = out_ch, boc[i]
            cross = down_types[i] == CROSS_DOWN
            down.append(DownBlock(cfg, in_ch, out_ch, temb_ch, heads[i] if cross else None, depths[i],
                                  add_down=i < n - 1, name=f'down_blocks.{i}', level=i))
        self.down_blocks = nn.ModuleList(down)
        self.mid_block = MidBlock(cfg, boc[-1], temb_ch, heads[-1], depths[-1])
        rev, rev_heads, rev_depths = list(reversed(boc)), heads[::-1], depths[::-1]
        up = []
        out_ch = rev[0]
        for i in range(n):
            prev_ch, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, n - 1)]
            cross = up_types[i] == CROSS_UP
            up.append(UpBlock(cfg, in_ch, prev_ch, out_ch, temb_ch, rev_heads[i] if cross else None, rev_depths[i],
                              add_up=i < n - 1, name=f'up_blocks.{i}', level=n - 1 - i))
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

    def embedding(self, sample, timestep, text_embeds=None, time_ids=None):
        """The time embedding (B, 4·C0), plus SDXL's added-condition embedding."""
        b = sample.shape[0]
        t = timestep.reshape(-1)
        t = t.expand(b) if t.shape[0] == 1 else t
        temb = self.time_embedding(timestep_embedding(t, self.cfg.block_out_channels[0], sample.dtype))
        if self.add_embedding is None:
            return temb
        if text_embeds is None or time_ids is None:
            raise ValueError('this UNet (addition_embed_type text_time) needs text_embeds and time_ids')
        time_embeds = timestep_embedding(time_ids.reshape(-1), self.cfg.addition_time_embed_dim, sample.dtype)
        added = torch.cat([text_embeds.to(sample.dtype), time_embeds.reshape(b, -1)], dim=-1)
        return temb + self.add_embedding(added)

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        temb = self.embedding(sample, timestep, text_embeds, time_ids)
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
        return self.head(x)

    def head(self, x):
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# ---------------------------------------------------------------------------------------------------------
# The UNet forward as a list of stages (for block-wise export of full-size UNets)


@dataclass
class Stage:
    """One piece of UNet2DConditionModel.forward: `module_path`'s `method` applied to the named values `inputs`,
    producing the value `name`. `children` lists the submodules (relative to module_path) whose weights the
    method uses, when not all of them (Transformer2DModel.project_in uses norm and proj_in, not the blocks).
    glue 'concat': the up block concatenates [x, skip] on the channel axis before its resnet (inputs x, skip,
    temb)."""
    name: str
    module_path: str
    method: str
    inputs: Tuple[str, ...]
    children: Optional[Tuple[str, ...]] = None
    glue: Optional[str] = None


def get_module(root: nn.Module, path: str) -> nn.Module:
    for part in filter(None, path.split('.')):
        root = getattr(root, part)
    return root


def unet_stages(unet: 'UNet2DConditionModel') -> List[Stage]:
    """UNet2DConditionModel.forward, stage by stage: the time (+ added-condition) embedding, conv_in, every
    resnet, each Transformer2DModel as project_in / one stage per BasicTransformerBlock / project_out, the
    samplers, and the head. run_stages(unet, ...) equals unet(...) exactly (make_full_size_sdxl_unet.py checks)."""
    stages: List[Stage] = []
    extra = ('text_embeds', 'time_ids') if unet.add_embedding is not None else ()
    stages.append(Stage('temb', '', 'embedding', ('sample', 'timestep') + extra,
                        ('time_embedding',) + (('add_embedding',) if extra else ())))
    stages.append(Stage('conv_in', 'conv_in', 'forward', ('sample',)))

    def simple(path: str, inputs: Tuple[str, ...], glue: Optional[str] = None) -> str:
        stages.append(Stage(path, path, 'forward', inputs, glue=glue))
        return path

    def transformer(path: str, x: str) -> str:
        stages.append(Stage(f'{path}.in', path, 'project_in', (x,), ('norm', 'proj_in')))
        h = f'{path}.in'
        for k in range(len(get_module(unet, path).transformer_blocks)):
            h = simple(f'{path}.transformer_blocks.{k}', (h, 'encoder_hidden_states'))
        stages.append(Stage(path, path, 'project_out', (h, x), ('proj_out',)))
        return path

    x, skips = 'conv_in', ['conv_in']
    for i, blk in enumerate(unet.down_blocks):
        for j in range(len(blk.resnets)):
            x = simple(f'down_blocks.{i}.resnets.{j}', (x, 'temb'))
            if blk.attentions is not None:
                x = transformer(f'down_blocks.{i}.attentions.{j}', x)
            skips.append(x)
        if blk.downsamplers is not None:
            x = simple(f'down_blocks.{i}.downsamplers.0', (x,))
            skips.append(x)
    x = simple('mid_block.resnets.0', (x, 'temb'))
    x = transformer('mid_block.attentions.0', x)
    x = simple('mid_block.resnets.1', (x, 'temb'))
    for i, blk in enumerate(unet.up_blocks):
        for j in range(len(blk.resnets)):
            x = simple(f'up_blocks.{i}.resnets.{j}', (x, skips.pop(), 'temb'), glue='concat')
            if blk.attentions is not None:
                x = transformer(f'up_blocks.{i}.attentions.{j}', x)
        if blk.upsamplers is not None:
            x = simple(f'up_blocks.{i}.upsamplers.0', (x,))
    stages.append(Stage('out_sample', '', 'head', (x,), ('conv_norm_out', 'conv_out')))
    return stages


def apply_glue(stage: Stage, args: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    if stage.glue == 'concat':
        return (torch.cat([args[0], args[1]], dim=1),) + tuple(args[2:])
    return args


def run_stages(unet: 'UNet2DConditionModel', stages: Sequence[Stage], values: dict) -> torch.Tensor:
    """Evaluates the stages in PyTorch on `values` (graph inputs by name); returns out_sample."""
    values = dict(values)
    for st in stages:
        fn = getattr(get_module(unet, st.module_path), st.method)
        values[st.name] = fn(*apply_glue(st, [values[n] for n in st.inputs]))
    return values['out_sample']


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

        if cfg.hidden_act not in ('quick_gelu', 'gelu'):
            raise ValueError(f"hidden_act {cfg.hidden_act!r} is not supported ('quick_gelu' or 'gelu')")
        self.quick = cfg.hidden_act == 'quick_gelu'

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h) if self.quick else F.gelu(h))


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
    """input_ids (B, 77) → (last_hidden_state (B,77,D), pooler_output (B,D) at the first EOT = argmax id).
    `encode` also returns the hidden states (embeddings, then each layer's output, before the final LN), as
    transformers' output_hidden_states=True; SDXL takes hidden_states[-2] (the penultimate layer, no final LN)."""

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

    def encode(self, input_ids) -> dict:
        """dict(last_hidden_state, pooler_output, hidden_states=[num_layers + 1 tensors])."""
        ids = input_ids.to(torch.int64)
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding(self.position_ids)[None]
        mask = self.causal_mask.to(x.dtype)
        hidden_states = [x]
        for layer in self.encoder.layers:
            x = layer(x, mask)
            hidden_states.append(x)
        x = self.final_layer_norm(x)
        eot = ids.argmax(dim=-1)  # the first EOT: its id is the largest, and "!" padding (id 0) never wins
        pooled = x[torch.arange(x.shape[0]), eot]
        return dict(last_hidden_state=x, pooler_output=pooled, hidden_states=hidden_states)

    def forward(self, input_ids):
        out = self.encode(input_ids)
        return out['last_hidden_state'], out['pooler_output']


class CLIPTextModelWithProjection(CLIPTextModel):
    """CLIPTextModel + text_projection (no bias): `text_embeds` = text_projection(pooler_output) (SDXL's second
    encoder; SDXL uses it as the pooled `text_embeds` condition)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__(cfg)
        if cfg.projection_dim is None:
            raise ValueError('CLIPTextModelWithProjection needs projection_dim')
        self.text_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def encode(self, input_ids) -> dict:
        out = super().encode(input_ids)
        out['text_embeds'] = self.text_projection(out['pooler_output'])
        return out


def drop_last_layers_(model: CLIPTextModel, n: int = 1) -> CLIPTextModel:
    """Removes the last n transformer layers, as diffusers' SD 2.x conversion does (OpenCLIP ViT-H has 24; the
    checkpoint keeps 23), so last_hidden_state = final_layer_norm(penultimate layer of the full encoder)."""
    model.encoder.layers = nn.ModuleList(list(model.encoder.layers)[:-n])
    model.cfg = TextEncoderConfig(**{**model.cfg.__dict__, 'num_layers': len(model.encoder.layers)})
    return model


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
