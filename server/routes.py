"""The sidecar's endpoints, on an ``APIRouter`` (``create_app`` includes it).

Each handler takes its request body and the app's :class:`~.state.AppState`, so it can be read
and called on its own. Refinements and plans go through the library's refine path
(``GenerativePolicy.arefine`` / ``aplan``, via the engine).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

import promptloop
from promptloop.policies.base import InputTooLongError, SamplingConfig
from promptloop.preview import LATENT_FORMATS
from promptloop.refinement import Observation, Refinement
from promptloop.wire import PayloadError, decode_latents, encode_tensors, load_image, open_image

from .auth import require_admin_key, require_api_key
from .backbones import BackboneStore
from .engine import DEFAULT, AdapterError, Engine
from .errors import APIError, error_response
from .limits import check_plan, check_refine
from .schemas import (
    AdapterRequest,
    BackboneInfo,
    Info,
    PlanRequest,
    PlanResponse,
    RefineItem,
    RefinementOut,
    RefineRequest,
    RefineResponse,
    Sampling,
)
from .settings import Settings
from .state import AppState, State

logger = logging.getLogger("promptloop.server")

router = APIRouter()


# -- service ---------------------------------------------------------------------------------------
@router.get("/health", tags=["service"], summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", tags=["service"], summary="Readiness: 200 once the policy is loaded and warmed up")
async def ready(state: State):
    if state.ready:
        return {"status": "ready"}
    if state.load_error:
        return error_response(503, "load_failed", f"the policy failed to load: {state.load_error}")
    return error_response(503, "loading", "the policy is still loading")


@router.get("/metrics", tags=["service"], summary="Prometheus metrics")
async def metrics_endpoint(state: State):
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/info", tags=["service"], response_model=Info, dependencies=[Depends(require_api_key)],
            summary="Policy, adapters, backbones and limits")
async def info(state: State):
    settings, engine, store = state.settings, state.engine, state.backbones
    held = [
        BackboneInfo(name=b.name, path=b.path, family=b.family, latent_format=b.latent_format.name,
                     latent_channels=b.latent_format.channels, pooled=b.pooled)
        for b in (store.backbones.values() if store else [])
    ]
    sampling = engine.default_sampling if engine is not None and engine.policy is not None else None
    return Info(
        version=promptloop.__version__,
        backend=engine.backend if engine else settings.resolved_backend(),
        model=engine.model if engine else settings.policy,
        adapter=engine.adapter if engine else settings.adapter,
        adapters=engine.adapters if engine else dict(settings.adapters),
        lora_enabled=engine.lora_enabled if engine else bool(settings.enable_lora),
        backbones=held,
        latent_formats=list(LATENT_FORMATS),
        ready=state.ready,
        limits={
            "max_body_bytes": settings.max_body_bytes, "max_image_pixels": settings.max_image_pixels,
            "max_request_pixels": settings.max_request_pixels,
            "max_latent_elements": settings.max_latent_elements, "max_batch": settings.max_batch,
            "max_prompt_chars": settings.max_prompt_chars, "max_history": settings.max_history,
            "max_new_tokens": settings.max_new_tokens_limit,
            "max_input_tokens": engine.input_token_limit() if engine is not None else settings.max_input_tokens,
            "request_timeout_s": settings.request_timeout_s,
        },
        sampling=vars(sampling) if sampling is not None else {},
    )


# -- policy ----------------------------------------------------------------------------------------
@router.post("/refine", tags=["policy"], response_model=RefineResponse, dependencies=[Depends(require_api_key)],
             summary="Refine one prompt or a batch, from preview images or a latent")
async def refine(body: RefineRequest, state: State) -> RefineResponse:
    return await _with_timeout(state, _refine(state.ready_engine(), body, state))


async def _refine(engine: Engine, body: RefineRequest, state: AppState) -> RefineResponse:
    settings, metrics = state.settings, state.metrics
    start = time.perf_counter()
    labelled = body.labelled_items()
    check_refine(labelled, body.sampling, settings)
    items = [item for _, item in labelled]
    sampling = sampling_for(engine, body.sampling)
    adapter = adapter_for(engine, body.adapter, body.use_base_model)
    store = state.backbones or BackboneStore()
    if body.backbone is not None:
        store.get(body.backbone)  # a name the server does not hold is an error, needed or not
    loop = asyncio.get_running_loop()
    if body.latent is not None:
        previews = await _decode_latent(body, len(items), store, settings)
    else:
        previews = await loop.run_in_executor(None, decode_previews, body, items, settings)
    embed_backbone = None
    if body.return_embeddings:
        embed_backbone = store.resolve(body.backbone, body.latent_format, purpose="return_embeddings")

    t0 = time.perf_counter()
    refinements = await call_policy(engine.refine(observations(items, previews), sampling, adapter), state)
    metrics.generation_latency.observe(time.perf_counter() - t0)
    metrics.batch_size.observe(len(items))
    for ref in refinements:
        metrics.refinements.labels(ref.fallback.value if ref.fallback else "applied").inc()
    embeddings = None
    if embed_backbone is not None:
        tensors = await loop.run_in_executor(None, embed_backbone.encode, [r.text for r in refinements])
        embeddings = encode_tensors(tensors)
    return RefineResponse(
        prompt=refinements[0].text,
        refinements=[out(r, sampling) for r in refinements],
        embeddings=embeddings,
        backbone=embed_backbone.name if embed_backbone is not None else None,
        model=engine.model,
        adapter=engine.adapter if adapter is DEFAULT else adapter,
        latency_s=time.perf_counter() - start,
    )


@router.post("/plan", tags=["policy"], response_model=PlanResponse, dependencies=[Depends(require_api_key)],
             summary="Ahead mode: write the prompts for all refinement steps at once")
async def plan(body: PlanRequest, state: State) -> PlanResponse:
    return await _with_timeout(state, _plan(state.ready_engine(), body, state))


async def _plan(engine: Engine, body: PlanRequest, state: AppState) -> PlanResponse:
    start = time.perf_counter()
    check_plan(body, state.settings)
    sampling = sampling_for(engine, body.sampling)
    adapter = adapter_for(engine, body.adapter, body.use_base_model)
    plans = await call_policy(engine.plan(body.prompts, body.steps, body.num_steps, sampling, adapter), state)
    return PlanResponse(plans=[[out(r, sampling) for r in plan] for plan in plans], model=engine.model,
                        adapter=engine.adapter if adapter is DEFAULT else adapter,
                        latency_s=time.perf_counter() - start)


# -- admin -----------------------------------------------------------------------------------------
@router.post("/admin/adapter", tags=["admin"], dependencies=[Depends(require_admin_key)],
             summary="Load a LoRA adapter and/or make it the default (admin key)")
async def admin_adapter(body: AdapterRequest, state: State):
    engine = state.ready_engine()
    try:
        if body.path is not None:  # with a name (schema)
            await engine.load_adapter(body.name, body.path)
        if body.make_default:
            await engine.set_adapter(body.name)
    except AdapterError as exc:
        raise APIError(exc.status, "adapter_error", str(exc)) from None
    logger.info("adapter now %r (loaded: %s)", engine.adapter, engine.adapters)
    return {"adapter": engine.adapter, "adapters": engine.adapters}


# -- the handlers' steps ---------------------------------------------------------------------------
def sampling_for(engine: Engine, overrides: Sampling | None) -> SamplingConfig:
    """The engine's decoding defaults with the request's overrides."""
    if overrides is None:
        return engine.default_sampling
    return replace(engine.default_sampling, **overrides.model_dump(exclude_none=True))


def adapter_for(engine: Engine, name: str | None, use_base: bool):
    """The adapter a request asks for: ``None`` (base model), ``DEFAULT`` or a loaded adapter's name."""
    if use_base:  # and no name (schema)
        return None
    if name is None:
        return DEFAULT
    try:
        engine.check_adapter(name)
    except AdapterError as exc:
        raise APIError(exc.status, "unknown_adapter", str(exc)) from None
    return name


