"""Configuration of one sidecar process (what ``promptloop serve`` fills from its options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .schemas import check_temperature

BACKENDS = ("auto", "vllm", "transformers", "openai")


@dataclass
class Settings:
    """Everything :func:`promptloop.server.create_app` needs.

    Policy
        ``policy`` is a local directory or hub id (``vllm``/``transformers``), or the base URL of
        an OpenAI-compatible endpoint (``openai``, e.g. ``http://127.0.0.1:8000/v1``).
        ``backend="auto"`` picks ``vllm`` when it is installed, else ``transformers``.
        ``adapters`` maps names to peft LoRA directories loaded at start; ``adapter`` names the
        one used by default (``None``: the base model).
    Backbones
        ``backbones`` maps names to diffusers checkpoints whose text encoders and VAE the server
        loads (without the denoiser) to decode latents and to return prompt embeddings.
    Limits
        Bodies over ``max_body_bytes`` get 413 before they are read; images over
        ``max_image_pixels``, latents that would decode to more than ``max_image_pixels`` and
        latents over ``max_latent_elements`` get 413; so does a request whose preview images,
        or the images its latents decode to, hold more than ``max_request_pixels`` in all
        (checked before anything is decoded; latents are decoded in slices of at most
        ``max_image_pixels``, one slice at a time); so does a policy input (chat text plus
        image tokens) over ``max_input_tokens`` (default: the model's context length less the
        request's ``max_new_tokens``; vllm and transformers backends); one request is answered
        within ``request_timeout_s`` (504 otherwise); a client that sends nothing for
        ``receive_timeout_s`` gets 408.
    """

    policy: str = ""
    backend: str = "auto"
    adapters: dict[str, str] = field(default_factory=dict)
    adapter: str | None = None
    openai_model: str | None = None
    openai_api_key: str | None = None

    backbones: dict[str, str] = field(default_factory=dict)
    backbone_device: str | None = None
    backbone_dtype: str | None = None
    preview: str = "vae"  # how the server decodes latents: "vae" or "linear"
    preview_size: int = 256

    host: str = "127.0.0.1"
    port: int = 8765
    api_key: str | None = None
    admin_key: str | None = None  # defaults to api_key; admin endpoints are off when both are unset

    max_body_bytes: int = 32 * 2**20
    max_image_pixels: int = 2048 * 2048
    max_request_pixels: int = 4 * 2048 * 2048
    max_latent_elements: int = 16 * 2**20
    max_batch: int = 64
    max_prompt_chars: int = 4000
    max_history: int = 32
    max_new_tokens_limit: int = 1024
    max_input_tokens: int | None = None
    request_timeout_s: float = 120.0
    receive_timeout_s: float = 30.0
    max_concurrency: int | None = 512  # uvicorn's limit: more open requests get 503
    graceful_shutdown_s: float = 30.0

    # decoding defaults (a request may override them)
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    # vLLM engine
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None
    enforce_eager: bool | None = None
    enable_lora: bool | None = None
    max_lora_rank: int = 16
    max_loras: int = 4
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    # transformers backend
    device: str | None = None
    batch_size: int = 16
    batch_wait_ms: float = 5.0

    warmup: bool = True
    load_in_background: bool = True
    exit_on_load_failure: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.preview not in ("vae", "linear"):
            raise ValueError("preview must be 'vae' or 'linear'")
        check_temperature(self.temperature)
        if min(self.max_image_pixels, self.max_request_pixels) < 1:
            raise ValueError("max_image_pixels and max_request_pixels must be positive")
        if self.adapter is not None and self.adapter not in self.adapters and self.backend != "openai":
            raise ValueError(f"default adapter {self.adapter!r} is not among the adapters given")

    @property
    def effective_admin_key(self) -> str | None:
        return self.admin_key or self.api_key

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        if self.policy.startswith(("http://", "https://")):
            return "openai"
        from promptloop.policies.vllm import vllm_available

        return "vllm" if vllm_available() else "transformers"
