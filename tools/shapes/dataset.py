"""Training data for shapes-sd, made once and cached so that a training step costs only the UNet:

  * scenes: rendered once by data.ShapesWorld (uint8 images + per-object shape/colour labels);
  * latents: the scenes encoded once by the frozen autoencoder, standardised, stored as float16;
  * captions: every caption of the grammar ("a red circle", "two circles and a square", "", …) encoded once by
    the frozen text encoder. A training sample picks a caption *variant* of its scene at random each time it is
    drawn (object order; with or without colour words; colour-free captions count repeated shapes half of the
    time; or empty, for classifier-free guidance), so a scene is seen with several captions across the run.

Scenes have distinct colours, so coloured captions never repeat a colour and only colour-free captions count.
"""
from __future__ import annotations

import itertools
from typing import Dict, List

import torch

import data as D



def all_captions() -> List[str]:
    """Every caption the training can draw: empty, colour-free (listed and counted), coloured (distinct colours)."""
    out = {''}
    shapes = range(len(D.SHAPES))
    objs_c = [(s, c) for s in shapes for c in range(len(D.COLOUR_NAMES))]
    for n in range(1, D.MAX_OBJECTS + 1):
        for seq in itertools.product(shapes, repeat=n):
            out.add(D.caption([(s, 0) for s in seq], coloured=False))
            out.add(D.counted_caption(seq))
        for combo in itertools.product(objs_c, repeat=n):
            if len({c for _, c in combo}) == n:
                out.add(D.caption(combo, coloured=True))
    return sorted(out)


class CaptionTable:
    """Caption → row of a (K, 77, D) tensor of frozen text-encoder outputs."""

    def __init__(self, world: D.ShapesWorld, text_encoder: torch.nn.Module, rank: int = 0, workers: int = 1,
                 gather=None, batch: int = 256):
        """With several workers each encodes a share of the captions and `gather(part) → [parts of all ranks]`
        (torch.distributed.all_gather) assembles the table on every worker."""
        self.keys = all_captions()
        self.index: Dict[str, int] = {k: i for i, k in enumerate(self.keys)}
        self.ids = torch.tensor([world.tokenizer(k) for k in self.keys], dtype=torch.int64)
        share = -(-len(self.keys) // workers)
        mine = self.ids[rank * share:(rank + 1) * share]
        mine = torch.cat([mine, mine[:1].expand(share - mine.shape[0], -1)])  # equal shares for all_gather
        with torch.no_grad():
            part = torch.cat([text_encoder.hidden(mine[i:i + batch]) for i in range(0, share, batch)])
        parts = gather(part) if workers > 1 else [part]
        self.context = torch.cat(parts)[:len(self.keys)].contiguous()

    def sample(self, count: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor, g: torch.Generator,
               p_empty: float, p_uncoloured: float) -> torch.Tensor:
        """One random caption variant per scene → (B,) row indices into `context`."""
        b = count.shape[0]
        order = torch.rand(b, D.MAX_OBJECTS, generator=g).argsort(dim=1).tolist()
        u = torch.rand(b, 3, generator=g).tolist()
        n_l, s_l, c_l = count.tolist(), shape.tolist(), colour.tolist()
        rows = []
        for i in range(b):
            objs = [(s_l[i][j], c_l[i][j]) for j in order[i] if j < n_l[i]]
            if u[i][0] < p_empty:
                text = ''
            elif u[i][1] >= p_uncoloured:
                text = D.caption(objs, coloured=True)
            elif u[i][2] < 0.5:
                text = D.counted_caption([sh for sh, _ in objs])
            else:
                text = D.caption(objs, coloured=False)
            rows.append(self.index[text])
        return torch.tensor(rows, dtype=torch.int64)


class SceneSet:
    """n rendered scenes: images (n, 3, 64, 64) uint8 and labels (count (n,), shape/colour (n, 3), −1 = absent)."""

    def __init__(self, images: torch.Tensor, count: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor):
        self.images, self.count, self.shape, self.colour = images, count, shape, colour

    def __len__(self) -> int:
        return self.images.shape[0]

    @staticmethod
    def render(world: D.ShapesWorld, n: int, seed: int, chunk: int = 256, progress=None) -> 'SceneSet':
        g = torch.Generator().manual_seed(seed)
        cg = torch.Generator().manual_seed(seed + 1)
        parts: List[D.Batch] = []
        done = 0
        while done < n:
            b = world.sample(min(chunk, n - done), g, cg, with_boxes=False)
            b.images = ((b.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            parts.append(b)
            done += b.images.shape[0]
            if progress:
                progress(done, n)
        return SceneSet(torch.cat([p.images for p in parts]), torch.cat([p.count for p in parts]).to(torch.int8),
                        torch.cat([p.shape for p in parts]).to(torch.int8),
                        torch.cat([p.colour for p in parts]).to(torch.int8))

    def float_images(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx].to(torch.float32) / 127.5 - 1.0

    def state(self) -> Dict[str, torch.Tensor]:
        return {'images': self.images, 'count': self.count, 'shape': self.shape, 'colour': self.colour}

    @staticmethod
    def from_state(st: Dict[str, torch.Tensor]) -> 'SceneSet':
        return SceneSet(st['images'], st['count'], st['shape'], st['colour'])


def encode_latents(encode, scenes: SceneSet, chunk: int = 256, progress=None) -> torch.Tensor:
    """encode: float images (B, 3, 64, 64) → standardised latents (B, 4, 16, 16); stored as float16."""
    out = []
    with torch.no_grad():
        for i in range(0, len(scenes), chunk):
            idx = torch.arange(i, min(i + chunk, len(scenes)))
            out.append(encode(scenes.float_images(idx)).to(torch.float16))
            if progress:
                progress(min(i + chunk, len(scenes)), len(scenes))
    return torch.cat(out)