def decode_previews(body: RefineRequest, items: list[RefineItem], settings: Settings) -> list[Any]:
    """The items' preview images: every header is read and the request's pixels are counted
    before any image is decoded."""
    fields = [f"items[{i}].image" if body.items is not None else "image" for i in range(len(items))]
    opened = [
        open_image(item.image, field=field, max_bytes=settings.max_body_bytes, max_pixels=settings.max_image_pixels)
        if item.image is not None else None
        for item, field in zip(items, fields)
    ]
    sizes = [image.width * image.height for image in opened if image is not None]
    if sum(sizes) > settings.max_request_pixels:
        raise PayloadError(
            f"the request's {len(sizes)} preview image(s) hold {sum(sizes)} pixels in all, more than this "
            f"server's limit per request {settings.max_request_pixels} (max_request_pixels)",
            status=413, field="image",
        )
    return [load_image(image, field=field) if image is not None else None for image, field in zip(opened, fields)]


async def _decode_latent(body: RefineRequest, count: int, store: BackboneStore, settings: Settings) -> list[Any]:
    """The request's latent decoded to ``count`` previews by a backbone's VAE (limits checked first)."""
    backbone = store.resolve(body.backbone, body.latent_format, purpose="decoding a latent")
    latents = decode_latents(body.latent, max_bytes=settings.max_body_bytes)
    if latents.numel() > settings.max_latent_elements:
        raise PayloadError(
            f"latent has {latents.numel()} elements, more than the limit {settings.max_latent_elements}",
            status=413, field="latent",
        )
    latents = backbone.check_latents(latents, count, height=body.height, width=body.width,
                                     max_pixels=settings.max_image_pixels,
                                     max_request_pixels=settings.max_request_pixels)
    return await asyncio.get_running_loop().run_in_executor(
        None, partial(backbone.decode, latents, slice_pixels=settings.max_image_pixels)
    )


