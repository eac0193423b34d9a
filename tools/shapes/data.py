"""The Shapes world: batched, anti-aliased 64×64 scenes of 1-3 coloured shapes with captions and ground truth.

Everything is generated on the training device with torch, so the data pipeline costs far less than a training
step. A scene is drawn as:
  * a background: mid grey (so that both the white and the black shape stay visible) with a light random tint
    and linear gradient;
  * 1-3 objects, each a shape (circle, square, triangle) in one of 8 well-separated named colours, with a random
    size and a position chosen among random candidates to keep the objects apart (little or no overlap);
  * coverage from a signed distance in pixels, clamped to [0, 1] over a one-pixel band: the anti-aliasing.

Captions follow the pattern of the prompt sets: "a red circle", "a red circle and a blue square",
"a yellow circle, a blue square and a red triangle". With probability `p_uncoloured` a caption leaves out all
colour words ("a circle and a square"; repeated shapes may then be counted: "two circles and a square"), so the
model also learns the colour-free prompts; with `p_empty` it is the empty caption (classifier-free guidance
dropout). The object order in a caption is random, independent of
the position in the image.

Ground truth per object: shape index, colour index, box (x0, y0, x1, y1) in pixels (inclusive-exclusive, the
covered area at coverage ≥ 0.5), and whether it is named with its colour in the caption.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import clip_bpe  # noqa: E402  (tools/clip_bpe.py)

SIZE = 64
SHAPES: Tuple[str, ...] = ('circle', 'square', 'triangle')
# Named colours, chosen far apart in RGB and hue so that a palette-nearest detector separates them; the grey
# background (≈ 128) is at least ~95 away from each in RGB distance.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (220, 30, 30),
    'green': (30, 170, 50),
    'blue': (30, 70, 230),
    'yellow': (245, 225, 30),
    'purple': (150, 40, 190),
    'orange': (250, 140, 20),
    'white': (250, 250, 250),
    'black': (15, 15, 15),
}
COLOUR_NAMES: Tuple[str, ...] = tuple(COLOURS)
BACKGROUND = (128, 128, 128)
PLURALS: Tuple[str, ...] = tuple(s + 's' for s in SHAPES)
COUNT_WORDS: Tuple[str, ...] = ('two', 'three')
WORDS: Tuple[str, ...] = ('a', 'an', 'and', ',') + COLOUR_NAMES + SHAPES + PLURALS + COUNT_WORDS
MAX_OBJECTS = 3
# Half-size range in pixels (radius of the circle, half side of the square, circumradius-ish for the triangle).
MIN_R, MAX_R = 8.0, 13.0


PHRASE_SEPARATORS: Tuple[str, ...] = ('and', ',')


def separator_ids(tokenizer: 'clip_bpe.ClipTokenizer') -> List[int]:
    """Token ids that start a new object phrase in the text encoder's attention mask (model.ShapesTextEncoder)."""
    return [tokenizer.encode(w)[0] for w in PHRASE_SEPARATORS]


def caption_words() -> List[str]:
    """The caption vocabulary, for learning the BPE merges (each word becomes one token)."""
    return list(WORDS)


def learn_tokenizer() -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    merges = clip_bpe.learn_merges(caption_words())
    return clip_bpe.build_vocab(merges), merges


def article(word: str) -> str:
    return 'an' if word[0] in 'aeiou' else 'a'


def caption(objects: Sequence[Tuple[int, int]], coloured: bool) -> str:
    """objects: (shape index, colour index) in caption order."""
    parts = [f'{article(COLOUR_NAMES[c])} {COLOUR_NAMES[c]} {SHAPES[s]}' if coloured else f'a {SHAPES[s]}'
             for s, c in objects]
    return join_parts(parts)


def counted_caption(shapes: Sequence[int]) -> str:
    """Colour-free caption with repeated shapes counted, in order of first mention: (0, 1, 0) → "two circles and a
    square". Scenes have distinct colours, so only colour-free captions can name a count."""
    order: List[int] = []
    for s in shapes:
        if s not in order:
            order.append(s)
    parts = []
    for s in order:
        n = sum(1 for x in shapes if x == s)
        parts.append(f'a {SHAPES[s]}' if n == 1 else f'{COUNT_WORDS[n - 2]} {PLURALS[s]}')
    return join_parts(parts)


