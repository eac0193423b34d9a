"""Dependency-free PNG output (RGB8) and a loss-curve plot: matplotlib when installed, else a small rasteriser,
so every training run leaves a loss.png (the Debian CPU image here has no matplotlib)."""
from __future__ import annotations

import math
import struct
import zlib
from typing import Dict, List, Sequence

import torch


def write_png(path: str, rgb) -> None:
    """rgb: (H, W, 3) uint8 torch tensor or numpy array."""
    t = torch.as_tensor(rgb)
    if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != 3:
        raise ValueError(f'write_png expects (H, W, 3) uint8, got {tuple(t.shape)} {t.dtype}')
    h, w, _ = t.shape
    data = t.contiguous().numpy().tobytes()
    raw = b''.join(b'\x00' + data[y * w * 3:(y + 1) * w * 3] for y in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + tag + body + struct.pack('>I', zlib.crc32(tag + body) & 0xffffffff)

    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
                + chunk(b'IDAT', zlib.compress(raw, 9)) + chunk(b'IEND', b''))


def _smooth(ys: Sequence[float], k: int = 5) -> List[float]:
    out = []
    for i in range(len(ys)):
        lo = max(0, i - k + 1)
        out.append(sum(ys[lo:i + 1]) / (i + 1 - lo))
    return out


def plot_losses(path: str, curves: Dict[str, list]) -> None:
    ae = [(r[0], r[1]) for r in curves.get('ae', [])]
    un = [(r[0], r[1]) for r in curves.get('unet', [])]
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, pts, title in ((axes[0], ae, 'autoencoder (MSE + 0.5 L1)'), (axes[1], un, 'UNet ε-MSE')):
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=0.8, alpha=0.5)
                ax.plot(xs, _smooth(ys), lw=1.5)
            ax.set_yscale('log')
            ax.set_xlabel('step')
            ax.set_title(title)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    except Exception:  # noqa: BLE001 - no (working) matplotlib: draw it ourselves
        pass
    # Fallback: two panels of 320×200, log-scale y, white background, raw curve blue, smoothed red.
    W, H, P = 320, 200, 10
    img = torch.full((H, 2 * W, 3), 255, dtype=torch.uint8)
    for panel, pts in enumerate((ae, un)):
        x0 = panel * W
        img[P:H - P, x0 + P] = 0
        img[H - P, x0 + P:x0 + W - P] = 0
        pts = [(x, y) for x, y in pts if y > 0 and math.isfinite(y)]
        if len(pts) < 1:
            continue
        xs = [p[0] for p in pts]
        ys = [math.log10(p[1]) for p in pts]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1e-3
        xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        for series, colour in ((ys, (90, 120, 230)), (_smooth(ys), (220, 40, 40))):
            prev = None
            for x, y in zip(xs, series):
                px = x0 + P + 1 + int((x - xmin) / (xmax - xmin) * (W - 2 * P - 2))
                py = H - P - 1 - int((y - lo) / (hi - lo) * (H - 2 * P - 2))
                if prev is not None:
                    n = max(abs(px - prev[0]), abs(py - prev[1]), 1)
                    for k in range(n + 1):
                        img[prev[1] + (py - prev[1]) * k // n, prev[0] + (px - prev[0]) * k // n] = torch.tensor(colour, dtype=torch.uint8)
                prev = (px, py)
    write_png(path, img)
