"""The PromptLoop nodes: policies, the sampler and the trace viewer.

Node conventions follow ComfyUI's own ``nodes.py``: ``INPUT_TYPES`` with tooltips,
``RETURN_TYPES`` / ``RETURN_NAMES`` / ``OUTPUT_TOOLTIPS``, ``FUNCTION``, ``CATEGORY`` and
``DESCRIPTION``. ComfyUI and torch are imported inside the functions that need them, so that
the pack's contract can be imported and checked without ComfyUI (CI).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from .comfy_backend import PREVIEW_MODES

logger = logging.getLogger("promptloop")

CATEGORY = "PromptLoop"
POLICY = "PROMPTLOOP_POLICY"
TRACE = "PROMPTLOOP_TRACE"
LOOP_MODES = ("sync", "async", "ahead")  # promptloop.loop.MODES (kept here so INPUT_TYPES needs no import)
LOCAL_BACKENDS = ("transformers", "vllm")
REMOTE_PROTOCOLS = ("promptloop", "openai")
MODEL_FOLDER = "promptloop"  # ComfyUI/models/promptloop/<policy dir> is searched for local policies

# Used only when ComfyUI is not importable (CI contract tests); inside ComfyUI the real lists are used.
_FALLBACK_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m", "ddim", "uni_pc"]
_FALLBACK_SCHEDULERS = ["simple", "normal", "karras", "exponential", "sgm_uniform", "ddim_uniform", "beta"]


def _sampler_lists() -> tuple[list[str], list[str]]:
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except Exception:  # noqa: BLE001 - ComfyUI not present (CI) or not importable here
        return list(_FALLBACK_SAMPLERS), list(_FALLBACK_SCHEDULERS)


def policy_folders() -> list[str]:
    """Where ``Load PromptLoop Policy`` looks for a policy or adapter given by name.

    ``ComfyUI/models/promptloop/`` (registered with ``folder_paths`` as ``promptloop``, so that
    ``extra_model_paths.yaml`` may add more); empty outside ComfyUI.
    """
    try:
        import folder_paths
    except ImportError:  # outside ComfyUI
        return []
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    register = getattr(folder_paths, "add_model_folder_path", None)
    if register is None:  # an older ComfyUI
        return [default]
    register(MODEL_FOLDER, default)
    return list(folder_paths.get_folder_paths(MODEL_FOLDER))


def hub_unusable(timeout_s: float = 3.0) -> str | None:
    """Why a hub id cannot be downloaded now (``HF_HUB_OFFLINE``, or the hub does not answer
    within ``timeout_s``), or None when it can. One request, no retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    import httpx

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"{constants.ENDPOINT} cannot be reached ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def cached_hub_snapshot(spec: str) -> str | None:
    """The local Hugging Face cache's snapshot folder of hub id ``spec``, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(spec, local_files_only=True)
    except (HFValidationError, LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_policy_path(spec: str, what: str = "policy") -> str:
    """Where to load ``spec`` from, looking locally first: a path as given, then
    ``<a folder of policy_folders()>/<spec>``; then, as a hub id, the spec itself (to download)
    when the hub can be used, else its copy in the Hugging Face cache. Raises
    :class:`FileNotFoundError` at once (naming the places searched) when none applies."""
    spec = spec.strip()
    if not spec:
        raise ValueError(f"{what}: give a local directory, a name under models/{MODEL_FOLDER}/, or a hub id")
    expanded = os.path.expanduser(spec)
    if os.path.exists(expanded):
        return expanded
    for folder in policy_folders():
        candidate = os.path.join(folder, spec)
        if os.path.exists(candidate):
            return candidate
    reason = hub_unusable()
    if reason is None:
        return spec
    cached = cached_hub_snapshot(spec)
    if cached is not None:
        return cached
    raise not_found_error(what, spec, f"not in the Hugging Face cache, and {reason}")


def not_found_error(what: str, spec: str, why: str) -> FileNotFoundError:
    """The error for a policy/adapter name found nowhere: the places searched and why the hub did not help."""
    searched = [os.path.abspath(os.path.expanduser(spec))] + [os.path.join(f, spec) for f in policy_folders()]
    return FileNotFoundError(
        f"{what} {spec!r} not found. Searched: {', '.join(searched)}. Put a policy saved with save_pretrained "
        f"in ComfyUI/models/{MODEL_FOLDER}/<name>, or give a directory; as a Hugging Face hub id: {why}."
    )


def _first_line(exc: BaseException) -> str:
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"it could not be loaded ({type(exc).__name__}: {cause[:300]})"


def _comfy_device(choice: str) -> str | None:
    if choice != "auto":
        return choice
    try:
        import comfy.model_management

        return str(comfy.model_management.get_torch_device())
    except Exception:  # noqa: BLE001 - outside ComfyUI: the library picks
        return None


# -- policies ---------------------------------------------------------------------------------
class _PolicyNode:
    """What the three policy nodes share: one POLICY output, for the PromptLoop Sampler."""

    RETURN_TYPES = (POLICY,)
    RETURN_NAMES = ("policy",)
    CATEGORY = CATEGORY


class PromptLoopLoadPolicy(_PolicyNode):
    """Load a local policy model (a vision-language model that rewrites prompts)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "policy": ("STRING", {
                    "default": "Qwen/Qwen2.5-VL-3B-Instruct",
                    "tooltip": "A local directory saved with save_pretrained, a folder name under "
                               "ComfyUI/models/promptloop/, or a Hugging Face hub id.",
                }),
                "backend": (list(LOCAL_BACKENDS), {
                    "default": "transformers",
                    "tooltip": "transformers: in-process, CPU or GPU. vllm: in-process vLLM engine "
                               "(needs promptloop[vllm]), fastest on GPU.",
                }),
                "adapter": ("STRING", {
                    "default": "",
                    "tooltip": "Optional LoRA adapter (peft) trained with promptloop train grpo: a directory, a folder "
                               "name under ComfyUI/models/promptloop/, or a hub id. Empty: none.",
                }),
                "device": (["auto", "cpu", "cuda"], {
                    "default": "auto",
                    "tooltip": "Where the policy runs. auto: ComfyUI's device (CPU when ComfyUI runs with --cpu).",
                }),
                "dtype": (["auto", "float32", "bfloat16", "float16"], {
                    "default": "auto", "tooltip": "Weights dtype. auto: bfloat16 on GPU, float32 on CPU.",
                }),
                "max_new_tokens": ("INT", {
                    "default": 96, "min": 8, "max": 1024,
                    "tooltip": "Longest refined prompt the policy may write, in tokens; longer outputs are rejected "
                               "and the current prompt is kept (recorded in the trace).",
                }),
                "temperature": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 2.0, "step": 0.05,
                    "tooltip": "0 = greedy (deterministic). Higher values sample more varied prompts.",
                }),
            }
        }

    OUTPUT_TOOLTIPS = ("The loaded policy, for the PromptLoop Sampler.",)
    FUNCTION = "load"
    DESCRIPTION = "Loads a prompt-refinement policy (e.g. Qwen2.5-VL with a PromptLoop LoRA) to run inside ComfyUI."

    def load(self, policy, backend, adapter, device, dtype, max_new_tokens, temperature):
        from promptloop.policies import SamplingConfig, load_policy

        sampling = SamplingConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature))
        policy_path = resolve_policy_path(policy)
        adapter_path = resolve_policy_path(adapter, "adapter") if adapter.strip() else None
        kwargs: dict[str, Any] = {"backend": backend, "adapter": adapter_path, "sampling": sampling}
        if backend == "transformers":
            kwargs["device"] = _comfy_device(device)
            kwargs["dtype"] = None if dtype == "auto" else dtype
        try:
            loaded = load_policy(policy_path, **kwargs)
        except Exception as exc:
            # A name found nowhere locally was tried as a hub id: say where we looked, not only
            # that the hub could not be reached.
            if not os.path.exists(policy_path):
                raise not_found_error("policy", policy.strip(), _first_line(exc)) from exc
            if adapter_path is not None and not os.path.exists(adapter_path):
                raise not_found_error("adapter", adapter.strip(), _first_line(exc)) from exc
            raise
        return (loaded,)


