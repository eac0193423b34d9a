"""Train shapes-sd: the autoencoder first (MSE + L1), then the text encoder + UNet jointly (ε-prediction DDPM with
SD 1.5's noise schedule, 10 % empty captions for classifier-free guidance), within a wall-clock budget.

Runs unchanged on torch 1.13 (CPU) and torch 2.x (CUDA, bf16 autocast + TF32). Resumable: every checkpoint holds
the models, the optimiser state, the step counters and the RNG states; rerunning with the same --out continues.

Files written to --out (each ≤ 16 MB, 8 at most):
  ckpt-ae.pt     autoencoder (+ latent statistics) and its optimiser state
  ckpt-unet.pt   text encoder + UNet weights (fp32), config, tokenizer merges, counters
  ckpt-ema.pt    EMA of the text encoder + UNet weights (what export.py exports)
  ckpt-optim.pt  UNet-phase AdamW moments (bf16, to stay under 16 MB), RNG states
  loss.json      loss curves; loss.png the plot; train.log the log; samples.png a preview grid (EMA weights,
                 DDIM 25 steps, CFG 5, fixed prompts and seeds)

Usage: python3 tools/shapes/train.py --out DIR --minutes 6 [--device auto|cpu|cuda] [--batch N]
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import random
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import data as D  # noqa: E402
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


class Log:
    def __init__(self, path: str):
        self.f = open(path, 'a', buffering=1)

    def __call__(self, msg: str) -> None:
        line = f'[{time.strftime("%H:%M:%S")}] {msg}'
        print(line, flush=True)
        self.f.write(line + '\n')


def pick_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda requested but torch.cuda.is_available() is False')
    return torch.device(name)


def make_adamw(params, lr: float, device: torch.device, weight_decay: float = 0.0):
    kwargs = {}
    sig = inspect.signature(torch.optim.AdamW.__init__).parameters
    if device.type == 'cuda' and 'fused' in sig and int(torch.__version__.split('.')[0]) >= 2:
        kwargs['fused'] = True  # one kernel for the whole update: the model is small, launches dominate
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, **kwargs)


def save_atomic(obj, path: str) -> None:
    tmp = path + '.tmp'
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: str, device):
    kwargs = {'map_location': device}
    if 'weights_only' in inspect.signature(torch.load).parameters:
        kwargs['weights_only'] = False  # our own files: configs and RNG states besides tensors
    return torch.load(path, **kwargs)


def cpu_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to('cpu', torch.float32).clone() for k, v in module.state_dict().items()}


def rng_state(g: torch.Generator, cg: torch.Generator, device: torch.device) -> Dict:
    st = {'data': g.get_state(), 'data_cpu': cg.get_state(), 'torch_cpu': torch.get_rng_state(), 'python': random.getstate()}
    if device.type == 'cuda':
        st['torch_cuda'] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: Dict, g: torch.Generator, cg: torch.Generator, device: torch.device) -> None:
    g.set_state(st['data'])
    cg.set_state(st['data_cpu'])
    torch.set_rng_state(st['torch_cpu'])
    random.setstate(st['python'])
    if device.type == 'cuda' and 'torch_cuda' in st:
        torch.cuda.set_rng_state(st['torch_cuda'], device)


class Trainer:
    def __init__(self, args):
        self.args = args
        self.t_start = args.start_time if args.start_time else time.time()
        self.t_end = self.t_start + args.minutes * 60.0
        os.makedirs(args.out, exist_ok=True)
        self.log = Log(os.path.join(args.out, 'train.log'))
        self.device = pick_device(args.device)
        dev = self.device
        if dev.type == 'cpu':
            torch.set_num_threads(args.threads or os.cpu_count() or 1)
        else:
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision('high')  # TF32 matmuls
            torch.backends.cudnn.allow_tf32 = True
        self.batch = args.batch or (512 if dev.type == 'cuda' else 16)
        self.amp = dev.type == 'cuda' and not args.no_amp and torch.cuda.is_bf16_supported()
        self.world = D.ShapesWorld(dev)
        self.cfg = M.default_config()
        torch.manual_seed(args.seed)  # the default inits of all modules below
        self.te, self.unet, self.ae = M.build(self.cfg, len(self.world.vocab))
        M.sm.init_text_encoder_(self.te, args.seed + 1)
        for m in (self.te, self.unet, self.ae):
            m.to(dev)
        self.ema_te = M.build(self.cfg, len(self.world.vocab))[0].to(dev)
        self.ema_unet = M.build(self.cfg, len(self.world.vocab))[1].to(dev)
        self.ema_te.load_state_dict(self.te.state_dict())
        self.ema_unet.load_state_dict(self.unet.state_dict())
        for p in list(self.ema_te.parameters()) + list(self.ema_unet.parameters()):
            p.requires_grad_(False)
        self.ae_opt = make_adamw(self.ae.parameters(), args.ae_lr, dev)
        self.opt = make_adamw(list(self.te.parameters()) + list(self.unet.parameters()), args.lr, dev, 0.01)
        self.g = torch.Generator(device=dev).manual_seed(args.seed)
        self.cg = torch.Generator().manual_seed(args.seed + 7)
        random.seed(args.seed)
        self.alphas_cumprod = M.sd15_alphas_cumprod(dev)
        self.state = {'phase': 'ae', 'ae_step': 0, 'unet_step': 0, 'elapsed_ae': 0.0, 'elapsed_unet': 0.0,
                      'runs': 0}
        self.curves = {'ae': [], 'unet': []}
        self.resume()
        self.state['runs'] += 1
        if self.amp:
            self.probe_amp()
        n = {k: M.param_count(m) for k, m in (('text_encoder', self.te), ('unet', self.unet),
                                                ('vae_encoder', self.ae.encoder), ('vae_decoder', self.ae.decoder))}
        self.log(f'torch {torch.__version__} device {dev}'
                 f'{" (" + torch.cuda.get_device_name(dev) + ")" if dev.type == "cuda" else ""} batch {self.batch} '
                 f'amp {"bf16" if self.amp else "off"} params {n} budget {args.minutes} min')

    # -- checkpoints -------------------------------------------------------------------------------------

    def paths(self):
        o = self.args.out
        return {k: os.path.join(o, f'ckpt-{k}.pt') for k in ('ae', 'unet', 'ema', 'optim')}

    def resume(self, force: bool = False) -> None:
        p = self.paths()
        if (self.args.fresh and not force) or not os.path.exists(p['unet']):
            return
        dev = self.device
        u = load(p['unet'], dev)
        self.te.load_state_dict(u['text_encoder'])
        self.unet.load_state_dict(u['unet'])
        self.state.update(u['state'])
        self.curves = u['curves']
        a = load(p['ae'], dev)
        self.ae.load_state_dict(a['model'])
        self.ae_opt.load_state_dict(a['optimizer'])
        e = load(p['ema'], dev)
        self.ema_te.load_state_dict(e['text_encoder'])
        self.ema_unet.load_state_dict(e['unet'])
        o = load(p['optim'], dev)
        opt_state = o['optimizer']
        for st in opt_state['state'].values():
            for k, v in st.items():
                if torch.is_tensor(v) and v.is_floating_point() and k != 'step':
                    st[k] = v.to(torch.float32)
        self.opt.load_state_dict(opt_state)
        set_rng_state(o['rng'], self.g, self.cg, dev)
        self.log(f'resumed from {self.args.out}: {self.state}')

    def save(self) -> None:
        p = self.paths()
        meta = {'config': self.cfg, 'merges': self.world.merges, 'vocab_size': len(self.world.vocab),
                'torch': torch.__version__, 'batch': self.batch, 'seed': self.args.seed}
        save_atomic({'model': cpu_state(self.ae), 'optimizer': self.ae_opt.state_dict(), **meta}, p['ae'])
        save_atomic({'text_encoder': cpu_state(self.te), 'unet': cpu_state(self.unet), 'state': dict(self.state),
                     'curves': self.curves, **meta}, p['unet'])
        save_atomic({'text_encoder': cpu_state(self.ema_te), 'unet': cpu_state(self.ema_unet),
                     'state': dict(self.state), **meta}, p['ema'])
        sd = self.opt.state_dict()
        small = {'state': {}, 'param_groups': sd['param_groups']}
        for i, st in sd['state'].items():
            # bf16 moments halve the file (AdamW's m and v tolerate 3 significant digits on resume)
            small['state'][i] = {k: (v.to('cpu', torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point()
                                     and v.numel() > 1 else v.cpu() if torch.is_tensor(v) else v)
                                 for k, v in st.items()}
        save_atomic({'optimizer': small, 'rng': rng_state(self.g, self.cg, self.device)}, p['optim'])

    def probe_amp(self) -> None:
        """One forward + backward of every model under bf16 autocast on a tiny batch; on any error, train in fp32
        (TF32) instead of failing: the GPU run gets one try."""
        try:
            b = self.world.sample(4, torch.Generator(device=self.device).manual_seed(0), torch.Generator().manual_seed(0))
            with self.autocast():
                z = self.ae.encoder(b.images)
                y = self.ae.decoder(z)
                p = self.unet(torch.zeros_like(z).float(), torch.tensor([1, 2, 3, 999], device=self.device),
                              self.te.hidden(b.input_ids))
            (y.float().mean() + p.float().mean()).backward()
            self.log('bf16 autocast probe ok')
        except Exception as exc:  # noqa: BLE001 - any failure means: do not use autocast
            self.amp = False
            self.log(f'bf16 autocast probe failed, training in fp32/TF32: {exc!r}')
        for m in (self.ae, self.te, self.unet):
            m.zero_grad(set_to_none=True)

    # -- phases ------------------------------------------------------------------------------------------

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type='cuda', dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_ae(self, deadline: float) -> None:
        a = self.args
        self.ae.train()
        t0 = time.time()
        acc, n_acc = torch.zeros((), device=self.device), 0
        first = True  # at least one step per phase and run, so that a tiny budget still exercises every path
        while (first or time.time() < deadline) and self.state['ae_step'] < a.ae_max_steps:
            first = False
            x = self.world.sample(self.batch, self.g, self.cg, with_boxes=False).images
            with self.autocast():
                z = self.ae.encoder(x)
                # Latent noise makes the decoder tolerant of the small errors of sampled latents.
                zn = z + 0.1 * z.detach().std() * torch.randn(z.shape, generator=self.g, device=z.device)
                y = self.ae.decoder(zn).float()
            loss = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x) + 1e-4 * z.float().pow(2).mean()
            self.ae_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.ae_opt.step()
            self.state['ae_step'] += 1
            acc += loss.detach()  # read back only when logging (no per-step device sync)
            n_acc += 1
            if self.state['ae_step'] % a.log_every == 0:
                mean = float(acc) / n_acc
                self.curves['ae'].append([self.state['ae_step'], mean])
                self.log(f'ae step {self.state["ae_step"]} loss {mean:.5f}')
                acc.zero_()
                n_acc = 0
        if n_acc:
            self.curves['ae'].append([self.state['ae_step'], float(acc) / n_acc])
        self.state['elapsed_ae'] += time.time() - t0
        self.ae.eval()
        # Per-channel latent statistics over fresh scenes: UNet latents are standardised with them.
        with torch.no_grad():
            zs = torch.cat([self.ae.encoder(self.world.sample(self.batch, self.g, self.cg, with_boxes=False).images).float()
                            for _ in range(max(1, 1024 // self.batch) if self.device.type == 'cuda' else 4)])
            self.ae.latent_mean.copy_(zs.mean(dim=(0, 2, 3)))
            self.ae.latent_std.copy_(zs.std(dim=(0, 2, 3)))
            x = self.world.sample(self.batch, self.g, self.cg, with_boxes=False).images
            mse = F.mse_loss(self.ae.decoder(self.ae.encoder(x)), x).item()
        self.state['ae_eval_mse'] = mse
        self.log(f'ae done: {self.state["ae_step"]} steps, eval MSE {mse:.5f} (PSNR {10 * math.log10(4 / mse):.1f} dB), '
                 f'latent mean {self.ae.latent_mean.tolist()} std {self.ae.latent_std.tolist()}')
        self.state['phase'] = 'unet'

    def lr_at(self, frac: float, step: int) -> float:
        """Linear warm-up over 200 steps, then cosine over the UNet phase's wall-clock budget down to 10 %."""
        warm = min(1.0, (step + 1) / 200)
        return self.args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac)))))

    def train_unet(self, t_begin: float, deadline: float) -> None:
        a = self.args
        self.te.train()
        self.unet.train()
        for p in self.ae.parameters():
            p.requires_grad_(False)
        dev = self.device
        acc = torch.zeros((), device=dev)
        n_acc, n_run = 0, 0
        t_last_ckpt = time.time()
        t_phase = t_start = time.time()
        params = [p for p in list(self.te.parameters()) + list(self.unet.parameters())]
        ema_params = list(self.ema_te.parameters()) + list(self.ema_unet.parameters())
        first = True
        while first or time.time() < deadline:
            first = False
            t_step = time.time()
            step = self.state['unet_step']
            frac = (time.time() - t_begin) / max(1e-6, deadline - t_begin)
            lr = self.lr_at(frac, step)
            for grp in self.opt.param_groups:
                grp['lr'] = lr
            batch = self.world.sample(self.batch, self.g, self.cg, with_boxes=False)
            with torch.no_grad(), self.autocast():
                x0 = self.ae.normalise(self.ae.encoder(batch.images).float())
            t = torch.randint(0, 1000, (self.batch,), generator=self.g, device=dev)
            noise = torch.randn(x0.shape, generator=self.g, device=dev)
            ac = self.alphas_cumprod[t][:, None, None, None]
            xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
            with self.autocast():
                ctx = self.te.hidden(batch.input_ids)
                pred = self.unet(xt, t, ctx)
            loss = F.mse_loss(pred.float(), noise)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.opt.step()
            # EMA with a warm-up so that short runs are not dominated by the initial weights.
            decay = min(a.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_mul_(ema_params, decay)
                torch._foreach_add_(ema_params, params, alpha=1 - decay)
            self.state['unet_step'] += 1
            self.last_step_s = time.time() - t_step
            # Accumulated on the device and read back only when logging: a .item() per step stalls the GPU queue.
            acc += loss.detach()
            n_acc += 1
            n_run += 1
            if self.state['unet_step'] % a.log_every == 0:
                el = time.time() - t_phase
                mean = float(acc) / n_acc
                if not math.isfinite(mean):
                    # Diverged: go back to the last checkpoint (always one: saved after the AE phase) with half
                    # the learning rate rather than lose the run.
                    self.args.lr *= 0.5
                    self.log(f'non-finite loss at unet step {self.state["unet_step"]}: reloading the last '
                             f'checkpoint, lr now {self.args.lr:.2e}')
                    lr_keep = self.args.lr
                    self.resume(force=True)
                    self.args.lr = lr_keep
                    acc.zero_()
                    n_acc = 0
                    continue
                self.curves['unet'].append([self.state['unet_step'], mean, lr, round(self.state['elapsed_unet'] + el, 2)])
                self.log(f'unet step {self.state["unet_step"]} loss {mean:.5f} lr {lr:.2e} '
                         f'{n_run / max(1e-6, time.time() - t_start):.1f} steps/s')
                acc.zero_()
                n_acc = 0
            if time.time() - t_last_ckpt > a.ckpt_every * 60:
                self.state['elapsed_unet'] += time.time() - t_phase
                t_phase = time.time()
                self.save()
                t_last_ckpt = time.time()
                self.log(f'checkpoint at unet step {self.state["unet_step"]}')
        self.state['elapsed_unet'] += time.time() - t_phase

    # -- preview -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def preview(self, path: str, steps: int = 25, guidance: float = 5.0) -> None:
        """DDIM (η = 0) with CFG on the EMA weights: a quick look at what the model draws. Fewer steps when the
        budget is nearly spent (slow CPUs), at least 4."""
        dev = self.device
        self.ema_te.eval()
        self.ema_unet.eval()
        tok = self.world.tokenizer
        ids = torch.tensor([tok(p) for p in PREVIEW_PROMPTS] + [tok('')], dtype=torch.int64, device=dev)
        ctx = self.ema_te.hidden(ids)
        cond, uncond = ctx[:-1], ctx[-1:].expand(len(PREVIEW_PROMPTS), -1, -1)
        g = torch.Generator(device='cpu').manual_seed(1234)
        x = torch.randn(len(PREVIEW_PROMPTS), 4, M.LATENT_SIZE, M.LATENT_SIZE, generator=g).to(dev)
        t0 = time.time()
        with self.autocast():
            self.ema_unet(torch.cat([x, x]), torch.full((2 * len(PREVIEW_PROMPTS),), 999, device=dev),
                          torch.cat([cond, uncond]))
        per_call = time.time() - t0
        steps = max(4, min(steps, int((self.t_end - time.time() - 2) / max(per_call, 1e-3))))
        ts = torch.linspace(999, 0, steps).round().long().tolist()
        ac = self.alphas_cumprod
        for i, t in enumerate(ts):
            tt = torch.full((2 * len(PREVIEW_PROMPTS),), t, device=dev, dtype=torch.int64)
            with self.autocast():
                eps = self.ema_unet(torch.cat([x, x]), tt, torch.cat([cond, uncond])).float()
            e_c, e_u = eps.chunk(2)
            e = e_u + guidance * (e_c - e_u)
            a_t = ac[t]
            a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
            x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
        img = self.ae.decoder(self.ae.denormalise(x)).float()
        u8 = D.to_uint8(img).cpu()
        n = len(PREVIEW_PROMPTS)
        cols = 4
        rows = (n + cols - 1) // cols
        grid = torch.full((rows * 66, cols * 66, 3), 255, dtype=torch.uint8)
        for k in range(n):
            r, c = divmod(k, cols)
            grid[r * 66 + 1:r * 66 + 65, c * 66 + 1:c * 66 + 65] = u8[k]
        pngio.write_png(path, grid)
        self.log(f'preview {path} ({steps} DDIM steps, CFG {guidance}), rows of {cols}: '
                 + '; '.join(f'({k // cols},{k % cols}) {p!r}' for k, p in enumerate(PREVIEW_PROMPTS)))

    # -- main ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        budget = self.t_end - time.time()
        # Reserve time for the final checkpoint, preview and plot (measured ≈ 5-10 s on a GPU, more on CPU).
        reserve = a.reserve if a.reserve is not None else (8.0 + 0.04 * budget if self.device.type == 'cuda' else 10.0 + 0.25 * budget)
        work_end = self.t_end - reserve
        if work_end <= time.time():
            raise SystemExit(f'budget too small: {budget:.0f} s left, {reserve:.0f} s reserved for saving')
        if self.state['phase'] == 'ae':
            ae_deadline = time.time() + a.ae_fraction * (work_end - time.time())
            self.log(f'phase ae until t+{ae_deadline - self.t_start:.0f}s (max {a.ae_max_steps} steps)')
            self.train_ae(ae_deadline)
            self.save()
        t_begin = time.time()
        self.log(f'phase unet until t+{work_end - self.t_start:.0f}s')
        self.train_unet(t_begin, work_end)
        finite = all(bool(torch.isfinite(p).all()) for m in (self.te, self.unet, self.ema_te, self.ema_unet)
                     for p in m.parameters())
        if finite:
            self.save()
        else:  # diverged after the last check: keep the last good checkpoint on disk and use it
            self.log('non-finite weights at the end: keeping the last checkpoint')
            self.resume(force=True)
        self.log(f'saved checkpoints at unet step {self.state["unet_step"]} (t+{time.time() - self.t_start:.0f}s)')
        with open(os.path.join(a.out, 'loss.json'), 'w') as f:
            json.dump({'curves': self.curves, 'state': self.state, 'batch': self.batch, 'config': self.cfg,
                       'columns': {'ae': ['step', 'loss'], 'unet': ['step', 'loss', 'lr', 'elapsed_s']}}, f)
        try:
            pngio.plot_losses(os.path.join(a.out, 'loss.png'), self.curves)
        except Exception as exc:  # noqa: BLE001 - the checkpoints are safe; a plot must not fail the run
            self.log(f'loss plot failed: {exc!r}')
        # A preview needs ≥ 5 UNet calls at batch 32 (≈ 1/3 of a training step each, scaled by batch).
        call_s = getattr(self, 'last_step_s', 0.0) / 3 * 32 / self.batch
        if a.no_preview or self.t_end - time.time() < 5 * call_s + 1:
            self.log('preview skipped (' + ('--no-preview' if a.no_preview else 'no time left') + ')')
        else:
            try:
                self.preview(os.path.join(a.out, 'samples.png'))
            except Exception as exc:  # the checkpoints are already safe; a failed preview must not fail the run
                self.log(f'preview failed: {exc!r}')
        self.log(f'done at t+{time.time() - self.t_start:.0f}s: ae {self.state["ae_step"]} steps, '
                 f'unet {self.state["unet_step"]} steps')


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', required=True, help='checkpoint + log folder (resumes from it)')
    ap.add_argument('--minutes', type=float, default=6.0, help='total wall-clock budget, both phases')
    ap.add_argument('--start-time', type=float, default=None, help='epoch seconds the budget counts from')
    ap.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    ap.add_argument('--batch', type=int, default=None, help='default 512 on CUDA, 16 on CPU')
    ap.add_argument('--lr', type=float, default=7e-4)
    ap.add_argument('--ae-lr', type=float, default=2e-3)
    ap.add_argument('--ae-fraction', type=float, default=0.15, help='share of the budget for the autoencoder')
    ap.add_argument('--ae-max-steps', type=int, default=3000)
    ap.add_argument('--ema', type=float, default=0.999)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=0)
    ap.add_argument('--log-every', type=int, default=50)
    ap.add_argument('--ckpt-every', type=float, default=1.5, help='minutes between checkpoints')
    ap.add_argument('--reserve', type=float, default=None, help='seconds kept for saving at the end')
    ap.add_argument('--no-amp', action='store_true')
    ap.add_argument('--no-preview', action='store_true')
    ap.add_argument('--fresh', action='store_true', help='ignore existing checkpoints in --out')
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error('--minutes must be positive')
    if args.batch is not None and args.batch < 1:
        ap.error('--batch must be ≥ 1')
    Trainer(args).run()


if __name__ == '__main__':
    main()
