"""Independent reference implementations of three diffusers schedulers with the SD 1.5 configuration.

Written from diffusers' documented semantics and docs/divide-and-bind.md §3 (diffusers itself is not
installed). The paths SD 1.5 (epsilon), SD 2.1 768-v (v-prediction) and SDXL (Euler, epsilon) use:

  PNDM   PLMS only (skip_prk_steps=True): the 51-timestep quirk for 50 steps, the i = 1 step that re-does the
         first transition from the stored sample with (e0 + e1) / 2, AB2/AB3/AB4 multistep combinations and the
         PNDM transfer formula (9); alphas_cumprod[0] (final_alpha_cumprod) when the previous timestep is < 0.
  DDIM   eta = 0, clip_sample False (SD 1.5's scheduler_config.json), set_alpha_to_one False.
  Euler  EulerDiscreteScheduler: sigmas = sqrt((1 - acp) / acp) linearly interpolated at the (possibly
         fractional) timesteps, final sigma 0, scale_model_input = x / sqrt(sigma^2 + 1), init_noise_sigma
         = sqrt(sigma_max^2 + 1) for 'leading' spacing and sigma_max for 'linspace'; s_churn = 0 (no noise).

Common config: 1000 training steps, scaled_linear betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2,
steps_offset 1, 'leading' spacing. Like diffusers, betas / alphas_cumprod / sigmas are float32 (torch
float32 linspace and cumprod); every step is evaluated in float64 from those float32 schedule values.

prediction_type 'v_prediction' (v = sqrt(a) eps - sqrt(1 - a) x0, a = alphas_cumprod[t]) converts the model
output where diffusers does:
  DDIM   x0 = sqrt(a) x - sqrt(1 - a) v,  eps = sqrt(a) v + sqrt(1 - a) x;
  PNDM   in formula (9), after the multistep combination: eps = sqrt(a_t) v_combined + sqrt(1 - a_t) x, with
         the (t, x) of that transfer (at the i = 1 redo: t + ratio and the stored sample), so the history
         holds raw v's;
  Euler  x0 = v (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1).
"""
from __future__ import annotations

import math

import numpy as np
import torch

NUM_TRAIN = 1000
BETA_START = 0.00085
BETA_END = 0.012
STEPS_OFFSET = 1


def schedule_float32(num_train=NUM_TRAIN, beta_start=BETA_START, beta_end=BETA_END, beta_schedule='scaled_linear'):
    """(betas, alphas_cumprod) as float32 numpy arrays, computed like diffusers (torch float32)."""
    if beta_schedule == 'scaled_linear':
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train, dtype=torch.float32) ** 2
    elif beta_schedule == 'linear':
        betas = torch.linspace(beta_start, beta_end, num_train, dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported (use 'scaled_linear' or 'linear')")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return betas.numpy(), alphas_cumprod.numpy()


class StepOutput(dict):
    """step() result: a dict that also exposes its keys as attributes (diffusers' `.prev_sample`)."""

    __getattr__ = dict.__getitem__


def _sample(x):
    """torch tensors stay torch (same dtype: a float32 pipeline computes in float32); the rest -> float64."""
    return x if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def _like(x, sample):
    if torch.is_tensor(sample):
        return torch.as_tensor(x).to(sample.dtype)
    return np.asarray(x, dtype=np.float64)


class _Base:
    """Config handling shared by the three schedulers (diffusers' scheduler_config.json keys)."""

    # sample_max_value only matters with thresholding (not supported), so any value is accepted.
    SUPPORTED = dict(num_train_timesteps=None, beta_start=None, beta_end=None, beta_schedule=None,
                     steps_offset=None, set_alpha_to_one=None, trained_betas=(None,), clip_sample=(False,),
                     skip_prk_steps=None, timestep_spacing=None, interpolation_type=('linear',),
                     use_karras_sigmas=(False,), sample_max_value=None, thresholding=(False,))

    def __init__(self, num_train_timesteps=NUM_TRAIN, beta_start=BETA_START, beta_end=BETA_END,
                 beta_schedule='scaled_linear', steps_offset=STEPS_OFFSET, set_alpha_to_one=False,
                 timestep_spacing='leading', prediction_type='epsilon', **extra):
        for key, value in extra.items():
            if key.startswith('_'):
                continue  # _class_name, _diffusers_version
            if key not in self.SUPPORTED:
                raise ValueError(f'unknown scheduler config key {key!r}')
            allowed = self.SUPPORTED[key]
            if allowed is not None and value not in allowed:
                raise ValueError(f'{key}={value!r} is not supported by this reference (only {allowed})')
        if timestep_spacing not in ('leading', 'linspace'):
            raise ValueError(f"timestep_spacing {timestep_spacing!r} is not supported (use 'leading' or 'linspace')")
        if prediction_type not in ('epsilon', 'v_prediction'):
            raise ValueError(f"prediction_type {prediction_type!r} is not supported (use 'epsilon' or 'v_prediction')")
        self.prediction_type = prediction_type
        self.num_train_timesteps = int(num_train_timesteps)
        self.steps_offset = int(steps_offset)
        self.timestep_spacing = timestep_spacing
        self.betas, self.alphas_cumprod = schedule_float32(self.num_train_timesteps, beta_start, beta_end,
                                                           beta_schedule)
        # set_alpha_to_one False: the step past t = 0 uses alphas_cumprod[0] instead of 1.
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])

    def leading(self, num_inference_steps: int) -> np.ndarray:
        """'leading' spacing: k * (T // N) + steps_offset, k = N-1 .. 0 (descending, int64)."""
        ratio = self.num_train_timesteps // num_inference_steps
        return (np.arange(num_inference_steps, dtype=np.int64) * ratio)[::-1] + self.steps_offset


