#!/usr/bin/python3
"""Exports a full-size SD 1.5-shaped UNet (random weights) to ONNX with external data. Not used by CI.

    /usr/bin/time -v /usr/bin/python3 tools/make_full_size_unet.py OUT_DIR [--opset 17] [--seed 0]

OUT_DIR/model.onnx + OUT_DIR/model.onnx_data (~3.4 GB, one file, Optimum's naming). Same modules as the tiny
reference models (tools/sd_modules.py) with the SD 1.5 config: block_out_channels 320/640/1280/1280, 2 layers
per block, 8 heads, cross_attention_dim 768, 64×64 latent; inputs sample f32 [batch,4,64,64], timestep int64 [1],
encoder_hidden_states f32 [batch,77,768]; output out_sample.

Memory: the weights exist once in torch (no gradients); torch.onnx.export writes every tensor of a > 2 GB
model to its own file in a scratch folder, and the files are then streamed into model.onnx_data one by one,
so the ONNX weights are never loaded into memory.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_modules as sm  # noqa: E402


SD15_CHANNELS = (320, 640, 1280, 1280)
SD15_PARAMETERS = 859_520_964  # runwayml/stable-diffusion-v1-5 unet, as diffusers counts it


def collate_external_data(src_model: str, src_dir: str, out_dir: str, location: str = 'model.onnx_data') -> None:
    """Rewrites src_model so all external tensors live in out_dir/location, copying the bytes in chunks."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo
    model = onnx.load(src_model, load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        # Under 2 GB torch embeds the weights; move them out (only small models reach this branch).
        model = onnx.load(src_model)
        onnx.save_model(model, os.path.join(out_dir, 'model.onnx'), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=location, size_threshold=1024)
        return
    data_path = os.path.join(out_dir, location)
    offset = 0
    with open(data_path, 'wb') as out:
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = ExternalDataInfo(tensor)
            src = os.path.join(src_dir, info.location)
            pad = (-offset) % 4096  # page alignment, so ORT can mmap
            out.write(b'\0' * pad)
            offset += pad
            with open(src, 'rb') as f:
                if info.offset:
                    f.seek(info.offset)
                remaining = info.length if info.length else os.path.getsize(src) - (info.offset or 0)
                length = remaining
                while remaining > 0:
                    chunk = f.read(min(remaining, 64 << 20))
                    out.write(chunk)
                    remaining -= len(chunk)
            os.remove(src)  # free scratch space as we go
            # (onnx's set_external_data insists on raw_data, which an externally stored tensor lacks.)
            del tensor.external_data[:]
            for key, value in (('location', location), ('offset', str(offset)), ('length', str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += length
    onnx.save(model, os.path.join(out_dir, 'model.onnx'))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('out_dir')
    ap.add_argument('--opset', type=int, default=17)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--channels', default='320,640,1280,1280',
                    help='block_out_channels (smaller values give a quick smoke test of the same code path)')
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        channels = tuple(int(c) for c in args.channels.split(','))
        unet = sm.UNet2DConditionModel(sm.sd15_unet_config(block_out_channels=channels)).eval()
        for p in unet.parameters():
            p.requires_grad_(False)
    n = sum(p.numel() for p in unet.parameters())
    print(f'built: {n:,} parameters ({n * 4 / 2**30:.2f} GiB fp32) in {time.time() - t0:.1f}s', flush=True)
    if channels == SD15_CHANNELS and n != SD15_PARAMETERS:
        # The count is an independent check that sd_modules reproduces SD 1.5's layout exactly.
        raise SystemExit(f'expected {SD15_PARAMETERS:,} parameters (diffusers SD 1.5 UNet), got {n:,}')
    sample = torch.randn(1, 4, 64, 64)
    ehs = torch.randn(1, 77, 768)
    ts = torch.tensor([981], dtype=torch.int64)
    scratch = tempfile.mkdtemp(prefix='unet-export-', dir=args.out_dir)
    try:
        t1 = time.time()
        with torch.no_grad():
            torch.onnx.export(unet, (sample, ts, ehs), os.path.join(scratch, 'model.onnx'),
                              input_names=['sample', 'timestep', 'encoder_hidden_states'], output_names=['out_sample'],
                              dynamic_axes={'sample': {0: 'batch'}, 'encoder_hidden_states': {0: 'batch'},
                                            'out_sample': {0: 'batch'}},
                              opset_version=args.opset, do_constant_folding=True)
        print(f'exported in {time.time() - t1:.1f}s', flush=True)
        del unet
        t2 = time.time()
        collate_external_data(os.path.join(scratch, 'model.onnx'), scratch, args.out_dir)
        print(f'collated external data in {time.time() - t2:.1f}s', flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    size = os.path.getsize(os.path.join(args.out_dir, 'model.onnx_data'))
    print(f'wrote {args.out_dir}/model.onnx ({os.path.getsize(os.path.join(args.out_dir, "model.onnx")):,} B) + '
          f'model.onnx_data ({size:,} B) in {time.time() - t0:.1f}s total')


if __name__ == '__main__':
    main()
