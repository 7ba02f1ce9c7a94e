"""``PromptLoopHook``: the loop as a diffusers ``callback_on_step_end``.

    from promptloop import PromptLoopHook
    hook = PromptLoopHook(policy, schedule="evenly:3")
    image = pipe("a red fox in the snow", callback_on_step_end=hook).images[0]
    hook.trace.save("trace/")

Nothing else is passed to the pipeline: the hook is a :class:`diffusers.callbacks.PipelineCallback`,
so the pipeline reads the tensors it needs from ``hook.tensor_inputs``; the prompt, the number of
images per prompt and the image size are read from the running pipeline call itself (pass
``prompt=`` to the hook when you call the pipeline with ``prompt_embeds`` instead of text).

At a refinement step the hook takes the scheduler's prediction of the clean latent (x0),
decodes a small preview per sample, asks the policy for new prompts (through
:class:`~promptloop.loop.RefineLoop`, which handles modes, timeouts and fallbacks), encodes them
with the pipeline's own ``encode_prompt`` and swaps them into the positive rows of the
conditioning for the steps that follow. Negative (CFG) rows are never touched.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.callbacks import PipelineCallback

from promptloop.backbones import BackboneAdapter, adapter_for
from promptloop.capture import SchedulerCapture
from promptloop.loop import RefineLoop
from promptloop.policies.base import Policy
from promptloop.preview import PreviewDecoder, make_preview_decoder, previews_from_latents
from promptloop.schedule import RefineSchedule
from promptloop.trace import Trace

logger = logging.getLogger("promptloop")


def _calling_pipeline_frame(pipeline: Any = None, max_depth: int = 16):
    """The frame of the running ``DiffusionPipeline.__call__`` (of ``pipeline`` if given)."""
    from diffusers import DiffusionPipeline

    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self") if frame.f_code.co_name == "__call__" else None
        if candidate is not None and (
            candidate is pipeline if pipeline is not None else isinstance(candidate, DiffusionPipeline)
        ):
            return frame
        frame = frame.f_back
    return None


@dataclass
class _Run:
    pipeline: Any
    adapter: BackboneAdapter
    num_samples: int
    num_steps: int
    height: int | None
    width: int | None
    disabled: str | None = None
    capture_seq: int = 0
    preview_s: float = 0.0
    encode_s: float = 0.0


class PromptLoopHook(PipelineCallback):
    """Let a policy rewrite the prompt during sampling; pass as ``callback_on_step_end``.

    Args:
        policy: a :class:`~promptloop.policies.base.Policy` (``TransformersPolicy``,
            ``VLLMPolicy``, ``HTTPPolicy``, ``OpenAIChatPolicy``, ``StaticPolicy`` ...).
        schedule: where to refine: step indices ``[5, 10]``, fractions ``[0.2, 0.5]``, or a string
            such as ``"evenly:3"``, ``"every:5"``, ``"0.2,0.4,0.6"`` (see ``RefineSchedule``).
        mode: ``"sync"`` (wait for the policy), ``"async"`` (never wait; apply on arrival) or
            ``"ahead"`` (plan all prompts before sampling, no previews).
        preview: ``"vae"`` (the backbone's VAE), ``"taesd"`` (pass ``taesd=``), ``"linear"``
            (fitted latent->RGB map), or a ``PreviewDecoder`` instance.
        preview_size: longer side of the preview image given to the policy, in pixels.
        taesd: an ``AutoencoderTiny`` or a path/hub id of one, for ``preview="taesd"``.
        timeout_s: longest wait for one policy call; past it the current prompt is kept.
        async_delay: async mode only: apply each answer exactly this many steps after the
            request (deterministic). ``None`` applies it at the first step after it arrives.
        prompt: the user's prompt(s), only needed when the pipeline is called with
            ``prompt_embeds`` instead of ``prompt``.
        keep_previews: keep previews in the trace (turn off for long training rollouts).
        keep_history: show the policy each sample's earlier prompts.
        max_prompt_chars: longest refined prompt accepted (longer ones fall back as
            ``too_long``); ``None``: the policy's own limit, else 600.
        policy_options: keyword arguments for every ``refine``/``plan`` call (e.g.
            ``{"sampling": SamplingConfig(...)}``), see :class:`~promptloop.loop.RefineLoop`.

    After the pipeline call, :attr:`trace` holds every refinement (step, timestep, preview,
    prompt before and after, fallback reason, latency).
    """

    def __init__(
        self,
        policy: Policy,
        schedule: RefineSchedule | str | Sequence[int | float] | None = "evenly:3",
        *,
        mode: str = "sync",
        preview: str | PreviewDecoder = "vae",
        preview_size: int = 256,
        taesd: Any = None,
        timeout_s: float | None = 60.0,
        async_delay: int | None = None,
        prompt: str | Sequence[str] | None = None,
        keep_previews: bool = True,
        keep_history: bool = True,
        max_prompt_chars: int | None = None,
        policy_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cutoff_step_ratio=1.0)
        self.loop = RefineLoop(
            policy, schedule, mode=mode, timeout_s=timeout_s, async_delay=async_delay,
            keep_previews=keep_previews, keep_history=keep_history, max_prompt_chars=max_prompt_chars,
            policy_options=policy_options,
        )
        if isinstance(preview, str) and preview not in ("vae", "taesd", "linear"):
            raise ValueError(f"unknown preview {preview!r}; choose 'vae', 'taesd' or 'linear'")
        self.preview = preview
        self.preview_size = preview_size
        self.taesd = taesd
        self.prompt = prompt
        self._decoders: dict[int, PreviewDecoder] = {}
        self._capture: SchedulerCapture | None = None
        self._owns_capture = False  # False when the capture was there before (e.g. a trainer's)
        self._run: _Run | None = None
        self._new_run = True
        self._last_step = -1
        self._trace = Trace()

    # -- public state -----------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self.loop.policy

    @property
    def mode(self) -> str:
        return self.loop.mode

    @property
    def trace(self) -> Trace:
        """The trace of the last (or current) pipeline call."""
        return self.loop.trace if self._run is not None else self._trace

    @property
    def final_prompts(self) -> list[str]:
        return self.trace.final_prompts()

    # -- PipelineCallback -------------------------------------------------------------------
    @property
    def tensor_inputs(self) -> list[str]:  # type: ignore[override]
        """Read by the pipeline at the start of ``__call__``: the callback tensors we need.

        They depend on the family (``add_text_embeds`` for SDXL, ``pooled_prompt_embeds`` for
        SD3), so the hook looks at the pipeline that is asking.
        """
        self._new_run = True
        frame = _calling_pipeline_frame()
        if frame is None:
            return ["latents", "prompt_embeds"]
        pipe = frame.f_locals["self"]
        self._install_capture(pipe)
        if self.loop.mode == "ahead":  # plan now: the pipeline has not started sampling yet
            self._prepare_plan(frame.f_locals)
        del frame
        try:
            return adapter_for(pipe).tensor_inputs(getattr(pipe, "_callback_tensor_inputs", ["latents"]))
        except ValueError:
            return [k for k in ("latents", "prompt_embeds") if k in getattr(pipe, "_callback_tensor_inputs", [])]

    def callback_fn(self, pipeline, step_index: int, timestep, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._new_run or self._run is None or self._run.pipeline is not pipeline or step_index <= self._last_step:
            self._begin_run(pipeline, callback_kwargs)
        self._last_step = step_index
        run = self._run
        assert run is not None
        if run.disabled is None:
            t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
            tensors = self._tensors(run, callback_kwargs)
            changes = self.loop.at_step(step_index, t, lambda: self._previews(run, tensors))
            if changes:
                callback_kwargs.update(self._encode_and_swap(run, changes, tensors))
        if self._capture is not None:
            run.capture_seq = self._capture.seq
        if step_index >= run.num_steps - 1:
            self._end_run()
        return callback_kwargs

    # -- run lifecycle ----------------------------------------------------------------------
    def _begin_run(self, pipeline: Any, callback_kwargs: dict[str, Any]) -> None:
        if self._run is not None:
            self._end_run()
        self._new_run = False
        self._last_step = -1
        self._install_capture(pipeline)
        adapter = adapter_for(pipeline)
        frame = _calling_pipeline_frame(pipeline)
        call = dict(frame.f_locals) if frame is not None else {}
        del frame
        latents = callback_kwargs.get("latents")
        num_samples = int(latents.shape[0]) if isinstance(latents, torch.Tensor) else 0
        num_steps = int(getattr(pipeline, "_num_timesteps", 0) or len(getattr(pipeline.scheduler, "timesteps", [])))
        run = _Run(pipeline, adapter, num_samples, num_steps, call.get("height"), call.get("width"))

        samples = self._sample_prompts(call)
        if not samples:
            run.disabled = "no prompt text: the pipeline was called with prompt_embeds; pass prompt= to the hook"
        elif len(samples) != num_samples:
            run.disabled = f"{len(samples)} prompts x images do not match the {num_samples} latents of the batch"
        elif "prompt_embeds" not in self._tensors(run, callback_kwargs):
            run.disabled = "the pipeline did not pass prompt_embeds to the callback"
        if run.disabled:
            logger.warning("PromptLoopHook disabled for this call: %s", run.disabled)
            samples = samples or [""] * num_samples
        self._run = run
        self.loop.start(samples, num_steps, meta={"backbone": adapter.family, "pipeline": type(pipeline).__name__,
                                                  "preview": self._preview_name()})
        if run.disabled:
            self.loop.trace.meta["disabled"] = run.disabled

    def _sample_prompts(self, call: dict[str, Any]) -> list[str]:
        """One prompt per sample of the running call (pipelines repeat each prompt
        ``num_images_per_prompt`` times, consecutively)."""
        prompts = self.prompt if self.prompt is not None else call.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        per_prompt = int(call.get("num_images_per_prompt") or 1)
        return [p for p in (prompts or []) for _ in range(per_prompt)]

    def _prepare_plan(self, call: dict[str, Any]) -> None:
        samples = self._sample_prompts(call)
        steps = call.get("num_inference_steps")
        if samples and isinstance(steps, int):
            self.loop.prepare(samples, steps)

    def _end_run(self) -> None:
        run = self._run
        trace = self.loop.finish()
        if run is not None:
            trace.meta.update(preview_s=round(run.preview_s, 4), encode_s=round(run.encode_s, 4))
        self._trace = trace
        self._run = None
        self._drop_capture()

    def _install_capture(self, pipeline: Any) -> None:
        """Watch the pipeline's scheduler steps (for x0 previews), reusing a capture already
        installed there by the caller, e.g. a trainer recording the trajectory."""
        scheduler = getattr(pipeline, "scheduler", None)
        if scheduler is None:
            return
        existing = SchedulerCapture.on(scheduler)
        if existing is not None:
            if existing is not self._capture:
                self._drop_capture()
                self._capture, self._owns_capture = existing, False
            return
        self._drop_capture()
        self._capture, self._owns_capture = SchedulerCapture(scheduler), True

    def _drop_capture(self) -> None:
        if self._capture is not None and self._owns_capture:
            self._capture.remove()
        self._capture, self._owns_capture = None, False

    def _tensors(self, run: _Run, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The callback tensors, completed from the running call where the pipeline did not pass
        them: ``FluxPipeline`` does not read ``PipelineCallback.tensor_inputs``, but it does take
        ``prompt_embeds`` back from the callback's output."""
        wanted = run.adapter.tensor_inputs(getattr(run.pipeline, "_callback_tensor_inputs", []))
        missing = [name for name in wanted if name not in callback_kwargs]
        if not missing:
            return callback_kwargs
        frame = _calling_pipeline_frame(run.pipeline)
        found = {name: frame.f_locals.get(name) for name in missing} if frame is not None else {}
        del frame
        return {**callback_kwargs, **{k: v for k, v in found.items() if isinstance(v, torch.Tensor)}}

    # -- previews and encoding --------------------------------------------------------------
    def _preview_name(self) -> str:
        return self.preview if isinstance(self.preview, str) else getattr(self.preview, "kind", type(self.preview).__name__)

    def _decoder(self, run: _Run) -> PreviewDecoder:
        key = id(run.pipeline)
        if key not in self._decoders:
            self._decoders[key] = make_preview_decoder(
                self.preview, vae=getattr(run.pipeline, "vae", None), taesd=self.taesd,
                latent_format=run.adapter.latent_format(run.pipeline), size=self.preview_size,
            )
        return self._decoders[key]

    def _previews(self, run: _Run, callback_kwargs: dict[str, Any]):
        start = time.perf_counter()
        try:
            cap = self._capture.latest if self._capture is not None else None
            if cap is not None and self._capture.seq > run.capture_seq:
                x0, source = self._capture.x0(cap)
            else:
                x0, source = callback_kwargs["latents"], "latents"
            self.loop.trace.meta.setdefault("preview_source", source)
            latents = run.adapter.unpack_latents(run.pipeline, x0, run.height, run.width)
            return previews_from_latents(self._decoder(run), latents)
        except Exception as exc:  # noqa: BLE001 - a preview problem must not break a generation
            logger.warning("preview failed (%s: %s); the policy sees no image", type(exc).__name__, exc)
            self.loop.trace.meta["preview_error"] = f"{type(exc).__name__}: {exc}"
            return [None] * run.num_samples
        finally:
            run.preview_s += time.perf_counter() - start

    def _encode_and_swap(self, run: _Run, changes: dict[int, str], callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        indices = sorted(changes)
        texts = [changes[i] for i in indices]
        # One batched encode of the changed samples, in sample order (the same batch a
        # hand-written callback would encode, so results match it bit for bit).
        encoded = run.adapter.encode(run.pipeline, texts, callback_kwargs)
        updates = run.adapter.apply(callback_kwargs, encoded, indices, run.num_samples)
        run.encode_s += time.perf_counter() - start
        return updates
