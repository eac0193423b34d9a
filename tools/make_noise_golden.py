"""Writes test/fixtures/noise/: torch.randn draws from the CPU generator, for a bit-exact TS port of
PyTorch's CPU mt19937 + normal sampling.

    /usr/bin/python3 tools/make_noise_golden.py

Each draw is torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)) on the CPU; the
script asserts it is bit-identical to torch.manual_seed(seed); torch.randn(shape, dtype=dtype) (the default
generator). PyTorch's CPU normal_ takes two code paths: tensors with fewer than 16 elements draw element by
element, tensors with >= 16 elements are filled 16 at a time by Box-Muller from uniforms (the last partial
block is redrawn over the final 16 elements). Shapes below and above 16 (and non-multiples of 16) cover both.

index.json: { version, generator, torch, draws: [ { seed, shape, dtype, file } ], sequences: [ { seed,
draws: [ { shape, dtype, file } ] } ] }. A sequence draws several tensors one after another from ONE generator
(checks how far each draw advances the mt19937 state). Files are little-endian .npy in the stated dtype.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'test', 'fixtures', 'noise')

SEEDS = [0, 42, 6141, 2 ** 32 + 5]
SHAPES = [(1, 4, 64, 64), (2, 4, 32, 32), (1, 4, 8, 8), (7,), (15,), (16,), (17,), (33,)]
FLOAT64 = [(0, (7,)), (42, (1, 4, 8, 8)), (6141, (17,))]
SEQUENCES = [(42, [((7,), 'float32'), ((1, 4, 8, 8), 'float32'), ((17,), 'float32'), ((5,), 'float64'),
                   ((2, 4, 4), 'float32')])]
DTYPES = dict(float32=torch.float32, float64=torch.float64)


def shape_tag(shape) -> str:
    return 'x'.join(str(s) for s in shape)


def draw(seed: int, shape, dtype: str) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    explicit = torch.randn(shape, dtype=DTYPES[dtype], generator=gen)
    torch.manual_seed(seed)
    default = torch.randn(shape, dtype=DTYPES[dtype])
    assert torch.equal(explicit, default), f'seed {seed} shape {shape}: explicit and default generators differ'
    return explicit.numpy()


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name.endswith('.npy') or name == 'index.json':
            os.remove(os.path.join(OUT, name))
    index = dict(version=1, generator='tools/make_noise_golden.py', torch=torch.__version__, draws=[], sequences=[])
    jobs = [(seed, shape, 'float32') for seed in SEEDS for shape in SHAPES]
    jobs += [(seed, shape, 'float64') for seed, shape in FLOAT64]
    for seed, shape, dtype in jobs:
        values = draw(seed, shape, dtype)
        file = f'randn_seed{seed}_{shape_tag(shape)}_{dtype}.npy'
        np.save(os.path.join(OUT, file), values)
        index['draws'].append(dict(seed=seed, shape=list(shape), dtype=dtype, file=file))
        print(f'{file}: first {values.reshape(-1)[:3].tolist()}')
    for seed, items in SEQUENCES:
        gen = torch.Generator().manual_seed(seed)
        entries = []
        for i, (shape, dtype) in enumerate(items):
            values = torch.randn(shape, dtype=DTYPES[dtype], generator=gen).numpy()
            file = f'sequence_seed{seed}_{i}_{shape_tag(shape)}_{dtype}.npy'
            np.save(os.path.join(OUT, file), values)
            entries.append(dict(shape=list(shape), dtype=dtype, file=file))
        index['sequences'].append(dict(seed=seed, draws=entries))
        # The first draw of a sequence must equal the fresh-generator draw of the same shape.
        assert np.array_equal(np.load(os.path.join(OUT, entries[0]['file'])), draw(seed, items[0][0], items[0][1]))
    with open(os.path.join(OUT, 'index.json'), 'w') as fh:
        json.dump(index, fh, indent=1)
        fh.write('\n')
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(index['draws'])} draws + {len(index['sequences'])} sequence(s) to "
          f'{os.path.relpath(OUT, ROOT)} ({total / 1e6:.2f} MB)')


if __name__ == '__main__':
    main()
