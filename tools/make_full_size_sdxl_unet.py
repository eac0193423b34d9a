#!/usr/bin/python3
"""Exports a full-size SDXL-shaped UNet (random weights) to ONNX with external data, block by block. Not for CI.

    /usr/bin/time -v nice -n 10 /usr/bin/python3 tools/make_full_size_sdxl_unet.py OUT_DIR [--opset 17] [--seed 0]
    /usr/bin/python3 tools/make_full_size_sdxl_unet.py --check                    # plan + parameter count only
    /usr/bin/python3 tools/make_full_size_sdxl_unet.py OUT --channels 32,64,128   # small smoke test, same code path

OUT_DIR/model.onnx + OUT_DIR/model.onnx_data (~10.3 GB, one file, Optimum's naming): sd_modules' UNet with
stabilityai/stable-diffusion-xl-base-1.0's config (320/640/1280, transformer depth (1, 2, 10), heads (5, 10, 20),
linear projections, cross dim 2048, text_time added condition, no attention at 128²). Inputs (Optimum's SDXL
UNet): sample f32 [batch, 4, 128, 128], timestep int64 [steps] (feed [1]), encoder_hidden_states f32
[batch, 77, 2048], text_embeds f32 [batch, 1280], time_ids f32 [batch, 6]; output out_sample [batch, 4, 128, 128].
It has exactly 2,567,463,684 parameters, diffusers' count for SDXL base's UNet (checked before anything is built).

Memory: a whole-model torch.onnx.export would hold the 10.3 GB of weights, the constant-folded (transposed)
copies of every Linear weight (~8 GB more) and the serialised tensors at once, beyond a 24 GB machine. Instead
the UNet is built on the 'meta' device (shapes only, no storage) and exported stage by stage
(sd_modules.unet_stages: the embeddings, conv_in, every resnet, each transformer's project_in / one stage per
BasicTransformerBlock / project_out, the samplers, the head): a stage's weights are materialised with PyTorch's
default init (seeded per stage), the stage is run once at batch 1 for the next stage's example inputs and
exported to a scratch file, its initializers are appended to model.onnx_data (page-aligned) and its nodes to
the merged graph, and its weights go back to 'meta'. Node scopes (/down_blocks.1/attentions.0/...) and
parameter names are those of a whole-model export. See tools/README.md for the expected peak RSS.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_modules as sm  # noqa: E402

SDXL_PARAMETERS = 2_567_463_684  # stabilityai/stable-diffusion-xl-base-1.0 unet, as diffusers counts it
GRAPH_INPUTS = ('sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids')
ALIGN = 4096  # page alignment of each external tensor, so onnxruntime can mmap it
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside model.onnx (onnx's default threshold)


# ---------------------------------------------------------------------------------------------------------
# Mounting one stage so its ONNX scopes read as in the whole model


class _Holder(nn.Module):
    """Stands for a ModuleList of the UNet (never called itself)."""


class _Through(nn.Module):
    """Stands for a module the UNet calls on the way to a stage's target (down_blocks.1, attentions.0, ...): it
    forwards to its child, so the target's ops get the scope they have in a whole-model export. With glue it
    also does the op its original does before the call (an up block's concatenation of [x, skip])."""

    def __init__(self, child: str, stage: Optional[sm.Stage] = None):
        super().__init__()
        self.child, self.stage = child, stage

    def forward(self, *args):
        if self.stage is not None:
            args = sm.apply_glue(self.stage, args)
        return sm.get_module(self, self.child)(*args)


def _segments(path: str) -> List[str]:
    """'down_blocks.1.attentions.0.transformer_blocks.3' → ['down_blocks.1', 'attentions.0',
    'transformer_blocks.3']: the modules the UNet's forward calls on the way (ModuleList + index)."""
    parts, out = path.split('.'), []
    for p in parts:
        if p.isdigit():
            out[-1] += '.' + p
        else:
            out.append(p)
    return out


def _place(holder: nn.Module, segment: str, module: nn.Module) -> None:
    if '.' in segment:
        name, index = segment.split('.')
        if not hasattr(holder, name):
            holder.add_module(name, _Holder())
        getattr(holder, name).add_module(index, module)
    else:
        holder.add_module(segment, module)


def _proxy(module: nn.Module, children: Optional[Sequence[str]]) -> nn.Module:
    """`module` itself, or a shallow copy holding only `children` (the rest of its weights stay unused)."""
    if children is None:
        return module
    proxy = nn.Module.__new__(type(module))
    proxy.__dict__.update(module.__dict__)
    proxy._modules = {k: v for k, v in module._modules.items() if k in children}
    proxy._parameters = dict(module._parameters)
    return proxy


def mount(unet: sm.UNet2DConditionModel, stage: sm.Stage) -> nn.Module:
    """A module whose forward is the stage, with the UNet's scope names; its parameters are the stage's."""
    target = _proxy(sm.get_module(unet, stage.module_path), stage.children)
    if stage.method != 'forward':
        target.forward = getattr(target, stage.method)  # called through __call__, so its scope is entered
    segments = _segments(stage.module_path) if stage.module_path else []
    if not segments:
        return target
    root = _Through(segments[0])
    holder = root
    for k, seg in enumerate(segments):
        last = k == len(segments) - 1
        module = target if last else _Through(segments[k + 1], stage if k == 0 and stage.glue else None)
        _place(holder, seg, module)
        holder = module
    return root


def stage_modules(unet: sm.UNet2DConditionModel, stage: sm.Stage) -> List[tuple]:
    """(qualified name, module) of the modules whose weights the stage uses."""
    base = sm.get_module(unet, stage.module_path)
    prefix = stage.module_path + '.' if stage.module_path else ''
    if stage.children is None:
        return [(stage.module_path, base)]
    return [(prefix + c, getattr(base, c)) for c in stage.children]


def materialize(modules: List[tuple], seed: int) -> Dict[str, int]:
    """Real storage + PyTorch's default init (seeded); returns {parameter name: numel}."""
    torch.manual_seed(seed)
    counts = {}
    for name, mod in modules:
        mod.to_empty(device='cpu')
        for sub in mod.modules():
            if hasattr(sub, 'reset_parameters'):
                sub.reset_parameters()
        for pname, p in mod.named_parameters():
            p.requires_grad_(False)
            counts[f'{name}.{pname}'] = p.numel()
    return counts


def release(modules: List[tuple]) -> None:
    for _, mod in modules:
        mod.to_empty(device='meta')


# ---------------------------------------------------------------------------------------------------------
# Merging the stage graphs into one model with one external data file


class Merger:
    def __init__(self, out_dir: str, location: str = 'model.onnx_data'):
        import onnx
        self.onnx = onnx
        self.location = location
        self.data = open(os.path.join(out_dir, location), 'wb')
        self.offset = 0
        self.nodes, self.initializers = [], []
        self.inputs: Dict[str, object] = {}
        self.output = None
        self.value_names, self.node_names = set(GRAPH_INPUTS), set()
        self.opset, self.ir_version = None, None

    def _unique(self, name: str, used: set, tag: str) -> str:
        new, k = name, 0
        while new in used:
            k += 1
            new = f'{name}__{tag}{k}'
        used.add(new)
        return new

    def _externalize(self, tensor) -> None:
        raw = tensor.raw_data
        if len(raw) < EXTERNAL_MIN_BYTES:
            return
        pad = (-self.offset) % ALIGN
        self.data.write(b'\0' * pad)
        self.offset += pad
        self.data.write(raw)
        tensor.ClearField('raw_data')
        tensor.data_location = self.onnx.TensorProto.EXTERNAL
        for key, value in (('location', self.location), ('offset', str(self.offset)), ('length', str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(raw)

    def add(self, path: str, stage: sm.Stage, tag: str) -> None:
        """Appends the stage graph at `path`; its inputs/output keep their names (the stage's value names)."""
        model = self.onnx.load(path)
        g = model.graph
        self.opset = self.opset or [(o.domain, o.version) for o in model.opset_import]
        self.ir_version = self.ir_version or model.ir_version
        keep = set(stage.inputs) | {stage.name}
        rename = {}
        for t in g.initializer:
            rename[t.name] = self._unique(t.name, self.value_names, tag)
        for n in g.node:
            for o in n.output:
                if o and o not in keep:
                    rename[o] = self._unique(o, self.value_names, tag)
        self.value_names.add(stage.name)
        for t in g.initializer:
            t.name = rename[t.name]
            self._externalize(t)
            self.initializers.append(t)
        for n in g.node:
            n.name = self._unique(n.name, self.node_names, tag) if n.name else n.name
            for field in (n.input, n.output):
                for i, v in enumerate(field):
                    field[i] = rename.get(v, v)
            self.nodes.append(n)
        for v in g.input:
            if v.name in GRAPH_INPUTS and v.name not in self.inputs:
                self.inputs[v.name] = v
        if stage.name == 'out_sample':
            self.output = g.output[0]

    def save(self, out_dir: str) -> str:
        helper = self.onnx.helper
        self.data.close()
        graph = helper.make_graph(self.nodes, 'sdxl_unet', [self.inputs[n] for n in GRAPH_INPUTS if n in self.inputs],
                                  [self.output], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opset],
                                  producer_name='divbind-native tools/make_full_size_sdxl_unet.py')
        model.ir_version = self.ir_version
        path = os.path.join(out_dir, 'model.onnx')
        self.onnx.save(model, path)
        return path


# ---------------------------------------------------------------------------------------------------------


def sdxl_config(args) -> sm.UNetConfig:
    over = {}
    if args.channels:
        over['block_out_channels'] = tuple(int(c) for c in args.channels.split(','))
        over['norm_num_groups'] = min(32, min(over['block_out_channels']))
    if args.depths:
        over['transformer_layers_per_block'] = tuple(int(c) for c in args.depths.split(','))
    if args.heads:
        over['num_heads'] = tuple(int(c) for c in args.heads.split(','))
    return sm.sdxl_unet_config(**over)


def check_plan() -> None:
    """The stage plan reproduces UNet2DConditionModel.forward exactly (small SDXL and SD 1.5 layouts)."""
    torch.manual_seed(0)
    for cfg in (sm.sdxl_unet_config(block_out_channels=(8, 16, 24), norm_num_groups=4, num_heads=(1, 2, 3),
                                    transformer_layers_per_block=(1, 2, 3), cross_attention_dim=16,
                                    addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8),
                sm.sd15_unet_config(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, num_heads=2,
                                    cross_attention_dim=16)):
        unet = sm.UNet2DConditionModel(cfg).eval()
        values = dict(sample=torch.randn(2, 4, 16, 16), timestep=torch.tensor([981]),
                      encoder_hidden_states=torch.randn(2, 77, 16))
        if cfg.addition_embed_type:
            values.update(text_embeds=torch.randn(2, 8), time_ids=torch.tensor([[1024., 1024, 0, 0, 1024, 1024]] * 2))
        with torch.no_grad():
            ref = unet(**values)
            staged = sm.run_stages(unet, sm.unet_stages(unet), values)
        if not torch.equal(ref, staged):
            raise SystemExit('sd_modules.unet_stages does not reproduce UNet2DConditionModel.forward')
    print('stage plan == UNet forward (small SDXL and SD 1.5 layouts): OK', flush=True)


def example_inputs(cfg: sm.UNetConfig) -> dict:
    g = torch.Generator().manual_seed(1)
    s = cfg.sample_size
    return dict(sample=torch.randn(1, 4, s, s, generator=g), timestep=torch.tensor([981], dtype=torch.int64),
                encoder_hidden_states=torch.randn(1, 77, cfg.cross_attention_dim, generator=g),
                text_embeds=torch.randn(1, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim,
                                        generator=g),
                time_ids=torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]))


