"""Sampling trajectories with log-probabilities, and the denoiser call training repeats.

A :class:`Trajectories` batch holds, per sample, the latents before and after every DDIM step,
the timesteps and the log-probability of each step under the weights that sampled it. It is
recorded through :class:`promptloop.capture.SchedulerCapture` with :class:`DDIMLogProbStep` as the
step function: the same capture mechanism the PromptLoop hook uses, so anything observing the
scheduler (a hook's previews) sees the same steps.

The denoising loop is written here rather than calling ``pipe(...)`` because training needs what
a pipeline call cannot give: the exact same denoiser call at sampling and at training time
(:func:`predict_noise`, classifier-free guidance recomputed with both passes), per-sample noise
generators (reproducible rollouts, exact resume) and B²-DiffuRL's branching, where one shared
prefix is computed once and continued by several branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from PIL import Image

from promptloop.backbones import EncodedPrompts, adapter_for
from promptloop.capture import SchedulerCapture
from promptloop.training.diffusion.ddim_logprob import DDIMLogProbStep

Tensors = dict[str, torch.Tensor]


@dataclass
class Conditioning:
    """Text conditioning of a batch: the prompt embeddings and, with classifier-free guidance,
    the negative (unconditional) ones. ``negative_prompt_embeds is None`` means no CFG.

    SDXL's UNet also takes ``added_cond_kwargs`` (``text_embeds``: the pooled embeddings,
    ``time_ids``: the size/crop conditioning), one row per sample like the embeddings, with their
    negative counterpart under CFG; both are ``None`` for SD 1.x/2.x.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    added_cond_kwargs: Tensors | None = None
    negative_added_cond_kwargs: Tensors | None = None

    @property
    def cfg(self) -> bool:
        return self.negative_prompt_embeds is not None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        """The same conditioning with ``fn`` applied to every tensor (each has the batch first)."""

        def each(x: Any) -> Any:
            if x is None:
                return None
            return {k: fn(v) for k, v in x.items()} if isinstance(x, dict) else fn(x)

        return Conditioning(*(each(getattr(self, f.name)) for f in fields(self)))

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> Conditioning:
        return self._map(lambda x: x[index])

    def repeat_interleave(self, k: int) -> Conditioning:
        return self._map(lambda x: x.repeat_interleave(k, 0))

    def to(self, device: torch.device | str) -> Conditioning:
        return self._map(lambda x: x.to(device))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate batches along the sample axis."""
        first = parts[0]

        def joined(name: str) -> Any:
            values = [getattr(p, name) for p in parts]
            if values[0] is None:
                return None
            if isinstance(values[0], dict):
                return {k: torch.cat([v[k] for v in values]) for k in values[0]}
            return torch.cat(values)

        return Conditioning(*(joined(f.name) for f in fields(first)))


#: Families whose denoiser is a UNet that :func:`predict_noise` calls (SD 1.x/2.x and SDXL).
UNET_FAMILIES = ("sd", "sdxl")


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str], *, cfg: bool, negative_prompt: str = "",
                   height: int | None = None, width: int | None = None) -> Conditioning:
    """Encode ``prompts`` (and, with ``cfg``, ``negative_prompt`` once per prompt) with the
    family adapter of :mod:`promptloop.backbones`: the pipeline's own ``encode_prompt``, as the
    hook encodes a refined prompt.

    SDXL's UNet also takes the pooled embeddings and the time ids that
    ``StableDiffusionXLPipeline.__call__`` builds with its defaults (original and target size
    ``(height, width)``, crop ``(0, 0)``; ``height``/``width`` default to the pipeline's). For
    SDXL an empty ``negative_prompt`` means the pipeline's own default unconditional input
    (zeros when ``force_zeros_for_empty_prompt``), as ``pipe(prompt)`` does.
    """
    adapter = adapter_for(pipe)
    if adapter.family not in UNET_FAMILIES:
        raise ValueError(f"DDPO/B² train a UNet backbone ({', '.join(UNET_FAMILIES)}); "
                         f"{type(pipe).__name__} is {adapter.family!r}")
    n = len(prompts)
    positive = adapter.encode(pipe, list(prompts), {})
    negative = None
    if cfg:
        if not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            negative = EncodedPrompts(*(None if x is None else torch.zeros_like(x)
                                        for x in (positive.prompt_embeds, positive.pooled_prompt_embeds)))
        else:
            negative = adapter.encode(pipe, [negative_prompt] * n, {})
    if positive.pooled_prompt_embeds is None:
        return Conditioning(positive.prompt_embeds, None if negative is None else negative.prompt_embeds)
    embeds, pooled = positive.prompt_embeds, positive.pooled_prompt_embeds
    size = pipe.default_sample_size * pipe.vae_scale_factor
    size = (height or size, width or size)
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    projection_dim = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
    time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeds.dtype, text_encoder_projection_dim=projection_dim)
    time_ids = time_ids.to(adapter.device(pipe)).repeat(n, 1)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    if negative is None:
        return Conditioning(embeds, None, added)
    return Conditioning(embeds, negative.prompt_embeds, added,
                        {"text_embeds": negative.pooled_prompt_embeds, "time_ids": time_ids.clone()})


def predict_noise(unet: Any, latents: torch.Tensor, timesteps: torch.Tensor | int, cond: Conditioning,
                  guidance_scale: float) -> torch.Tensor:
    """The denoiser's output as sampling uses it: with CFG both the unconditional and the
    conditional pass are computed (in one batch) and combined with ``guidance_scale``. SDXL's
    ``added_cond_kwargs`` go with the embeddings (negative then positive under CFG)."""
    t = torch.as_tensor(timesteps, device=latents.device)
    if t.ndim == 0:
        t = t.expand(latents.shape[0])
    extra: dict[str, Any] = {}
    if not cond.cfg:
        if cond.added_cond_kwargs is not None:
            extra["added_cond_kwargs"] = cond.added_cond_kwargs
        return unet(latents, t, encoder_hidden_states=cond.prompt_embeds, **extra).sample
    if cond.added_cond_kwargs is not None:
        neg = cond.negative_added_cond_kwargs or {}
        extra["added_cond_kwargs"] = {k: torch.cat([neg[k], v]) for k, v in cond.added_cond_kwargs.items()}
    out = unet(torch.cat([latents, latents]), torch.cat([t, t]),
               encoder_hidden_states=torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds]), **extra).sample
    uncond, text = out.chunk(2)
    return uncond + guidance_scale * (text - uncond)


@dataclass
class Trajectories:
    """A batch of recorded DDIM trajectories (``B`` samples, ``T`` steps).

    ``latents[:, j]`` is the input of step ``j`` and ``latents[:, j + 1]`` its output;
    ``log_probs[:, j]`` is the log-probability of that output under the sampling weights.
    """

    prompts: list[str]
    cond: Conditioning
    timesteps: torch.Tensor  # (B, T) long
    latents: torch.Tensor  # (B, T + 1, C, H, W)
    log_probs: torch.Tensor  # (B, T) float32
    images: list[Image.Image] = field(default_factory=list)
    #: Index of the sample's group (same prompt and shared prefix for B² branches), per sample.
    group: torch.Tensor | None = None
    #: First step index that differs between the siblings of a group (0 without branching).
    branch_index: int = 0

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[1]

    def select(self, index: torch.Tensor | Sequence[int]) -> Trajectories:
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, prompts=[self.prompts[i] for i in index.tolist()], cond=self.cond.select(index),
                       timesteps=self.timesteps[index], latents=self.latents[index], log_probs=self.log_probs[index],
                       images=[self.images[i] for i in index.tolist()] if self.images else [],
                       group=None if self.group is None else self.group[index])


def sample_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One seeded ``torch.Generator`` per sample."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def sample_trajectories(
    pipe: Any,
    prompts: Sequence[str],
    cond: Conditioning,
    *,
    num_steps: int,
    guidance_scale: float,
    eta: float,
    seeds: Sequence[int],
    height: int,
    width: int,
    branches: int = 1,
    branch_index: int = 0,
    branch_seeds: Sequence[int] | None = None,
    decode: bool = True,
) -> Trajectories:
    """Sample ``len(prompts)`` trajectories with DDIM (``eta``) and record their log-probabilities.

    Sample ``i`` starts from noise drawn with ``seeds[i]`` and its step noise comes from the same
    generator. With ``branches = K > 1`` (B²-DiffuRL), each sample's first ``branch_index`` steps
    are computed once, then the latents are copied into K branches that continue with their own
    generators (``branch_seeds``, ``len(prompts) * K`` of them): the result has ``B * K`` samples,
    ordered sample-major (sibling ``k`` of sample ``i`` at ``i * K + k``), whose latents up to and
    including ``latents[:, branch_index]`` are identical bit for bit.
    """
    scheduler = pipe.scheduler
    device = pipe._execution_device
    batch = len(prompts)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} prompts")
    if branches > 1 and (branch_seeds is None or len(branch_seeds) != batch * branches):
        raise ValueError(f"branching needs {batch * branches} branch_seeds")
    if not 0 <= branch_index < num_steps:
        raise ValueError(f"branch_index must be in [0, {num_steps}), got {branch_index}")
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    gens = sample_generators(seeds, device)
    unet = pipe.unet
    dtype = unet.dtype
    channels = unet.config.in_channels
    latents = pipe.prepare_latents(batch, channels, height, width, cond.prompt_embeds.dtype, device, gens)
    latents = latents.to(dtype)
    step_fn = DDIMLogProbStep(eta, gens)
    history: list[torch.Tensor] = [latents]
    log_probs: list[torch.Tensor] = []
    group = torch.arange(batch)
    with SchedulerCapture(scheduler, record=True, step_fn=step_fn) as capture:
        for i, t in enumerate(timesteps):
            if branches > 1 and i == branch_index:
                history = [h.repeat_interleave(branches, 0) for h in history]
                log_probs = [lp.repeat_interleave(branches, 0) for lp in log_probs]
                latents = history[-1]
                cond = cond.repeat_interleave(branches)
                group = group.repeat_interleave(branches)
                step_fn.generator = sample_generators(branch_seeds, device)  # type: ignore[arg-type]
            noise = predict_noise(unet, latents, t, cond, guidance_scale)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            record = capture.latest
            history.append(latents)
            log_probs.append(record.extras["log_prob"])
    n = len(history[-1])
    traj = Trajectories(
        prompts=[prompts[g] for g in group.tolist()],
        cond=cond,
        timesteps=timesteps.to(device).long().unsqueeze(0).expand(n, -1).clone(),
        latents=torch.stack(history, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        group=group,
        branch_index=branch_index if branches > 1 else 0,
    )
    if decode:
        traj.images = decode_latents(pipe, traj.latents[:, -1])
    return traj


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Final latents -> PIL images with the pipeline's VAE and image processor."""
    vae = pipe.vae
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * len(image))


