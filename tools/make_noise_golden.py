"""Writes test/fixtures/noise/: torch.randn draws from the CPU generator, for a bit-exact TS port of
PyTorch's CPU mt19937 + normal sampling.

    /usr/bin/python3 tools/make_noise_golden.py

Each draw is torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)) on the CPU; the
script asserts it is bit-identical to torch.manual_seed(seed); torch.randn(shape, dtype=dtype) (the default
generator). PyTorch's CPU normal_ takes two code paths: tensors with fewer than 16 elements draw element by
element, tensors with >= 16 elements are filled 16 at a time by Box-Muller from uniforms (the last partial
block is redrawn over the final 16 elements). Shapes below and above 16 (and non-multiples of 16) cover both.

The float32 >= 16 path has a vectorised AVX2 twin (float32 SLEEF log/sin/cos) whose results differ from the
scalar path in the last bits, so the draws are made twice, in subprocesses with ATEN_CPU_CAPABILITY=avx2
(what torch.randn gives by default on x86 machines with AVX2 or AVX-512: `file`) and =default (the scalar
code: `fileDefault`). index.json: { version, generator, torch, nativeCapability, draws: [ { seed, shape, dtype,
file, fileDefault, sameAcrossCapabilities } ], sequences: [ { seed, draws: [ { shape, dtype, file,
fileDefault } ] } ] }.
A sequence draws several tensors one after another from ONE generator (checks how far each draw advances the
mt19937 state). Files are little-endian .npy in the stated dtype, under default/ and avx2/.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

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


def worker(folder: str) -> None:
    """Writes every draw into OUT/<folder>/ with the CPU capability this process was started with; prints the
    entries as JSON on stdout."""
    torch.set_num_threads(2)
    out = os.path.join(OUT, folder)
    os.makedirs(out, exist_ok=True)
    draws, sequences = [], []
    jobs = [(seed, shape, 'float32') for seed in SEEDS for shape in SHAPES]
    jobs += [(seed, shape, 'float64') for seed, shape in FLOAT64]
    for seed, shape, dtype in jobs:
        values = draw(seed, shape, dtype)
        file = f'{folder}/randn_seed{seed}_{shape_tag(shape)}_{dtype}.npy'
        np.save(os.path.join(OUT, file), values)
        draws.append(dict(seed=seed, shape=list(shape), dtype=dtype, file=file))
    for seed, items in SEQUENCES:
        gen = torch.Generator().manual_seed(seed)
        entries = []
        for i, (shape, dtype) in enumerate(items):
            values = torch.randn(shape, dtype=DTYPES[dtype], generator=gen).numpy()
            file = f'{folder}/sequence_seed{seed}_{i}_{shape_tag(shape)}_{dtype}.npy'
            np.save(os.path.join(OUT, file), values)
            entries.append(dict(shape=list(shape), dtype=dtype, file=file))
        # The first draw of a sequence must equal the fresh-generator draw of the same shape.
        assert np.array_equal(np.load(os.path.join(OUT, entries[0]['file'])), draw(seed, items[0][0], items[0][1]))
        sequences.append(dict(seed=seed, draws=entries))
    print(json.dumps(dict(draws=draws, sequences=sequences, capability=torch.__config__.show())))


def run_worker(capability: str) -> dict:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', capability], env=env,
                          check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    usage = result.pop('capability').split('CPU capability usage:')[1].split('\n')[0].strip()
    expected = dict(default='NO AVX', avx2='AVX2')[capability]
    assert usage == expected, f'ATEN_CPU_CAPABILITY={capability} ran with {usage!r}'
    return result


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    scalar = run_worker('default')
    avx2 = run_worker('avx2')
    torch.set_num_threads(2)
    native = torch.__config__.show().split('CPU capability usage:')[1].split('\n')[0].strip()
    index = dict(version=1, generator='tools/make_noise_golden.py', torch=torch.__version__,
                 nativeCapability=native, draws=[], sequences=[])
    differ = 0
    for a, b in zip(scalar['draws'], avx2['draws']):
        same = bool(np.array_equal(np.load(os.path.join(OUT, a['file'])), np.load(os.path.join(OUT, b['file']))))
        differ += not same
        index['draws'].append(dict(b, fileDefault=a['file'], sameAcrossCapabilities=same))
        # This process's own capability must reproduce one of the two.
        mine = draw(a['seed'], tuple(a['shape']), a['dtype'])
        assert np.array_equal(mine, np.load(os.path.join(OUT, b['file'] if native != 'NO AVX' else a['file'])))
    for sa, sb in zip(scalar['sequences'], avx2['sequences']):
        index['sequences'].append(dict(seed=sa['seed'], draws=[dict(b, fileDefault=a['file'])
                                                               for a, b in zip(sa['draws'], sb['draws'])]))
    with open(os.path.join(OUT, 'index.json'), 'w') as fh:
        json.dump(index, fh, indent=1)
        fh.write('\n')
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {len(index['draws'])} draws + {len(index['sequences'])} sequence(s) x 2 capabilities to "
          f'{os.path.relpath(OUT, ROOT)} ({total / 1e6:.2f} MB); {differ} draws differ between scalar and AVX2; '
          f'this machine runs {native}')


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--worker':
        worker(sys.argv[2])
    else:
        main()
