"""``promptloop serve``: run the sidecar under uvicorn. Heavy imports happen inside ``serve``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer


def _named(values: list[str] | None, what: str) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the folder) -> ``{name: path}``."""
    out: dict[str, str] = {}
    for value in values or []:
        if "=" in value and not value.startswith(("http://", "https://")):
            name, path = value.split("=", 1)
        else:
            path = value
            name = Path(value.rstrip("/")).name or what
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise typer.BadParameter(f"expected NAME=PATH or PATH, got {value!r}", param_hint=f"--{what}")
        if name in out:
            raise typer.BadParameter(f"{what} name {name!r} given twice", param_hint=f"--{what}")
        out[name] = path
    return out


def _engine_args(values: list[str] | None) -> dict:
    out = {}
    for value in values or []:
        if "=" not in value:
            raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--engine-arg")
        key, raw = value.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def serve(
    policy: Annotated[str, typer.Option(
        "--policy", help="Policy checkpoint (local folder or hub id), or for --backend openai the endpoint's "
        "base URL (e.g. http://127.0.0.1:8000/v1).", show_default=False)],
    backend: Annotated[str, typer.Option(
        help="vllm (in-process AsyncLLM, continuous batching), transformers (in-process, micro-batched), "
        "openai (forward to an OpenAI-compatible endpoint), or auto (vllm when installed).")] = "auto",
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", help="LoRA adapter to load at start, NAME=PATH or PATH (repeatable). For openai: "
        "NAME=SERVED_MODEL_NAME.")] = None,
    default_adapter: Annotated[str | None, typer.Option(
        help="Adapter used when a request names none (default: the first --adapter; 'none' for the base "
        "model).")] = None,
    openai_model: Annotated[str | None, typer.Option(
        help="openai backend: the served model name (default: the endpoint's first model).")] = None,
    openai_api_key: Annotated[str | None, typer.Option(
        envvar="PROMPTLOOP_OPENAI_API_KEY", help="openai backend: key for the endpoint.")] = None,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", help="Diffusers checkpoint whose text encoders and VAE to hold, NAME=PATH or PATH "
        "(repeatable): lets clients send latents and ask for prompt embeddings.")] = None,
    backbone_device: Annotated[str | None, typer.Option(help="Device for backbones (default cpu).")] = None,
    backbone_dtype: Annotated[str | None, typer.Option(help="dtype for backbones: float32, float16, "
                                                          "bfloat16.")] = None,
    preview: Annotated[str, typer.Option(help="How latents are decoded: vae or linear.")] = "vae",
    preview_size: Annotated[int, typer.Option(help="Longer side of decoded previews, pixels.")] = 256,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    api_key: Annotated[str | None, typer.Option(
        envvar="PROMPTLOOP_API_KEY", help="Require this key ('Authorization: Bearer KEY' or 'X-API-Key').")] = None,
    admin_key: Annotated[str | None, typer.Option(
        envvar="PROMPTLOOP_ADMIN_KEY", help="Key for /admin endpoints (default: --api-key; without either "
        "they are off).")] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB (413 beyond).")] = 32.0,
    max_image_pixels: Annotated[int, typer.Option(
        help="Largest preview image, or image a latent decodes to, pixels (413 beyond); latents are decoded in "
        "slices of this many pixels.")] = 2048 * 2048,
    max_request_pixels: Annotated[int, typer.Option(
        help="Most pixels of one request's preview images, or of the images its latents decode to, in all "
        "(413 beyond).")] = 4 * 2048 * 2048,
    max_batch: Annotated[int, typer.Option(help="Most items in one /refine request.")] = 64,
    max_input_tokens: Annotated[int | None, typer.Option(
        help="Longest policy input in tokens, images included (413 beyond; default: the model's context "
        "length less the request's max_new_tokens). vllm and transformers backends.")] = None,
    request_timeout: Annotated[float, typer.Option(help="Seconds to answer one request (504 beyond).")] = 120.0,
    max_concurrency: Annotated[int, typer.Option(help="Most open requests (503 beyond).")] = 512,
    max_new_tokens: Annotated[int, typer.Option(help="Default token budget of a refinement.")] = 96,
    temperature: Annotated[float, typer.Option(
        help="Default sampling temperature: 0 (greedy) or 0.01 to 2.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Default nucleus sampling p.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Default sampling seed.")] = None,
    dtype: Annotated[str, typer.Option(help="Policy dtype: auto, float32, float16, bfloat16.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option(help="vllm: context length.")] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(help="vllm: fraction of GPU memory.")] = None,
    kv_cache_mb: Annotated[int | None, typer.Option(help="vllm: KV cache size, MiB (CPU default 512).")] = None,
    enforce_eager: Annotated[bool | None, typer.Option(
        "--enforce-eager/--no-enforce-eager", help="vllm: skip CUDA graphs / compilation.")] = None,
    enable_lora: Annotated[bool | None, typer.Option(
        "--enable-lora/--no-enable-lora", help="vllm: allow LoRA adapters (on when --adapter is given; needed "
        "to load adapters later through /admin/adapter).")] = None,
    max_lora_rank: Annotated[int, typer.Option(help="vllm: largest LoRA rank.")] = 16,
    engine_arg: Annotated[list[str] | None, typer.Option(
        "--engine-arg", help="vllm: any other EngineArgs field, KEY=VALUE with a JSON value (repeatable).")] = None,
    device: Annotated[str | None, typer.Option(help="transformers: device (default cuda if available).")] = None,
    batch_size: Annotated[int, typer.Option(help="transformers: most conversations per generate call.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="transformers: how long to gather a batch.")] = 5.0,
    wait_for_load: Annotated[bool, typer.Option(
        "--wait-for-load/--load-in-background", help="Load the policy before listening, or listen at once "
        "(/ready says 503 until loaded).")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the PromptLoop sidecar: POST /refine over HTTP, with the policy served by vLLM
    (or transformers, or an OpenAI-compatible endpoint). Docs at http://HOST:PORT/docs."""
    import logging

    import uvicorn

    from promptloop.server.app import create_app
    from promptloop.server.settings import Settings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    adapters = _named(adapter, "adapter")
    if default_adapter is None:
        chosen = next(iter(adapters), None)
    elif default_adapter.lower() == "none":
        chosen = None
    else:
        chosen = default_adapter
    try:
        settings = Settings(
            policy=policy, backend=backend, adapters=adapters, adapter=chosen, openai_model=openai_model,
            openai_api_key=openai_api_key, backbones=_named(backbone, "backbone"), backbone_device=backbone_device,
            backbone_dtype=backbone_dtype, preview=preview, preview_size=preview_size, host=host, port=port,
            api_key=api_key, admin_key=admin_key, max_body_bytes=int(max_body_mb * 2**20),
            max_image_pixels=max_image_pixels, max_request_pixels=max_request_pixels, max_batch=max_batch, max_input_tokens=max_input_tokens,
            request_timeout_s=request_timeout,
            max_concurrency=max_concurrency, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=seed, dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_mb * 2**20 if kv_cache_mb else None, enforce_eager=enforce_eager,
            enable_lora=enable_lora, max_lora_rank=max_lora_rank, engine_kwargs=_engine_args(engine_arg),
            device=device, batch_size=batch_size, batch_wait_ms=batch_wait_ms,
            load_in_background=not wait_for_load, exit_on_load_failure=True,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level.lower(), limit_concurrency=max_concurrency,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s), timeout_keep_alive=5,
    )
    server = uvicorn.Server(config)
    app.state.uvicorn_server = server
    server.run()
    if app.state.promptloop.load_error:
        typer.echo(f"error: the policy failed to load: {app.state.promptloop.load_error}", err=True)
        raise typer.Exit(1)
