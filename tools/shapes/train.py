"""Train shapes-sd on a CPU within a wall-clock budget, resumable: scenes → autoencoder → latent cache → UNet.

Phases (one run may stop and resume in any of them; the budget counts wall time over all runs):
  1. scenes   render N scenes of the Shapes world (data.py), split between the worker processes;
  2. ae       train the autoencoder (MSE + 0.5·L1, noise on the latent), then measure the latent statistics;
  3. latents  encode every scene once with the frozen encoder (standardised, float16), cache them on disk;
  4. unet     ε-prediction DDPM with SD 1.5's noise schedule and min-SNR-5 loss weights; the text encoder is
              frozen (its outputs for every caption of the grammar are cached, dataset.py), 10 % empty captions
              for classifier-free guidance, 20 % captions without colour words. AdamW, warm-up, cosine decay over
              the wall-clock budget, EMA of the weights (what export.py exports).

Speed: on 2 CPU cores, two single-threaded worker processes (torch.distributed, gloo) that average their
gradients beat one process with two threads by ~2× (torch 1.13 spends much of a step in per-op threading
overhead at these sizes). Both workers hold identical weights; rank 0 writes checkpoints and logs. Stop and
learning-rate decisions travel with the gradient all-reduce, so the workers never disagree.

Files in --out: ckpt-ae.pt, ckpt-unet.pt, ckpt-ema.pt, ckpt-optim.pt (each ≤ 16 MB), latents-r<k>.pt (cache,
regenerable), loss.json, loss.png, samples.png, train.log.

Usage: python3 tools/shapes/train.py --out DIR --minutes 150 [--procs 2] [--scenes 120000] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import data as D  # noqa: E402
import dataset as DS  # noqa: E402
import model as M  # noqa: E402
import pngio  # noqa: E402

PREVIEW_PROMPTS = [
    'a red circle', 'a blue square', 'a green triangle', 'a yellow circle',
    'a red circle and a blue square', 'a purple triangle and an orange circle', 'a white square and a black circle',
    'a green square and a yellow triangle',
    'a circle and a square', 'a triangle and a circle', 'a square and a triangle', 'a circle, a square and a triangle',
    'a red circle, a blue square and a yellow triangle', 'a white triangle, a green circle and a purple square',
    'an orange square, a black triangle and a blue circle', '',
]
MIN_SNR_GAMMA = 5.0


class Log:
    def __init__(self, path: Optional[str]):
        self.f = open(path, 'a', buffering=1) if path else None

    def __call__(self, msg: str) -> None:
        if self.f is None:
            return
        line = f'[{time.strftime("%H:%M:%S")}] {msg}'
        print(line, flush=True)
        self.f.write(line + '\n')


def save_atomic(obj, path: str) -> None:
    tmp = path + '.tmp'
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: str):
    return torch.load(path, map_location='cpu')


def cpu_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to('cpu', torch.float32).clone() for k, v in module.state_dict().items()}


class Worker:
    """One training process. With world == 1 it is the whole trainer."""

    def __init__(self, args, rank: int, world: int):
        self.args, self.rank, self.world = args, rank, world
        self.t_run = time.time()
        self.log = Log(os.path.join(args.out, 'train.log') if rank == 0 else None)
        torch.set_num_threads(args.threads)
        self.world_gen = D.ShapesWorld('cpu')
        self.cfg = M.default_config()
        torch.manual_seed(args.seed)  # default inits of every module below: identical on every worker
        self.te, self.unet, self.ae = M.build(self.cfg, len(self.world_gen.vocab), self.world_gen.tokenizer.eot, D.separator_ids(self.world_gen.tokenizer))
        M.sm.init_text_encoder_(self.te, args.seed + 1)
        self.te.requires_grad_(False)
        self.ema = M.build(self.cfg, len(self.world_gen.vocab), self.world_gen.tokenizer.eot, D.separator_ids(self.world_gen.tokenizer))[1]
        self.ema.load_state_dict(self.unet.state_dict())
        self.ema.requires_grad_(False)
        self.ae_opt = torch.optim.AdamW(self.ae.parameters(), lr=args.ae_lr)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
        self.alphas_cumprod = M.sd15_alphas_cumprod()
        self.state = {'phase': 'scenes', 'ae_step': 0, 'unet_step': 0, 'elapsed_s': 0.0, 'runs': 0,
                      'samples_seen': 0, 'unet_s': 0.0}
        self.curves: Dict[str, list] = {'ae': [], 'unet': []}
        self.resume()
        self.state['runs'] += 1
        self.budget_end = self.t_run + args.minutes * 60.0 - self.state['elapsed_s']
        counts = {k: M.param_count(m) for k, m in (('text_encoder', self.te), ('unet', self.unet),
                                                   ('vae_encoder', self.ae.encoder), ('vae_decoder', self.ae.decoder))}
        self.log(f'torch {torch.__version__}, {world} worker(s) × {args.threads} thread(s), batch {args.batch} per '
                 f'worker, params {counts}, budget {args.minutes} min ({self.state["elapsed_s"] / 60:.1f} used)')

    # -- collective helpers ------------------------------------------------------------------------------

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def all_gather(self, t: torch.Tensor) -> List[torch.Tensor]:
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return parts

    def from_rank0(self, value: float) -> float:
        """A decision rank 0 makes (time is up, the learning rate) reaches every worker unchanged."""
        return float(self.all_sum(torch.tensor([value if self.rank == 0 else 0.0], dtype=torch.float64))[0])

    def elapsed(self) -> float:
        return self.state['elapsed_s'] + time.time() - self.t_run

    # -- checkpoints -------------------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.args.out, name)

    def meta(self) -> Dict:
        return {'config': self.cfg, 'merges': self.world_gen.merges, 'vocab_size': len(self.world_gen.vocab),
                'torch': torch.__version__, 'batch': self.args.batch * self.world, 'seed': self.args.seed,
                'recipe': {k: v for k, v in vars(self.args).items() if k not in ('out',)}}

    def save(self) -> None:
        """Rank 0 writes; the state records the wall time used so far, so a resumed run keeps the budget."""
        if self.rank != 0:
            return
        st = dict(self.state, elapsed_s=self.elapsed())
        save_atomic({'model': cpu_state(self.ae), 'optimizer': self.ae_opt.state_dict(), **self.meta()},
                    self.path('ckpt-ae.pt'))
        save_atomic({'text_encoder': cpu_state(self.te), 'unet': cpu_state(self.unet), 'state': st,
                     'curves': self.curves, **self.meta()}, self.path('ckpt-unet.pt'))
        save_atomic({'text_encoder': cpu_state(self.te), 'unet': cpu_state(self.ema), 'state': st, **self.meta()},
                    self.path('ckpt-ema.pt'))
        sd = self.opt.state_dict()
        small = {'state': {i: {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.numel() > 1 else v)
                               for k, v in s.items()} for i, s in sd['state'].items()},
                 'param_groups': sd['param_groups']}
        save_atomic({'optimizer': small}, self.path('ckpt-optim.pt'))

    def resume(self) -> None:
        if self.args.fresh or not os.path.exists(self.path('ckpt-unet.pt')):
            return
        u = load(self.path('ckpt-unet.pt'))
        self.te.load_state_dict(u['text_encoder'])
        self.unet.load_state_dict(u['unet'])
        self.state.update(u['state'])
        self.curves = u['curves']
        a = load(self.path('ckpt-ae.pt'))
        self.ae.load_state_dict(a['model'])
        self.ae_opt.load_state_dict(a['optimizer'])
        self.ema.load_state_dict(load(self.path('ckpt-ema.pt'))['unet'])
        o = load(self.path('ckpt-optim.pt'))['optimizer']
        for s in o['state'].values():
            for k, v in s.items():
                if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1:
                    s[k] = v.float()
        self.opt.load_state_dict(o)
        self.log(f'resumed from {self.args.out}: {self.state}')

    # -- phases ------------------------------------------------------------------------------------------

    def scenes(self) -> DS.SceneSet:
        n = self.args.scenes // self.world
        t0 = time.time()
        s = DS.SceneSet.render(self.world_gen, n, seed=self.args.seed * 1000 + self.rank)
        self.log(f'rendered {n} scenes per worker in {time.time() - t0:.0f} s')
        return s

    def ae_loss(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z = self.ae.encoder(x)
        # Noise on the latent makes the decoder tolerant of the small errors of sampled latents.
        zn = z + 0.1 * z.detach().std() * torch.randn(z.shape, generator=g)
        y = self.ae.decoder(zn)
        return F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x) + 1e-4 * z.pow(2).mean()

    def train_ae(self, scenes: DS.SceneSet) -> None:
        a = self.args
        g = torch.Generator().manual_seed(a.seed * 7919 + self.rank + 31 * self.state['ae_step'])
        deadline = self.t_run + a.ae_minutes * 60.0
        params = list(self.ae.parameters())
        acc, n_acc, t0 = 0.0, 0, time.time()
        while True:
            step = self.state['ae_step']
            stop = self.from_rank0(float(time.time() > deadline or step >= a.ae_max_steps))
            if stop > 0:
                break
            x = scenes.float_images(torch.randint(0, len(scenes), (a.batch,), generator=g))
            loss = self.ae_loss(x, g)
            self.ae_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.average_grads(params)
            self.ae_opt.step()
            self.state['ae_step'] += 1
            acc, n_acc = acc + float(loss), n_acc + 1
            if self.state['ae_step'] % a.log_every == 0:
                self.curves['ae'].append([self.state['ae_step'], acc / n_acc])
                self.log(f'ae step {self.state["ae_step"]} loss {acc / n_acc:.5f} '
                         f'{n_acc * a.batch * self.world / (time.time() - t0):.0f} images/s')
                acc, n_acc, t0 = 0.0, 0, time.time()
        self.latent_statistics(scenes)

    def latent_statistics(self, scenes: DS.SceneSet) -> None:
        """Per-channel mean/std of the encoder output over (up to) 1024 scenes per worker, pooled over workers;
        UNet latents are (z − mean) / std. Also the reconstruction MSE on those scenes."""
        self.ae.eval()
        idx = torch.arange(min(1024, len(scenes)))
        with torch.no_grad():
            x = scenes.float_images(idx)
            z = torch.cat([self.ae.encoder(x[i:i + 256]) for i in range(0, len(x), 256)])
            y = torch.cat([self.ae.decoder(z[i:i + 256]) for i in range(0, len(z), 256)])
        sums = torch.cat([z.sum(dim=(0, 2, 3)), z.pow(2).sum(dim=(0, 2, 3)),
                          torch.tensor([z.numel() / 4, F.mse_loss(y, x, reduction='sum'), x.numel()])]).double()
        sums = self.all_sum(sums)
        n = sums[8]
        mean = sums[:4] / n
        std = (sums[4:8] / n - mean ** 2).clamp_min(1e-12).sqrt()
        self.ae.latent_mean.copy_(mean.float())
        self.ae.latent_std.copy_(std.float())
        mse = float(sums[9] / sums[10])
        self.state['ae_eval_mse'] = mse
        self.log(f'ae done: {self.state["ae_step"]} steps, reconstruction MSE {mse:.5f} '
                 f'(PSNR {10 * math.log10(4 / mse):.1f} dB), latent mean {mean.tolist()} std {std.tolist()}')

    def encode(self, scenes: DS.SceneSet) -> Dict[str, torch.Tensor]:
        t0 = time.time()
        lat = DS.encode_latents(lambda x: self.ae.normalise(self.ae.encoder(x)), scenes)
        cache = {'latents': lat, 'count': scenes.count, 'shape': scenes.shape, 'colour': scenes.colour}
        save_atomic(cache, self.path(f'latents-r{self.rank}.pt'))
        self.log(f'encoded {len(scenes)} scenes per worker in {time.time() - t0:.0f} s')
        return cache

    def load_latents(self) -> Dict[str, torch.Tensor]:
        """This worker's share of the cached latents; a run resumed with fewer workers than wrote the cache takes
        the shares of the missing ranks too (rank r of w takes the files k ≡ r mod w)."""
        files = sorted((f for f in os.listdir(self.args.out) if f.startswith('latents-r') and f.endswith('.pt')),
                       key=lambda f: int(f[len('latents-r'):-3]))
        mine = [load(self.path(f)) for f in files if int(f[len('latents-r'):-3]) % self.world == self.rank]
        self.log(f'latent cache: {len(mine)} file(s) per worker, {sum(c["latents"].shape[0] for c in mine)} scenes')
        return {k: torch.cat([c[k] for c in mine]) for k in mine[0]}

    def average_grads(self, params: List[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))
            off += n

    def lr_at(self, frac: float, step: int) -> float:
        warm = min(1.0, (step + 1) / self.args.warmup)
        return self.args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac)))))

    def unet_loss(self, cache, table: DS.CaptionTable, g: torch.Generator) -> torch.Tensor:
        a = self.args
        idx = torch.randint(0, cache['latents'].shape[0], (a.batch,), generator=g)
        x0 = cache['latents'][idx].float()
        rows = table.sample(cache['count'][idx], cache['shape'][idx], cache['colour'][idx], g,
                            a.p_empty, a.p_uncoloured)
        ctx = table.context[rows]
        t = torch.randint(0, 1000, (a.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        ac = self.alphas_cumprod[t]
        xt = ac.sqrt()[:, None, None, None] * x0 + (1 - ac).sqrt()[:, None, None, None] * noise
        pred = self.unet(xt, t, ctx)
        snr = ac / (1 - ac)
        weight = snr.clamp(max=MIN_SNR_GAMMA) / snr  # min-SNR-γ for ε-prediction
        return (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()

    def train_unet(self, cache) -> None:
        a = self.args
        M.use_fast_attention(self.unet)
        table = DS.CaptionTable(self.world_gen, self.te, self.rank, self.world, self.all_gather)
        params = list(self.unet.parameters())
        ema_params = list(self.ema.parameters())
        g = torch.Generator().manual_seed(a.seed * 104729 + self.rank * 7 + 13 * self.state['unet_step'])
        work_end = self.budget_end - a.reserve
        t_phase_start = time.time()
        phase_budget = max(1.0, work_end - t_phase_start + self.state['unet_s'])
        acc, n_acc, t_log, t_ckpt = 0.0, 0, time.time(), time.time()
        self.log(f'phase unet: {len(table.keys)} cached captions, until t+{(work_end - self.t_run) / 60:.1f} min of this run')
        while True:
            step = self.state['unet_step']
            frac = (self.state['unet_s'] + time.time() - t_phase_start) / phase_budget
            lr = self.from_rank0(-1.0 if time.time() > work_end else self.lr_at(frac, step))
            if lr < 0:
                break
            for grp in self.opt.param_groups:
                grp['lr'] = lr
            loss = self.unet_loss(cache, table, g)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.average_grads(params)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.opt.step()
            if self.rank == 0:
                decay = min(a.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_mul_(ema_params, decay)
                    torch._foreach_add_(ema_params, params, alpha=1 - decay)
            self.state['unet_step'] += 1
            self.state['samples_seen'] += a.batch * self.world
            acc, n_acc = acc + float(loss), n_acc + 1
            if self.state['unet_step'] % a.log_every == 0:
                rate = n_acc * a.batch * self.world / (time.time() - t_log)
                self.curves['unet'].append([self.state['unet_step'], acc / n_acc, lr, round(self.elapsed(), 1),
                                            round(rate, 1)])
                self.log(f'unet step {self.state["unet_step"]} loss {acc / n_acc:.5f} lr {lr:.2e} '
                         f'{rate:.0f} samples/s, {self.state["samples_seen"]} samples, t+{self.elapsed() / 60:.1f} min')
                acc, n_acc, t_log = 0.0, 0, time.time()
            if time.time() - t_ckpt > a.ckpt_every * 60:
                self.state['unet_s'] += time.time() - t_phase_start
                t_phase_start = time.time()
                self.save()
                t_ckpt = time.time()
                self.log(f'checkpoint at unet step {self.state["unet_step"]}')
        self.state['unet_s'] += time.time() - t_phase_start
        M.use_fast_attention(self.unet, False)

    # -- main ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        if self.state['phase'] in ('scenes', 'ae'):
            scenes = self.scenes()
            self.state['phase'] = 'ae'
            self.train_ae(scenes)
            self.state['phase'] = 'latents'
            self.save()
        if self.state['phase'] == 'latents' or not os.path.exists(self.path(f'latents-r{self.rank}.pt')):
            if self.state['phase'] != 'latents':
                self.log('latent cache missing: re-rendering and re-encoding this worker\'s scenes')
            cache = self.encode(self.scenes())
            self.state['phase'] = 'unet'
            self.save()
        else:
            cache = self.load_latents()
        self.train_unet(cache)
        self.save()
        if self.rank == 0:
            self.finish()

    def finish(self) -> None:
        a = self.args
        self.log(f'unet done: {self.state["unet_step"]} steps, {self.state["samples_seen"]} samples, '
                 f'{self.state["samples_seen"] / max(1.0, self.state["unet_s"]):.0f} samples/s over the UNet phase, '
                 f'total wall time {self.elapsed() / 60:.1f} min')
        with open(self.path('loss.json'), 'w') as f:
            json.dump({'curves': self.curves, 'state': self.state, 'config': self.cfg,
                       'columns': {'ae': ['step', 'loss'],
                                   'unet': ['step', 'loss', 'lr', 'elapsed_s', 'samples_per_s']}}, f)
        try:
            pngio.plot_losses(self.path('loss.png'), self.curves)
        except Exception as exc:  # noqa: BLE001 - the checkpoints are safe; a plot must not fail the run
            self.log(f'loss plot failed: {exc!r}')
        if not a.no_preview:
            preview(self.ema, self.te, self.ae, self.world_gen, self.alphas_cumprod, self.path('samples.png'), self.log)


@torch.no_grad()
def preview(unet, te, ae, world: D.ShapesWorld, alphas_cumprod, path: str, log, steps: int = 25,
            guidance: float = 5.0) -> None:
    """DDIM (η = 0) with CFG on the EMA weights: a quick look at what the model draws (4 per row)."""
    unet.eval()
    tok = world.tokenizer
    ids = torch.tensor([tok(p) for p in PREVIEW_PROMPTS] + [tok('')], dtype=torch.int64)
    ctx = te.hidden(ids)
    n = len(PREVIEW_PROMPTS)
    cond, uncond = ctx[:-1], ctx[-1:].expand(n, -1, -1)
    x = torch.randn(n, 4, M.LATENT_SIZE, M.LATENT_SIZE, generator=torch.Generator().manual_seed(1234))
    ts = torch.linspace(999, 0, steps).round().long().tolist()
    for i, t in enumerate(ts):
        eps = unet(torch.cat([x, x]), torch.full((2 * n,), t, dtype=torch.int64), torch.cat([cond, uncond]))
        e_c, e_u = eps.chunk(2)
        e = e_u + guidance * (e_c - e_u)
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    u8 = D.to_uint8(ae.decoder(ae.denormalise(x)))
    rows = (n + 3) // 4
    grid = torch.full((rows * 66, 4 * 66, 3), 255, dtype=torch.uint8)
    for k in range(n):
        r, c = divmod(k, 4)
        grid[r * 66 + 1:r * 66 + 65, c * 66 + 1:c * 66 + 65] = u8[k]
    pngio.write_png(path, grid)
    log(f'preview {path} ({steps} DDIM steps, CFG {guidance}): ' + '; '.join(
        f'({k // 4},{k % 4}) {p!r}' for k, p in enumerate(PREVIEW_PROMPTS)))


def worker_main(rank: int, world: int, args, port: int) -> None:
    if world > 1:
        os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'] = '127.0.0.1', str(port)
        dist.init_process_group('gloo', rank=rank, world_size=world)
    random.seed(args.seed + rank)
    Worker(args, rank, world).run()
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def parse_args(argv: Optional[List[str]] = None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', required=True, help='checkpoint + log folder (a rerun resumes from it)')
    ap.add_argument('--minutes', type=float, default=150.0, help='total wall-clock budget over all runs')
    ap.add_argument('--procs', type=int, default=2, help='worker processes (one per core)')
    ap.add_argument('--threads', type=int, default=1, help='torch threads per worker')
    ap.add_argument('--scenes', type=int, default=120_000, help='scenes rendered and cached (all workers)')
    ap.add_argument('--batch', type=int, default=32, help='batch per worker')
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--warmup', type=int, default=500)
    ap.add_argument('--ae-lr', type=float, default=2e-3)
    ap.add_argument('--ae-minutes', type=float, default=10.0, help='autoencoder phase, counted from the run start')
    ap.add_argument('--ae-max-steps', type=int, default=100_000)
    ap.add_argument('--p-empty', type=float, default=0.1)
    ap.add_argument('--p-uncoloured', type=float, default=0.2)
    ap.add_argument('--ema', type=float, default=0.999)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--log-every', type=int, default=50)
    ap.add_argument('--ckpt-every', type=float, default=4.0, help='minutes between checkpoints')
    ap.add_argument('--reserve', type=float, default=60.0, help='seconds kept at the end for saving and the preview')
    ap.add_argument('--no-preview', action='store_true')
    ap.add_argument('--fresh', action='store_true', help='ignore existing checkpoints in --out')
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.procs < 1 or args.batch < 1 or args.threads < 1:
        ap.error('--minutes, --procs, --batch and --threads must be positive')
    return args


# glibc malloc: keep freed tensor memory in the heap (no mmap/munmap per step) and back it with huge pages; the
# default hands big blocks back to the kernel, and re-faulting them costs a third of the wall time in sys time.
MALLOC_TUNABLES = 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=4294967296'


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.procs > 1:  # the spawned workers start with this environment
        os.environ.setdefault('GLIBC_TUNABLES', MALLOC_TUNABLES)
    if args.procs == 1:
        worker_main(0, 1, args, 0)
    else:
        mp.spawn(worker_main, args=(args.procs, args, free_port()), nprocs=args.procs, join=True)


if __name__ == '__main__':
    main()