def observations(items: list[RefineItem], previews: list[Any]) -> list[Observation]:
    """What the policy sees of each item."""
    return [
        Observation(
            original_prompt=item.prompt,
            current_prompt=item.current_prompt if item.current_prompt is not None else item.prompt,
            step=int(item.step), num_steps=int(item.num_steps), timestep=item.timestep,
            preview=preview, history=list(item.history), sample_index=item.sample_index,
        )
        for item, preview in zip(items, previews)
    ]


async def call_policy(call, state: AppState):
    """Await the engine's refine/plan, turning the policy's failures into answers."""
    try:
        return await call
    except AdapterError as exc:
        raise APIError(exc.status, "unknown_adapter", str(exc)) from None
    except InputTooLongError as exc:
        state.metrics.rejected.labels("input_too_long").inc()
        raise APIError(413, "input_too_long", str(exc)) from None
    except (TimeoutError, asyncio.TimeoutError):
        raise APIError(504, "policy_timeout", "the policy did not answer in time") from None
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.exception("policy generation failed")
        raise APIError(503, "policy_error", f"the policy failed: {type(exc).__name__}: {exc}") from None


async def _with_timeout(state: AppState, coro):
    timeout = state.settings.request_timeout_s
    try:
        return await asyncio.wait_for(coro, timeout=timeout)
    except asyncio.TimeoutError:
        state.metrics.rejected.labels("timeout").inc()
        raise APIError(504, "timeout", f"request not answered within {timeout:g} s") from None


def out(ref: Refinement, sampling: SamplingConfig) -> RefinementOut:
    """A refinement as answered (token ids and log-probs only when asked for)."""
    logprobs = sampling.return_logprobs
    return RefinementOut(
        text=ref.text, applied=ref.applied, fallback=ref.fallback.value if ref.fallback else None,
        raw_text=ref.raw_text, error=ref.error, token_ids=ref.token_ids if logprobs else None,
        logprobs=ref.logprobs if logprobs else None,
    )
