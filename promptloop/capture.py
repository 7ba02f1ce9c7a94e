"""See every ``scheduler.step`` of a diffusers run, and optionally replace it.

The hook uses this to find the scheduler's prediction of the clean latent (x0) for its previews;
trainers use it to record trajectories (GRPO rollouts, DDPO, B²-DiffuRL), with their own step
function when they need one (e.g. a DDIM step that also returns the log-probability of the sample
it drew)::

    from promptloop.capture import SchedulerCapture

    with SchedulerCapture(pipe.scheduler, record=True, step_fn=ddim_step_with_logprob) as capture:
        pipe(prompts, callback_on_step_end=hook)
    for rec in capture.records:           # one per denoising step, in order
        rec.sample, rec.prev_sample       # latents before / after the step
        rec.timestep, rec.model_output    # what the denoiser was asked and answered
        capture.x0(rec)                   # the x0 prediction (scheduler's own, or computed)
        rec.extras["log_prob"]            # any other tensor the step function returned

A capture wraps ``step`` on one scheduler *instance* (the class and other instances are left
alone) until :meth:`SchedulerCapture.remove` (or the end of the ``with`` block). While it is in
place the pipeline calls ``step_fn(scheduler, model_output, timestep, sample, *args, **kwargs)``
instead of the scheduler's own ``step``; the step function must return what ``scheduler.step``
returns (pipelines take ``[0]`` of it as the next latents): a tuple, or a
:class:`diffusers.utils.BaseOutput` subclass whose first field is ``prev_sample`` and whose other
tensor fields land in :attr:`StepCapture.extras`.

Only one capture is installed on a scheduler at a time: the hook reuses one that a trainer put
there (:meth:`SchedulerCapture.on`) and leaves it in place when its run ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from typing_extensions import Self

#: ``(scheduler, model_output, timestep, sample, *args, **kwargs) -> what scheduler.step returns``
StepFn = Callable[..., Any]


@dataclass
class StepCapture:
    """What one ``scheduler.step`` call saw and returned (the tensors themselves, not copies)."""

    model_output: torch.Tensor
    timestep: Any
    sample: torch.Tensor  # the latents before the step
    output: Any  # what the step returned (tuple or SchedulerOutput-like)
    step_index: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def prev_sample(self) -> torch.Tensor:
        """The latents after the step."""
        out = self.output
        value = getattr(out, "prev_sample", None)
        return value if value is not None else out[0]


def _output_extras(output: Any) -> dict[str, Any]:
    """Tensor fields of a dict-like step output other than ``prev_sample``."""
    if not hasattr(output, "items"):
        return {}
    return {k: v for k, v in output.items() if k != "prev_sample" and isinstance(v, torch.Tensor)}


def predicted_x0(scheduler: Any, cap: StepCapture) -> tuple[torch.Tensor, str]:
    """The x0 prediction of a scheduler step, and where it came from.

    Uses the scheduler's own ``pred_original_sample`` when it returns one (DDIM, DDPM, Euler,
    LMS, ...; source ``"scheduler"``); otherwise computes it from the model output: flow matching
    ``x0 = x_t - sigma_t * v`` (``"flow"``); epsilon / v / sample prediction from
    ``alphas_cumprod`` (``"epsilon"``, ``"v_prediction"``, ``"sample"``). Falls back to the
    current sample (``"latents"``) for schedulers it does not know.
    """
    out = cap.output
    x0 = getattr(out, "pred_original_sample", None)
    if (x0 is None and isinstance(out, tuple) and len(out) >= 2 and isinstance(out[1], torch.Tensor)
            and out[1].shape == cap.sample.shape):
        x0 = out[1]
    if x0 is not None:
        return x0, "scheduler"
    config = getattr(scheduler, "config", {})
    sample, model_output = cap.sample.float(), cap.model_output.float()
    t = cap.timestep.item() if isinstance(cap.timestep, torch.Tensor) else cap.timestep
    if "FlowMatch" in type(scheduler).__name__ or getattr(config, "use_flow_sigmas", False):
        sigmas = getattr(scheduler, "sigmas", None)
        if cap.step_index is not None and sigmas is not None and cap.step_index < len(sigmas):
            sigma = float(sigmas[cap.step_index])
        else:
            sigma = float(t) / float(config.get("num_train_timesteps", 1000))
        return (sample - sigma * model_output).to(cap.sample.dtype), "flow"
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is not None and t is not None:
        a = alphas[int(t)].float().to(sample.device)
        kind = config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            x0 = (sample - (1 - a).sqrt() * model_output) / a.sqrt()
        elif kind == "v_prediction":
            x0 = a.sqrt() * sample - (1 - a).sqrt() * model_output
        else:
            x0 = model_output
        return x0.to(cap.sample.dtype), kind
    return cap.sample, "latents"


class SchedulerCapture:
    """Wraps ``step`` on one scheduler instance to see (and optionally replace) every step.

    Args:
        scheduler: a diffusers scheduler (the pipeline's ``pipe.scheduler``).
        record: keep every step in :attr:`records` (off: only :attr:`latest` is kept).
        step_fn: run this instead of the scheduler's own ``step`` while the capture is in place
            (see the module docstring for its contract).

    Raises ``RuntimeError`` when ``scheduler`` already has a capture: reuse it
    (:meth:`on`) or remove it first.
    """

    def __init__(self, scheduler: Any, *, record: bool = False, step_fn: StepFn | None = None) -> None:
        if SchedulerCapture.on(scheduler) is not None:
            raise RuntimeError("this scheduler already has a SchedulerCapture; use SchedulerCapture.on(scheduler)")
        self.scheduler = scheduler
        self.record = record
        self.step_fn = step_fn
        self.original = scheduler.step
        self.latest: StepCapture | None = None
        self.records: list[StepCapture] = []
        self.seq = 0  # number of steps seen since installation

        def step(model_output, timestep, sample, *args, **kwargs):
            index = getattr(scheduler, "step_index", None)
            if self.step_fn is None:
                out = self.original(model_output, timestep, sample, *args, **kwargs)
            else:
                out = self.step_fn(scheduler, model_output, timestep, sample, *args, **kwargs)
            self.latest = StepCapture(model_output, timestep, sample, out, index, _output_extras(out))
            if self.record:
                self.records.append(self.latest)
            self.seq += 1
            return out

        step._promptloop_capture = self  # type: ignore[attr-defined]
        self.wrapper = step
        scheduler.step = step

    @staticmethod
    def on(scheduler: Any) -> SchedulerCapture | None:
        """The capture installed on ``scheduler``, if any."""
        return getattr(getattr(scheduler, "__dict__", {}).get("step"), "_promptloop_capture", None)

    @property
    def installed(self) -> bool:
        return self.scheduler.__dict__.get("step") is self.wrapper

    def x0(self, cap: StepCapture | None = None) -> tuple[torch.Tensor, str]:
        """:func:`predicted_x0` of ``cap`` (default: the latest step) with this scheduler."""
        cap = cap if cap is not None else self.latest
        if cap is None:
            raise ValueError("no scheduler step has been captured yet")
        return predicted_x0(self.scheduler, cap)

    def clear(self) -> None:
        """Forget the recorded steps (between rollouts)."""
        self.records.clear()
        self.latest = None

    def remove(self) -> None:
        """Put the scheduler's own ``step`` back (idempotent)."""
        if self.installed:
            if getattr(self.original, "__self__", None) is self.scheduler:
                del self.scheduler.__dict__["step"]  # back to the class method
            else:
                self.scheduler.step = self.original
        self.latest = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


__all__ = ["SchedulerCapture", "StepCapture", "StepFn", "predicted_x0"]