class PromptLoopRemotePolicy(_PolicyNode):
    """Use a policy served elsewhere: a PromptLoop sidecar, or any OpenAI-compatible endpoint."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "url": ("STRING", {
                    "default": "http://127.0.0.1:8000",
                    "tooltip": "Base URL of the server: a PromptLoop sidecar (promptloop serve) or an "
                               "OpenAI-compatible endpoint such as vllm serve (…/v1).",
                }),
                "protocol": (list(REMOTE_PROTOCOLS), {
                    "default": "promptloop",
                    "tooltip": "promptloop: the sidecar's POST /refine. openai: chat completions with the preview image.",
                }),
                "api_key": ("STRING", {"default": "", "tooltip": "API key, if the server requires one. Empty: none."}),
                "timeout_s": ("FLOAT", {
                    "default": 30.0, "min": 0.5, "max": 600.0, "step": 0.5,
                    "tooltip": "HTTP timeout per request, in seconds.",
                }),
            },
            "optional": {
                "model": ("STRING", {
                    "default": "",
                    "tooltip": "openai protocol only: the served model name (empty: the server's default).",
                }),
            },
        }

    OUTPUT_TOOLTIPS = ("A client for the remote policy, for the PromptLoop Sampler.",)
    FUNCTION = "connect"
    DESCRIPTION = "Connects to a remote PromptLoop sidecar or OpenAI-compatible server that refines prompts."

    def connect(self, url, protocol, api_key, timeout_s, model=""):
        from promptloop.policies import load_policy

        url = url.strip()
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        try:
            import httpx  # noqa: F401 - the clients' transport; fail here, not silently at every refinement
        except ImportError as exc:
            from .install import library_requirement

            raise ImportError(f"the Remote Policy node needs httpx, which ComfyUI's Python lacks: run "
                              f"{sys.executable} -m pip install \"{library_requirement()}\"") from exc
        key = api_key.strip() or None
        if protocol == "promptloop":
            return (load_policy(url, backend="http", api_key=key, timeout_s=float(timeout_s)),)
        return (load_policy(url, backend="openai", api_key=key, model=model.strip() or None, timeout_s=float(timeout_s)),)


class ScriptedPolicy:
    """A policy with no model: line ``n`` of a template is the ``n``-th refinement of each sample.

    Placeholders: ``{original}``, ``{current}``, ``{step}`` (the step just finished, 0-based as
    in schedules and traces), ``{num_steps}``, ``{n}`` (refinement number, counted from 1). Once
    the lines run out the last one repeats.
    """

    def __init__(self, template: str) -> None:
        from promptloop.policies import StaticPolicy

        self.lines = [line.strip() for line in template.splitlines() if line.strip()] or ["{current}"]
        self._static = StaticPolicy(self._rewrite, name="scripted")

    def _rewrite(self, obs) -> str:
        n = len(obs.history)
        line = self.lines[min(n, len(self.lines) - 1)]
        return line.format_map(_Defaults(original=obs.original_prompt, current=obs.current_prompt,
                                         step=obs.step, num_steps=obs.num_steps, n=n + 1))

    def refine(self, observations):
        return self._static.refine(observations)

    def plan(self, prompts, steps, num_steps):
        return self._static.plan(prompts, steps, num_steps)


class _Defaults(dict):
    def __missing__(self, key: str) -> str:  # unknown placeholders stay as written
        return "{" + key + "}"


class PromptLoopScriptedPolicy(_PolicyNode):
    """A policy without a model: prompt edits written by hand, applied at the refine steps."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "template": ("STRING", {
                    "multiline": True,
                    "default": "{current}, detailed\n{current}, sharp focus, soft light",
                    "tooltip": "One line per refinement: line n becomes the prompt at the n-th refinement. "
                               "Placeholders: {original}, {current}, {step} (0-based, as in the schedule), "
                               "{num_steps}, {n} (1 for the first refinement).",
                }),
            }
        }

    OUTPUT_TOOLTIPS = ("A scripted policy, for the PromptLoop Sampler.",)
    FUNCTION = "build"
    DESCRIPTION = ("A model-free policy for ablations and prompt schedules: rewrites the prompt from a template "
                   "at each refinement step.")

    def build(self, template):
        return (ScriptedPolicy(template),)


