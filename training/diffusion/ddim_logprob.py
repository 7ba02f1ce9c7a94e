"""The one DDIM step with a log-probability, shared by DDPO and B²-DiffuRL.

With ``eta > 0`` a DDIM step draws ``x_{t-1} ~ N(mean(x_t, eps), std_t^2 I)`` where
``std_t = eta * sqrt(variance_t)`` (the DDIM paper's sigma). :func:`ddim_step_with_logprob`
returns that sample together with its Gaussian log-density, computed in float32 whatever the
model's dtype, averaged over the non-batch dimensions (as ddpo-pytorch does, so that the scale of
the PPO ratio does not depend on the latent size). Given ``prev_sample`` it scores that sample
instead of drawing one: this is how a trainer re-evaluates stored trajectories under the current
weights.

The mean is diffusers' ``DDIMScheduler.step`` mean, term for term (epsilon, v and sample
prediction, ``clip_sample``, ``final_alpha_cumprod`` for the last step), and timesteps may differ
per sample (a tensor of shape ``(B,)``), which training with shuffled timesteps needs.

:class:`DDIMLogProbStep` adapts it to :class:`promptloop.capture.SchedulerCapture`'s step
function contract, so a capture records ``log_prob`` with every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

Generators = torch.Generator | Sequence[torch.Generator] | None
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class DDIMLogProbOutput(BaseOutput):
    """What :func:`ddim_step_with_logprob` returns (``[0]`` is the next latents, as diffusers' steps)."""

    prev_sample: torch.Tensor  # x_{t-1}, in the dtype of ``sample``
    log_prob: torch.Tensor  # (B,) float32: mean Gaussian log-density of prev_sample per element
    pred_original_sample: torch.Tensor  # x0 prediction (float32)
    prev_sample_mean: torch.Tensor  # the Gaussian's mean (float32)
    std_dev_t: torch.Tensor  # (B, 1, ..., 1) float32: the Gaussian's standard deviation


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def ddim_step_with_logprob(
    scheduler: Any,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    *,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: Generators = None,
    variance_noise: torch.Tensor | None = None,
) -> DDIMLogProbOutput:
    """One DDIM step (``eta > 0``) that also returns the log-probability of the sample it takes.

    Args:
        scheduler: a ``DDIMScheduler`` after ``set_timesteps`` (its ``num_inference_steps`` fixes
            the previous timestep, exactly as in ``DDIMScheduler.step``).
        model_output: the (guided) denoiser output at ``timestep``.
        timestep: an int, a 0-d tensor or one timestep per sample (shape ``(B,)``).
        sample: the latents ``x_t``.
        eta: DDIM's noise scale; must be > 0 for the density to exist (1.0 is DDPM-like).
        prev_sample: score this ``x_{t-1}`` instead of drawing one (gradients flow to the mean
            only; the sample is treated as data).
        generator: a generator, or one per sample, for the noise of a drawn sample.
        variance_noise: the standard normal noise to use instead of drawing it.
    """
    if eta <= 0:
        raise ValueError("eta must be > 0: with eta = 0 DDIM is deterministic and has no log-probability")
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) first")
    config = scheduler.config
    if config.get("thresholding", False):
        raise NotImplementedError("DDIM dynamic thresholding is not supported by ddim_step_with_logprob")
    dtype = sample.dtype
    device = sample.device
    x_t = sample.float()
    out = model_output.float()
    batch = x_t.shape[0]

    t = torch.as_tensor(timestep, device=device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    elif t.numel() != batch:
        raise ValueError(f"got {t.numel()} timesteps for a batch of {batch}")
    prev_t = t - config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    alpha_t = _per_sample(alphas[t], x_t.ndim)
    alpha_prev = _per_sample(torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final), x_t.ndim)
    beta_t = 1 - alpha_t

    kind = config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        x0 = (x_t - beta_t.sqrt() * out) / alpha_t.sqrt()
        eps = out
    elif kind == "sample":
        x0 = out
        eps = (x_t - alpha_t.sqrt() * x0) / beta_t.sqrt()
    elif kind == "v_prediction":
        x0 = alpha_t.sqrt() * x_t - beta_t.sqrt() * out
        eps = alpha_t.sqrt() * out + beta_t.sqrt() * x_t
    else:
        raise ValueError(f"unknown prediction_type {kind!r}")
    if config.get("clip_sample", False):
        r = config.get("clip_sample_range", 1.0)
        x0 = x0.clamp(-r, r)

    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.sqrt()
    direction = (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps
    mean = alpha_prev.sqrt() * x0 + direction

    if prev_sample is None:
        if variance_noise is None:
            gen = list(generator) if isinstance(generator, (list, tuple)) else generator
            variance_noise = randn_tensor(x_t.shape, generator=gen, device=device, dtype=torch.float32)
        prev_sample = (mean + std * variance_noise.float()).to(dtype)
    # Score the sample as it is stored (in the model's dtype), so a re-evaluation under the same
    # weights gives the same log-probability.
    x_prev = prev_sample.detach().float()
    log_prob = -((x_prev - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return DDIMLogProbOutput(prev_sample=prev_sample, log_prob=log_prob, pred_original_sample=x0,
                             prev_sample_mean=mean, std_dev_t=std)


class DDIMLogProbStep:
    """A :class:`~promptloop.capture.SchedulerCapture` step function: :func:`ddim_step_with_logprob`
    with a fixed ``eta`` and noise generators (one per sample, or one for the batch), which the
    caller may swap between steps (B²-DiffuRL gives each branch its own after the branch point).

    Pipelines only pass ``eta``/``generator`` to a scheduler whose ``step`` signature names them,
    which a capture's wrapper does not, so they live here.
    """

    def __init__(self, eta: float = 1.0, generator: Generators = None) -> None:
        if eta <= 0:
            raise ValueError("eta must be > 0")
        self.eta = float(eta)
        self.generator = generator

    def __call__(self, scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
                 *args: Any, **kwargs: Any) -> DDIMLogProbOutput:
        return ddim_step_with_logprob(scheduler, model_output, timestep, sample, eta=self.eta,
                                      generator=self.generator, variance_noise=kwargs.get("variance_noise"))


__all__ = ["DDIMLogProbOutput", "DDIMLogProbStep", "ddim_step_with_logprob"]