def join_parts(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return f'{parts[0]} and {parts[1]}'
    return ', '.join(parts[:-1]) + ' and ' + parts[-1]


@dataclass
class Batch:
    images: torch.Tensor      # (B, 3, 64, 64) float in [-1, 1]
    input_ids: torch.Tensor   # (B, 77) int64
    count: torch.Tensor       # (B,) objects in the scene
    shape: torch.Tensor       # (B, 3) shape index, −1 when absent
    colour: torch.Tensor      # (B, 3) colour index, −1 when absent
    box: torch.Tensor         # (B, 3, 4) x0, y0, x1, y1 in pixels
    captions: Optional[List[str]] = None


class ShapesWorld:
    """Draws batches on `device`. Token ids are assembled from a word → id table (every caption word is a single
    BPE token by construction; checked at start-up against the real tokenizer)."""

    def __init__(self, device: torch.device | str = 'cpu', p_empty: float = 0.1, p_uncoloured: float = 0.2,
                 count_probs: Sequence[float] = (0.3, 0.4, 0.3)):
        if not 0 <= p_empty < 1 or not 0 <= p_uncoloured <= 1:
            raise ValueError('p_empty must be in [0, 1) and p_uncoloured in [0, 1]')
        if len(count_probs) != MAX_OBJECTS or abs(sum(count_probs) - 1) > 1e-6:
            raise ValueError(f'count_probs must have {MAX_OBJECTS} entries summing to 1')
        self.device = torch.device(device)
        self.p_empty = p_empty
        self.p_uncoloured = p_uncoloured
        self.count_probs = torch.tensor(list(count_probs), dtype=torch.float32)
        vocab, merges = learn_tokenizer()
        self.vocab, self.merges = vocab, merges
        self.tokenizer = clip_bpe.ClipTokenizer(vocab, merges)
        self.word_id = {}
        for w in WORDS:
            ids = self.tokenizer.encode(w)
            if len(ids) != 1:
                raise AssertionError(f'caption word {w!r} is not a single token: {ids}')
            self.word_id[w] = ids[0]
        self.palette = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=torch.float32,
                                    device=self.device) / 127.5 - 1.0
        ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32, device=self.device) + 0.5,
                                torch.arange(SIZE, dtype=torch.float32, device=self.device) + 0.5, indexing='ij')
        self.xs, self.ys = xs, ys

    # -- layout ------------------------------------------------------------------------------------------

    def _layout(self, b: int, n: torch.Tensor, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """Centres (B, 3, 2) and half-sizes (B, 3). Each object takes the best of 24 random candidates: the one
        with the largest clearance to the objects placed before it (distance between centres minus radii)."""
        dev = self.device
        r = MIN_R + (MAX_R - MIN_R) * torch.rand(b, MAX_OBJECTS, generator=g, device=dev)
        # Fewer objects may be larger; three must be smaller to fit.
        r = r * (1.0 - 0.15 * (n[:, None] == 3).to(r.dtype))  # no scalar tensors: each would be a blocking copy
        centres = torch.zeros(b, MAX_OBJECTS, 2, device=dev)
        k = 24
        for j in range(MAX_OBJECTS):
            margin = r[:, j:j + 1] + 1.0
            cand = margin[..., None] + torch.rand(b, k, 2, generator=g, device=dev) * (SIZE - 2 * margin[..., None])
            if j == 0:
                centres[:, 0] = cand[:, 0]
                continue
            d = torch.linalg.norm(cand[:, :, None, :] - centres[:, None, :j, :], dim=-1)  # (B, k, j)
            clearance = (d - r[:, None, j:j + 1] - r[:, None, :j]).min(dim=-1).values
            best = clearance.argmax(dim=1)
            centres[:, j] = cand[torch.arange(b, device=dev), best]
        return centres, r

    # -- rendering ---------------------------------------------------------------------------------------

    def _coverage(self, shape: torch.Tensor, centre: torch.Tensor, r: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """Anti-aliased coverage (B, 64, 64) of one object per scene: clamp(0.5 − signed distance, 0, 1)."""
        dx = self.xs[None] - centre[:, 0, None, None]
        dy = self.ys[None] - centre[:, 1, None, None]
        rr = r[:, None, None]
        circle = torch.sqrt(dx * dx + dy * dy) - rr
        # Squares and triangles get a small random rotation (±15°) so the detector cannot rely on axis alignment.
        c, s = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
        ux, uy = c * dx + s * dy, -s * dx + c * dy
        square = torch.maximum(ux.abs(), uy.abs()) - rr * 0.9
        # Equilateral triangle pointing up with circumradius 1.2 r: inradius 0.6 r, three half-planes.
        tri = None
        for k in range(3):
            a = -math.pi / 2 + k * 2 * math.pi / 3 + math.pi  # outward normals of the edges opposite the vertices
            h = ux * math.cos(a) + uy * math.sin(a) - 0.6 * rr
            tri = h if tri is None else torch.maximum(tri, h)
        sd = torch.where(shape[:, None, None] == 0, circle, torch.where(shape[:, None, None] == 1, square, tri))
        return (0.5 - sd).clamp(0.0, 1.0)

    def sample(self, b: int, g: torch.Generator, cg: torch.Generator, with_captions: bool = False,
               with_boxes: bool = True) -> Batch:
        """g: generator on the device (geometry, colours of the background); cg: CPU generator for the discrete
        choices (count, shapes, colours, caption form), which the captions need on the host anyway. Drawing them
        on the host keeps the GPU queue free of device→host synchronisations."""
        dev = self.device
        n_c = torch.multinomial(self.count_probs, b, replacement=True, generator=cg) + 1
        shape_c = torch.randint(0, len(SHAPES), (b, MAX_OBJECTS), generator=cg)
        # Distinct colours within a scene keep "every object with its colour" unambiguous for the benchmark.
        colour_c = torch.rand(b, len(COLOUR_NAMES), generator=cg).argsort(dim=1)[:, :MAX_OBJECTS]
        ids, caps = self._captions(n_c, shape_c, colour_c, cg, with_captions)
        n, shape, colour, ids = (_to(t, dev) for t in (n_c, shape_c, colour_c, ids))
        present = torch.arange(MAX_OBJECTS, device=dev)[None] < n[:, None]
        centres, r = self._layout(b, n, g)
        rot = (torch.rand(b, MAX_OBJECTS, generator=g, device=dev) - 0.5) * (math.pi / 6)
        # Background: grey ± a light tint and a gentle linear gradient.
        tint = (torch.rand(b, 3, 1, 1, generator=g, device=dev) - 0.5) * 0.12
        grad = (torch.rand(b, 2, 1, 1, generator=g, device=dev) - 0.5) * 0.15
        bg = BACKGROUND[0] / 127.5 - 1.0
        img = bg + tint + grad[:, :1] * (self.xs / SIZE - 0.5)[None, None] + grad[:, 1:] * (self.ys / SIZE - 0.5)[None, None]
        img = img.expand(b, 3, SIZE, SIZE).clone()
        box = torch.zeros(b, MAX_OBJECTS, 4, device=dev)
        for j in range(MAX_OBJECTS):
            cov = self._coverage(shape[:, j], centres[:, j], r[:, j], rot[:, j]) * present[:, j, None, None]
            col = self.palette[colour[:, j]][:, :, None, None]
            img = img * (1 - cov[:, None]) + col * cov[:, None]
            if not with_boxes:  # training does not need them
                continue
            inside = cov >= 0.5
            anyx, anyy = inside.any(dim=1), inside.any(dim=2)  # (B, 64) over columns / rows
            idx = torch.arange(SIZE, device=dev)[None].expand(b, SIZE)
            big = torch.full_like(idx, SIZE)
            box[:, j, 0] = torch.where(anyx, idx, big).min(dim=1).values
            box[:, j, 2] = torch.where(anyx, idx + 1, torch.zeros_like(idx)).max(dim=1).values
            box[:, j, 1] = torch.where(anyy, idx, big).min(dim=1).values
            box[:, j, 3] = torch.where(anyy, idx + 1, torch.zeros_like(idx)).max(dim=1).values
        shape = torch.where(present, shape, torch.full_like(shape, -1))
        colour = torch.where(present, colour, torch.full_like(colour, -1))
        return Batch(images=img.clamp(-1, 1), input_ids=ids, count=n, shape=shape, colour=colour, box=box,
                     captions=caps)

    # -- captions ----------------------------------------------------------------------------------------

    def _captions(self, n: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor, cg: torch.Generator,
                  with_text: bool) -> Tuple[torch.Tensor, Optional[List[str]]]:
        b = n.shape[0]
        # Random caption order, empty / uncoloured captions: drawn on the CPU (tiny), ids assembled in Python.
        order = torch.rand(b, MAX_OBJECTS, generator=cg).argsort(dim=1).tolist()
        u = torch.rand(b, 2, generator=cg).tolist()
        n_l, s_l, c_l = n.tolist(), shape.tolist(), colour.tolist()
        w = self.word_id
        sot, eot = self.tokenizer.sot, self.tokenizer.eot
        rows, texts = [], []
        for i in range(b):
            if u[i][0] < self.p_empty:
                objs, coloured = [], False
            else:
                objs = [(s_l[i][j], c_l[i][j]) for j in order[i] if j < n_l[i]]
                coloured = u[i][1] >= self.p_uncoloured
            ids = [sot]
            for k, (s, c) in enumerate(objs):
                if k > 0:
                    ids.append(w['and'] if k == len(objs) - 1 else w[','])
                if coloured:
                    ids.append(w[article(COLOUR_NAMES[c])])
                    ids.append(w[COLOUR_NAMES[c]])
                else:
                    ids.append(w['a'])
                ids.append(w[SHAPES[s]])
            ids.append(eot)
            rows.append(ids + [eot] * (clip_bpe.MAX_LENGTH - len(ids)))
            if with_text:
                texts.append(caption(objs, coloured) if objs else '')
        return torch.tensor(rows, dtype=torch.int64), (texts if with_text else None)


def _to(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    if dev.type == 'cuda':
        return t.pin_memory().to(dev, non_blocking=True)  # pinned: the copy does not wait for queued kernels
    return t.to(dev)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8, rounding like the TS pipeline ((x + 1) · 127.5)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
