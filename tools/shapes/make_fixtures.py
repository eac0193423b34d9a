"""Ground-truth scenes for the detector test: renders N scenes with tools/shapes/data.py (the training
distribution) into test/fixtures/shapes/scenes.png (a grid of 64×64 tiles, row-major) and scenes.json
(per tile: caption, objects with shape, colour and box).

Usage: python3 tools/shapes/make_fixtures.py [--n 240] [--cols 16] [--seed 2026] [--out test/fixtures/shapes]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data as D  # noqa: E402
import pngio  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=240)
    ap.add_argument('--cols', type=int, default=16)
    ap.add_argument('--seed', type=int, default=2026)
    ap.add_argument('--out', default=os.path.join(REPO, 'test', 'fixtures', 'shapes'))
    a = ap.parse_args()
    world = D.ShapesWorld('cpu', p_empty=0.0, p_uncoloured=0.0)
    b = world.sample(a.n, torch.Generator().manual_seed(a.seed), torch.Generator().manual_seed(a.seed + 1),
                     with_captions=True)
    u8 = D.to_uint8(b.images)
    rows = (a.n + a.cols - 1) // a.cols
    grid = torch.zeros(rows * D.SIZE, a.cols * D.SIZE, 3, dtype=torch.uint8)
    scenes = []
    for i in range(a.n):
        r, c = divmod(i, a.cols)
        grid[r * D.SIZE:(r + 1) * D.SIZE, c * D.SIZE:(c + 1) * D.SIZE] = u8[i]
        objs = [{'shape': D.SHAPES[int(b.shape[i, j])], 'colour': D.COLOUR_NAMES[int(b.colour[i, j])],
                 'box': [int(v) for v in b.box[i, j].tolist()]} for j in range(int(b.count[i]))]
        scenes.append({'tile': i, 'caption': b.captions[i], 'objects': objs})
    os.makedirs(a.out, exist_ok=True)
    pngio.write_png(os.path.join(a.out, 'scenes.png'), grid)
    with open(os.path.join(a.out, 'scenes.json'), 'w') as f:
        json.dump({'generator': 'tools/shapes/make_fixtures.py', 'seed': a.seed, 'tile': D.SIZE, 'cols': a.cols,
                   'count': a.n, 'scenes': scenes}, f, indent=1)
    print(f'{a.n} scenes, {sum(len(s["objects"]) for s in scenes)} objects -> {a.out}')


if __name__ == '__main__':
    main()