def last_uses(stages: Sequence[sm.Stage]) -> Dict[str, int]:
    last = {}
    for k, st in enumerate(stages):
        for n in st.inputs:
            last[n] = k
    return last


def export(args, unet: sm.UNet2DConditionModel, expected: int) -> None:
    stages = sm.unet_stages(unet)
    values = example_inputs(unet.cfg)
    last = last_uses(stages)
    os.makedirs(args.out_dir, exist_ok=True)
    merger = Merger(args.out_dir)
    materialized: Dict[str, int] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix='sdxl-stage-', dir=args.out_dir) as scratch:
        for k, st in enumerate(stages):
            mods = stage_modules(unet, st)
            counts = materialize(mods, args.seed * 100_003 + k)
            overlap = materialized.keys() & counts.keys()
            if overlap:
                raise SystemExit(f'stage {st.name}: parameters exported twice: {sorted(overlap)[:3]}')
            materialized.update(counts)
            root = mount(unet, st).eval()
            inputs = tuple(values[n] for n in st.inputs)
            with torch.no_grad():
                values[st.name] = root(*inputs)
                path = os.path.join(scratch, f'{k:03d}.onnx')
                axes = {n: {0: 'steps' if n == 'timestep' else 'batch'} for n in (*st.inputs, st.name)}
                torch.onnx.export(root, inputs, path, input_names=list(st.inputs), output_names=[st.name],
                                  dynamic_axes=axes, opset_version=args.opset, do_constant_folding=True)
            release(mods)
            merger.add(path, st, f's{k}')
            os.remove(path)
            for n in st.inputs:  # free example activations nobody needs any more
                if last[n] == k and n not in GRAPH_INPUTS:
                    del values[n]
            print(f'[{time.time() - t0:7.1f}s] {k + 1}/{len(stages)} {st.name}: '
                  f'{sum(counts.values()):,} parameters, data {merger.offset / 2**30:.2f} GiB', flush=True)
    n = sum(materialized.values())
    if n != expected:
        raise SystemExit(f'stages exported {n:,} parameters, the model has {expected:,}')
    path = merger.save(args.out_dir)
    import onnx
    onnx.checker.check_model(path)
    out = values['out_sample']
    print(f'wrote {path} ({os.path.getsize(path):,} B) + model.onnx_data ({merger.offset:,} B) in '
          f'{time.time() - t0:.1f}s; batch-1 PyTorch output |max| {out.abs().max():.3f} (finite: '
          f'{bool(torch.isfinite(out).all())})')
    # The batch-1 inputs and the PyTorch output of the stage pass, for a runtime check of the export.
    import numpy as np
    ex = os.path.join(args.out_dir, 'example')
    os.makedirs(ex, exist_ok=True)
    for name, value in example_inputs(unet.cfg).items():
        np.save(os.path.join(ex, f'{name}.npy'), value.numpy())
    np.save(os.path.join(ex, 'out_sample.npy'), out.numpy())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('out_dir', nargs='?')
    ap.add_argument('--opset', type=int, default=17)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--check', action='store_true', help='check the stage plan and the parameter count only')
    ap.add_argument('--channels', help='block_out_channels (e.g. 32,64,128: a small smoke test of the same code)')
    ap.add_argument('--depths', help='transformer_layers_per_block (e.g. 1,2,2)')
    ap.add_argument('--heads', help='heads per block (e.g. 1,2,4)')
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    check_plan()
    cfg = sdxl_config(args)
    with sm.meta_device():
        unet = sm.UNet2DConditionModel(cfg).eval()
    n = sm.parameter_count(unet)
    print(f'SDXL UNet: {n:,} parameters ({n * 4 / 2**30:.2f} GiB fp32), built on the meta device', flush=True)
    full = not (args.channels or args.depths or args.heads)
    if full and n != SDXL_PARAMETERS:
        # The count is an independent check that sd_modules reproduces SDXL's layout exactly.
        raise SystemExit(f'expected {SDXL_PARAMETERS:,} parameters (diffusers SDXL base UNet), got {n:,}')
    if args.check:
        return
    if not args.out_dir:
        ap.error('OUT_DIR is required unless --check')
    export(args, unet, n)


if __name__ == '__main__':
    main()