def leading_timesteps(num_inference_steps: int) -> np.ndarray:
    return _Base().leading(num_inference_steps)


class PNDMScheduler(_Base):
    """PNDMScheduler with skip_prk_steps=True (PLMS)."""

    def __init__(self, skip_prk_steps=True, **config) -> None:
        if not skip_prk_steps:
            raise ValueError('only skip_prk_steps=True (PLMS) is implemented')
        super().__init__(**config)
        if self.timestep_spacing != 'leading':
            raise ValueError("PNDM reference implements 'leading' spacing only")
        self.init_noise_sigma = 1.0

    def set_timesteps(self, num_inference_steps: int) -> np.ndarray:
        self.num_inference_steps = num_inference_steps
        ascending = self.leading(num_inference_steps)[::-1]
        # PLMS repeats the second-to-last training-order entry: ..., t_{N-2}, t_{N-2}, t_{N-1}, then reversed,
        # so 50 steps give 51 timesteps [981, 961, 961, 941, ..., 1].
        plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        self.timesteps = plms.astype(np.int64).copy()
        self.ets = []
        self.counter = 0
        self.cur_sample = None
        return self.timesteps

    def scale_model_input(self, sample, timestep=None):
        return _sample(sample)  # identity

    def _alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def prev_sample(self, sample, t: int, t_prev: int, eps):
        """PNDM formula (9): x_prev = sqrt(a'/a) x - (a' - a) eps / (a sqrt(1 - a') + sqrt(a (1 - a) a')).
        With v-prediction `eps` is a (combined) v and is converted here, at (t, sample)."""
        a, a_prev = self._alpha(t), self._alpha(t_prev)
        if self.prediction_type == 'v_prediction':
            eps = math.sqrt(a) * eps + math.sqrt(1.0 - a) * sample
        denom = a * math.sqrt(1.0 - a_prev) + math.sqrt(a * (1.0 - a) * a_prev)
        return math.sqrt(a_prev / a) * sample - (a_prev - a) * eps / denom

    def step(self, model_output, timestep, sample) -> StepOutput:
        sample = _sample(sample)
        eps = _like(model_output, sample)
        ratio = self.num_train_timesteps // self.num_inference_steps
        t, t_prev = int(timestep), int(timestep) - ratio
        if self.counter != 1:
            self.ets = self.ets[-3:] + [eps]
        else:
            # Second call: redo the first transition (t + ratio -> t) from the stored sample.
            t, t_prev = int(timestep) + ratio, int(timestep)
        if len(self.ets) == 1 and self.counter == 0:
            combined = eps
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            combined = (eps + self.ets[-1]) / 2  # e1 itself never enters the history
            sample = self.cur_sample
            self.cur_sample = None
        elif len(self.ets) == 2:
            combined = (3 * self.ets[-1] - self.ets[-2]) / 2
        elif len(self.ets) == 3:
            combined = (23 * self.ets[-1] - 16 * self.ets[-2] + 5 * self.ets[-3]) / 12
        else:
            combined = (55 * self.ets[-1] - 59 * self.ets[-2] + 37 * self.ets[-3] - 9 * self.ets[-4]) / 24
        self.counter += 1
        return StepOutput(prev_sample=self.prev_sample(sample, t, t_prev, combined))


