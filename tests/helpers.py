"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import subprocess
import time

import torch

from promptloop import StaticPolicy


def run_kwargs(family: str, *, cfg: bool = True, steps: int = 6, n: int = 1) -> dict:
    kwargs = {"num_inference_steps": steps, "height": 64, "width": 64, "output_type": "np",
              "num_images_per_prompt": n, "generator": torch.Generator().manual_seed(0)}
    if family != "flux":
        kwargs["guidance_scale"] = 5.0 if cfg else 1.0
    return kwargs


def suffix_policy(suffix: str = ", oil painting") -> StaticPolicy:
    """Appends a suffix: depends only on the current prompt (not on the preview or the step)."""
    return StaticPolicy(lambda obs: obs.current_prompt + suffix, name="suffix")


class RaisingPolicy:
    def refine(self, observations):
        raise RuntimeError("policy exploded")


class SleepingPolicy:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def refine(self, observations):
        time.sleep(self.seconds)
        return suffix_policy().refine(observations)


class EmptyPolicy(StaticPolicy):
    def __init__(self) -> None:
        super().__init__(lambda obs: "   ", name="empty")


class CountingPolicy:
    """Wraps a policy and counts calls and observations."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.refine_calls = 0
        self.plan_calls = 0
        self.observations = []

    def refine(self, observations):
        self.refine_calls += 1
        self.observations.extend(observations)
        return self.inner.refine(observations)

    def plan(self, prompts, steps, num_steps):
        self.plan_calls += 1
        return self.inner.plan(prompts, steps, num_steps)


def record_conditioning(pipe):
    """Record the positive text conditioning the denoiser receives at every step.

    Returns (records, remove) where records is a list of tensors, one per denoiser call.
    """
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    records: list[torch.Tensor] = []

    def pre_hook(module, args, kwargs):
        states = kwargs.get("encoder_hidden_states")
        if states is None and len(args) > 2:
            states = args[2]
        records.append(states.detach().clone())

    handle = denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return records, handle.remove


def make_suffix_policy(suffix: str = ", oil painting") -> StaticPolicy:
    """Module-level factory (picklable) for ProcessPolicy tests."""
    return suffix_policy(suffix)


def make_raising_policy() -> RaisingPolicy:
    return RaisingPolicy()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate a server the test started; kill it if it has not exited after ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