def subsample_timesteps(batch: int, num_steps: int, fraction: float, generator: torch.Generator | None = None,
                        start: int = 0) -> torch.Tensor:
    """Which step indices each sample trains on, shape ``(batch, k)``: every sample gets its own
    random permutation of ``start .. num_steps - 1`` and keeps the first
    ``k = max(1, int((num_steps - start) * fraction))`` (ddpo-pytorch's ``timestep_fraction``)."""
    if not 0 < fraction <= 1:
        raise ValueError("timestep_fraction must be in (0, 1]")
    span = num_steps - start
    keep = max(1, int(span * fraction))
    perms = torch.stack([torch.randperm(span, generator=generator) for _ in range(batch)]) + start
    return perms[:, :keep]


__all__ = ["Conditioning", "Trajectories", "cat_trajectories", "decode_latents", "encode_prompts", "predict_noise",
           "sample_generators", "sample_trajectories", "subsample_timesteps"]


def cat_trajectories(parts: Sequence[Trajectories]) -> Trajectories:
    """Concatenate batches along the sample axis (group ids are offset to stay distinct)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    groups, offset = [], 0
    for p in parts:
        g = p.group if p.group is not None else torch.arange(len(p))
        groups.append(g + offset)
        offset += int(g.max()) + 1 if len(g) else 0
    return Trajectories(
        prompts=[x for p in parts for x in p.prompts],
        cond=Conditioning.cat([p.cond for p in parts]),
        timesteps=torch.cat([p.timesteps for p in parts]),
        latents=torch.cat([p.latents for p in parts]),
        log_probs=torch.cat([p.log_probs for p in parts]),
        images=[im for p in parts for im in p.images],
        group=torch.cat(groups),
        branch_index=parts[0].branch_index,
    )