class DDIMScheduler(_Base):
    """DDIMScheduler, eta = 0, clip_sample False, epsilon or v-prediction."""

    def __init__(self, **config) -> None:
        super().__init__(**config)
        if self.timestep_spacing != 'leading':
            raise ValueError("DDIM reference implements 'leading' spacing only")
        self.init_noise_sigma = 1.0

    def set_timesteps(self, num_inference_steps: int) -> np.ndarray:
        self.num_inference_steps = num_inference_steps
        self.timesteps = self.leading(num_inference_steps)
        return self.timesteps

    def scale_model_input(self, sample, timestep=None):
        return _sample(sample)  # identity

    def step(self, model_output, timestep, sample) -> StepOutput:
        sample = _sample(sample)
        eps = _like(model_output, sample)
        t = int(timestep)
        t_prev = t - self.num_train_timesteps // self.num_inference_steps
        a = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else self.final_alpha_cumprod
        if self.prediction_type == 'v_prediction':
            x0 = math.sqrt(a) * sample - math.sqrt(1.0 - a) * eps
            eps = math.sqrt(a) * eps + math.sqrt(1.0 - a) * sample
        else:
            x0 = (sample - math.sqrt(1.0 - a) * eps) / math.sqrt(a)  # DDIM eq. 12, "predicted x0"
        prev = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps  # eta = 0: no noise term
        return StepOutput(prev_sample=prev, pred_original_sample=x0)


class EulerDiscreteScheduler(_Base):
    """EulerDiscreteScheduler (epsilon or v-prediction, linear interpolation, no Karras sigmas, s_churn = 0)."""

    def __init__(self, **config) -> None:
        super().__init__(**config)
        acp = torch.from_numpy(self.alphas_cumprod)
        self.train_sigmas = (((1 - acp) / acp) ** 0.5).numpy()  # float32, like diffusers

    def set_timesteps(self, num_inference_steps: int) -> np.ndarray:
        self.num_inference_steps = num_inference_steps
        if self.timestep_spacing == 'leading':
            timesteps = self.leading(num_inference_steps).astype(np.float32)
        else:
            timesteps = np.linspace(0, self.num_train_timesteps - 1, num_inference_steps, dtype=np.float32)[::-1]
            timesteps = timesteps.copy()
        # sigma(t): piecewise-linear interpolation of the training sigmas at (fractional) timesteps, then 0.
        sigmas = np.interp(timesteps.astype(np.float64), np.arange(self.num_train_timesteps),
                           self.train_sigmas.astype(np.float64))
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = timesteps
        self.step_index = 0
        return timesteps

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = float(self.sigmas.max())
        return max_sigma if self.timestep_spacing == 'linspace' else math.sqrt(max_sigma ** 2 + 1)

    def _index(self, timestep) -> int:
        return int(np.nonzero(self.timesteps == np.float32(timestep))[0][0])

    def scale_model_input(self, sample, timestep):
        sigma = float(self.sigmas[self._index(timestep)])
        return _sample(sample) / math.sqrt(sigma ** 2 + 1)

    def step(self, model_output, timestep, sample) -> StepOutput:
        sample = _sample(sample)
        eps = _like(model_output, sample)
        i = self._index(timestep)
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        if self.prediction_type == 'v_prediction':
            x0 = eps * (-sigma / math.sqrt(sigma ** 2 + 1)) + sample / (sigma ** 2 + 1)
        else:
            x0 = sample - sigma * eps
        derivative = (sample - x0) / sigma
        return StepOutput(prev_sample=sample + derivative * (sigma_next - sigma), pred_original_sample=x0)


CLASSES = {'PNDMScheduler': PNDMScheduler, 'DDIMScheduler': DDIMScheduler,
           'EulerDiscreteScheduler': EulerDiscreteScheduler}


def from_config(config: dict, class_name: str = None):
    """The scheduler a scheduler_config.json describes (its _class_name, or class_name with the same settings,
    as diffusers' `OtherScheduler.from_config(config)`)."""
    cls = CLASSES[class_name or config['_class_name']]
    return cls(**{k: v for k, v in config.items() if k != '_class_name'})


# Short names used by tools/make_scheduler_golden.py (SD 1.5 configuration unless prediction_type is given).
Pndm = PNDMScheduler
Ddim = DDIMScheduler


def Euler(spacing: str = 'leading', **config) -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(timestep_spacing=spacing, **config)


SCHEDULERS = dict(pndm=lambda **c: Pndm(**c), ddim=lambda **c: Ddim(**c), euler=lambda **c: Euler('leading', **c),
                  euler_linspace=lambda **c: Euler('linspace', **c))