# -- sampler ----------------------------------------------------------------------------------
class PromptLoopSampler:
    """KSampler with a policy that rewrites the prompt at the refine steps."""

    @classmethod
    def INPUT_TYPES(cls):
        samplers, schedulers = _sampler_lists()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
                "clip": ("CLIP", {"tooltip": "The CLIP model that encodes the prompt and every refined prompt."}),
                "text": ("STRING", {
                    "multiline": True, "dynamicPrompts": True,
                    "tooltip": "The prompt. The policy rewrites it during sampling; each refined prompt is "
                               "re-encoded with the CLIP input.",
                }),
                "negative": ("CONDITIONING", {"tooltip": "The conditioning describing what to exclude (kept as is)."}),
                "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                    "tooltip": "The random seed used for creating the noise.",
                }),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of denoising steps."}),
                "cfg": ("FLOAT", {
                    "default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "The Classifier-Free Guidance scale.",
                }),
                "sampler_name": (samplers, {"tooltip": "The sampling algorithm (ComfyUI's own samplers)."}),
                "scheduler": (schedulers, {"tooltip": "The noise schedule (ComfyUI's own schedulers)."}),
                "denoise": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "The amount of denoising applied; lower values keep the input latent's structure.",
                }),
                "policy": (POLICY, {"tooltip": "The policy that rewrites the prompt (Load / Remote / Scripted policy)."}),
                "schedule": ("STRING", {
                    "default": "evenly:3",
                    "tooltip": "When to refine: fractions of the trajectory '0.2,0.4,0.6', step indices '5,10,15' "
                               "(0-based, refine after that step; the last step never refines), 'evenly:N', "
                               "'every:K', 'random:N' (N steps drawn per sample) or 'none'. A schedule that does "
                               "not parse is rejected when the workflow is queued; steps the run does not have "
                               "only warn (console and trace).",
                }),
                "mode": (list(LOOP_MODES), {
                    "default": "sync",
                    "tooltip": "sync: wait for the policy at each refine step. async: keep sampling while the policy "
                               "thinks; apply its answer async_delay steps later. ahead: the policy writes all "
                               "prompts before sampling, without previews.",
                }),
                "preview": (list(PREVIEW_MODES), {
                    "default": "linear",
                    "tooltip": "What the policy sees of the predicted image: linear (latent->RGB factors, free), "
                               "vae (decode with the vae input, faithful), taesd (models/vae_approx), none.",
                }),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Only for preview = vae: decodes the x0 prediction for the policy."}),
                "preview_size": ("INT", {
                    "default": 256, "min": 28, "max": 2048, "step": 4,
                    "tooltip": "Longer side of the preview image given to the policy, in pixels.",
                }),
                "timeout_s": ("FLOAT", {
                    "default": 60.0, "min": 0.0, "max": 3600.0, "step": 0.5,
                    "tooltip": "Longest wait for one policy answer; past it the current prompt is kept "
                               "(recorded in the trace). 0 = no limit.",
                }),
                "async_delay": ("INT", {
                    "default": 2, "min": -1, "max": 10000,
                    "tooltip": "async mode: the answer for step k is applied after step k + async_delay "
                               "(deterministic). -1: as soon as it arrives (one-step segments while waiting).",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, schedule=None):
        """Called by ComfyUI when the workflow is queued: a schedule that does not parse is
        rejected there (nothing runs, the node is marked with the message). A schedule that
        parses but does not fit the run (a step past the end, ``evenly:0``) only warns as it runs."""
        if schedule is None:  # linked from another node's output: checked when the sampler runs
            return True
        from promptloop.schedule import RefineSchedule

        try:
            RefineSchedule.parse(schedule)
        except ValueError as exc:
            return str(exc)
        return True

    RETURN_TYPES = ("LATENT", TRACE, "STRING", "CONDITIONING")
    RETURN_NAMES = ("latent", "trace", "final_prompt", "final_positive")
    OUTPUT_TOOLTIPS = (
        "The denoised latent.",
        "The trace of the refinements (connect to PromptLoop Trace).",
        "The prompt each sample ended with, one line per sample.",
        "The conditioning of the last segment (e.g. for a hires-fix pass).",
    )
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = ("KSampler whose prompt is rewritten mid-trajectory by a multimodal policy: sampling runs in "
                   "segments, and at each refine step the policy sees the predicted image and the refined prompt "
                   "is re-encoded with CLIP for the following steps.")

    def sample(self, model, clip, text, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
               denoise, policy, schedule, mode, preview, vae=None, preview_size=256, timeout_s=60.0,
               async_delay=2):
        from promptloop.loop import RefineLoop

        from .comfy_backend import ComfySegmentSampler, PromptEncoder, check_interrupt
        from .segments import run_segmented

        delay = None if (mode != "async" or async_delay is None or async_delay < 0) else int(async_delay)
        loop = RefineLoop(policy, schedule, mode=mode, timeout_s=float(timeout_s) if timeout_s else None,
                          async_delay=delay)
        backend = ComfySegmentSampler(model, seed, steps, cfg, sampler_name, scheduler, negative, latent_image,
                                      denoise, preview=preview, preview_size=preview_size, vae=vae)
        encoder = PromptEncoder(clip)
        meta = {"frontend": "comfyui", "sampler": sampler_name, "scheduler": scheduler, "steps": int(steps),
                "cfg": float(cfg), "seed": int(seed), "denoise": float(denoise), "preview": preview,
                "schedule": schedule}
        trace, run = run_segmented(loop, [text] * backend.batch_size, int(steps), backend, encoder,
                                   async_delay=delay, check_interrupt=check_interrupt, meta=meta)
        return (backend.latent_out(), trace, "\n".join(run.final_prompts), run.positive)


# -- trace ------------------------------------------------------------------------------------
def trace_to_image_tensor(image):
    """PIL image -> ComfyUI IMAGE (a ``(1, H, W, 3)`` float tensor in [0, 1])."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def images_to_pil(images) -> list:
    import numpy as np
    from PIL import Image

    if images is None:
        return []
    return [Image.fromarray((np.clip(np.nan_to_num(img.detach().float().cpu().numpy()), 0, 1) * 255).round().astype(np.uint8)) for img in images]


def trace_summary(trace) -> dict:
    """A JSON-safe dict of the trace (no images), as sent to the UI and stored in /history."""
    return json.loads(json.dumps(trace.to_dict(), default=str))


class PromptLoopTrace:
    """Show a PromptLoop trace: a strip of previews with the prompt under each, and as text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "trace": (TRACE, {"tooltip": "The trace output of a PromptLoop Sampler."}),
                "thumb_size": ("INT", {
                    "default": 128, "min": 32, "max": 1024, "step": 8,
                    "tooltip": "Size of each preview thumbnail in the strip, in pixels.",
                }),
                "save": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Also save the trace (trace.json, trace.html, trace.png, previews) under the "
                               "output directory.",
                }),
                "filename_prefix": ("STRING", {
                    "default": "promptloop/trace",
                    "tooltip": "Where to save under the output directory (a numbered folder is created).",
                }),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "The decoded final images, shown as the last column."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("strip", "text")
    OUTPUT_TOOLTIPS = (
        "One row per sample: the preview the policy saw at each refine step with the new prompt under it.",
        "The trace as text: per sample, the prompt after each refinement (or why it was kept).",
    )
    FUNCTION = "show"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = "Renders a PromptLoop trace as an image strip and as text, and optionally saves it."

    def show(self, trace, thumb_size=128, save=True, filename_prefix="promptloop/trace", images=None):
        finals = images_to_pil(images)
        strip = trace.render_strip(thumb=int(thumb_size), images=finals or None)
        text = "".join(f"warning: {w}\n" for w in trace.meta.get("warnings", [])) + trace.to_text()
        ui: dict[str, list] = {"text": [text], "promptloop_trace": [trace_summary(trace)]}
        try:
            ui["images"] = [self._save(trace, strip, filename_prefix, save)]
        except Exception as exc:  # noqa: BLE001 - outside ComfyUI (tests) or an unwritable directory
            logger.warning("PromptLoop trace not saved: %s", exc)
        return {"ui": ui, "result": (trace_to_image_tensor(strip), text)}

    @staticmethod
    def _save(trace, strip, filename_prefix: str, save: bool) -> dict:
        import folder_paths

        kind = "output" if save else "temp"
        base = folder_paths.get_output_directory() if save else folder_paths.get_temp_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, base, strip.width, strip.height)
        file = f"{filename}_{counter:05}_.png"
        strip.save(os.path.join(folder, file))
        if save:
            trace.save(os.path.join(folder, f"{filename}_{counter:05}_"))
        return {"filename": file, "subfolder": subfolder, "type": kind}


NODE_CLASS_MAPPINGS = {
    "PromptLoopLoadPolicy": PromptLoopLoadPolicy,
    "PromptLoopRemotePolicy": PromptLoopRemotePolicy,
    "PromptLoopScriptedPolicy": PromptLoopScriptedPolicy,
    "PromptLoopSampler": PromptLoopSampler,
    "PromptLoopTrace": PromptLoopTrace,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "PromptLoopLoadPolicy": "Load PromptLoop Policy",
    "PromptLoopRemotePolicy": "PromptLoop Remote Policy (sidecar)",
    "PromptLoopScriptedPolicy": "PromptLoop Scripted Policy (no model)",
    "PromptLoopSampler": "PromptLoop Sampler",
    "PromptLoopTrace": "PromptLoop Trace",
}
