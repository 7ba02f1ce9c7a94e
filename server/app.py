"""The FastAPI app of the sidecar: ``create_app(settings)``.

Endpoints (``routes.py``)
    ``POST /refine``          refine one prompt or a batch (preview images or a latent)
    ``POST /plan``            ``ahead`` mode: all refinement prompts up front
    ``GET  /health``          liveness (the process answers)
    ``GET  /ready``           readiness (policy loaded and warmed up; 503 before)
    ``GET  /info``            policy, adapters, backbones, limits
    ``GET  /metrics``         Prometheus
    ``POST /admin/adapter``   load a LoRA adapter and/or switch the default (admin key)
    ``GET  /docs``            OpenAPI docs (``/openapi.json``)

Bad input always gets a 4xx with ``{"error": code, "detail": message, "status": n}``
(``errors.py``); the policy's own failures (a timeout, a dead engine) get 503/504, never a hang.
Keys are checked in ``auth.py``, request shapes in ``schemas.py``; what the app holds is an
:class:`~.state.AppState` at ``app.state.promptloop``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware

import promptloop
from promptloop.refinement import Observation

from .backbones import BackboneStore
from .engine import Engine, build_engine
from .errors import ERROR_RESPONSES, EXCEPTION_HANDLERS
from .metrics import Metrics
from .middleware import BodyLimitMiddleware, count_requests
from .routes import router
from .settings import Settings
from .state import AppState

logger = logging.getLogger("promptloop.server")

_WARMUP_PROMPT = "a photo of a cat"
_DESCRIPTION = (
    "Refines text-to-image prompts mid-trajectory with a multimodal policy. `POST /refine` takes "
    "the prompt(s), the step, and a preview image or a latent; it returns the refined prompt(s) and, "
    "on request, their embeddings for a backbone the server holds."
)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    backbones: BackboneStore | None = None,
) -> FastAPI:
    """Build the sidecar app. ``engine``/``backbones`` may be given pre-built (tests, embedding);
    otherwise they are built from ``settings`` and loaded when the app starts (in the
    background when ``settings.load_in_background``: ``/ready`` answers 503 until done)."""
    settings = settings or Settings()
    state = AppState(settings, Metrics(), engine=engine, backbones=backbones)
    app = FastAPI(
        title="PromptLoop sidecar",
        version=promptloop.__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.promptloop = state
    app.include_router(router)
    app.add_middleware(BaseHTTPMiddleware, dispatch=count_requests)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.receive_timeout_s, metrics=state.metrics)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Load the policy (in the background, or before serving), and stop its engine at the end."""
    state: AppState = app.state.promptloop
    if state.settings.load_in_background:
        state.load_task = asyncio.create_task(load(app), name="promptloop-load")
    else:
        await load(app)
        if state.load_error:
            raise RuntimeError(state.load_error)
    try:
        yield
    finally:
        task = state.load_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001, S110 - cancelled on shutdown: its outcome is moot
                pass
        state.ready = False
        state.metrics.ready.set(0)
        if state.engine is not None:
            try:
                await state.engine.stop()
            except Exception:
                logger.exception("stopping the policy engine failed")


async def load(app: FastAPI) -> None:
    """Build and start the engine, load the backbones, warm up; on failure record why (and stop
    the server when ``exit_on_load_failure``)."""
    state: AppState = app.state.promptloop
    settings = state.settings
    loop = asyncio.get_running_loop()
    try:
        if state.engine is None:
            state.engine = await loop.run_in_executor(None, build_engine, settings)
        await state.engine.start()
        if state.backbones is None:
            state.backbones = await loop.run_in_executor(
                None,
                lambda: BackboneStore.load(
                    settings.backbones, device=settings.backbone_device, dtype=settings.backbone_dtype,
                    preview=settings.preview, preview_size=settings.preview_size,
                ),
            )
        if settings.warmup:
            await _warmup(state.engine)
        state.ready = True
        state.metrics.ready.set(1)
        logger.info("PromptLoop sidecar ready: %s", state.engine.info())
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        logger.exception("loading the policy failed")
        state.load_error = f"{type(exc).__name__}: {exc}"
        server = getattr(app.state, "uvicorn_server", None)
        if settings.exit_on_load_failure and server is not None:
            server.should_exit = True


async def _warmup(engine: Engine) -> None:
    """One tiny generation with an image, so the first client does not pay for lazy set-up."""
    from PIL import Image

    obs = Observation(_WARMUP_PROMPT, _WARMUP_PROMPT, 0, 2, preview=Image.new("RGB", (64, 64), (128, 128, 128)))
    sampling = replace(engine.default_sampling, max_new_tokens=2)
    try:
        await engine.refine([obs], sampling)
    except Exception:
        logger.warning("warm-up generation failed", exc_info=True)
