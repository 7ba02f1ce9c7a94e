"""The FastAPI app of the sidecar: ``create_app(settings)``.

Endpoints
    ``POST /refine``          refine one prompt or a batch (preview images or a latent)
    ``POST /plan``            ``ahead`` mode: all refinement prompts up front
    ``GET  /health``          liveness (the process answers)
    ``GET  /ready``           readiness (policy loaded and warmed up; 503 before)
    ``GET  /info``            policy, adapters, backbones, limits
    ``GET  /metrics``         Prometheus
    ``POST /admin/adapter``   load a LoRA adapter and/or switch the default (admin key)
    ``GET  /docs``            OpenAPI docs (``/openapi.json``)

Bad input always gets a 4xx with ``{"error": code, "detail": message, "status": n}``; the
policy's own failures (a timeout, a dead engine) get 503/504, never a hang. Refinements and plans
go through the library's refine path (``GenerativePolicy.arefine`` / ``aplan``, via the engine).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import promptloop
from promptloop.policies.base import InputTooLongError, SamplingConfig
from promptloop.preview import LATENT_FORMATS
from promptloop.refinement import Observation, Refinement
from promptloop.wire import PayloadError, decode_latents, encode_tensors, load_image, open_image

from .backbones import BackboneStore
from .engine import DEFAULT, AdapterError, Engine, build_engine
from .metrics import Metrics
from .schemas import (
    AdapterRequest,
    BackboneInfo,
    ErrorBody,
    Info,
    PlanRequest,
    PlanResponse,
    RefinementOut,
    RefineRequest,
    RefineResponse,
    Sampling,
)
from .settings import Settings

logger = logging.getLogger("promptloop.server")

_WARMUP_PROMPT = "a photo of a cat"


class APIError(Exception):
    """An answer other than 200, with a message for the client."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def _error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # A message may quote client text: lone surrogates in it become escapes (JSON must be UTF-8).
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": error, "detail": detail, "status": status}, status_code=status, headers=headers)


def _unparsable_body(cause: BaseException) -> str:
    """What was wrong with a JSON body that FastAPI could not parse (its own message is generic)."""
    if isinstance(cause, RecursionError):
        return "JSON body nested too deeply to parse"
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"JSON body holds an integer with more than {sys.get_int_max_str_digits()} digits"
    return f"could not parse the JSON body ({type(cause).__name__}: {str(cause)[:200]})"


# -- body limits and slow clients (pure ASGI, before any parsing) --------------------------------
class BodyLimitMiddleware:
    """Reads the request body itself, with a size cap and a deadline.

    Over ``max_bytes`` (by Content-Length or by counting): 413, after draining what the client
    sends (so it reads the answer instead of a reset connection), up to ``drain_bytes``. A body
    not complete within ``timeout_s``: 408. The app then reads the buffered body.
    """

    def __init__(self, app, *, max_bytes: int, timeout_s: float, metrics: Metrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.drain_bytes = max(256 * 2**20, 4 * max_bytes)
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await self._reject(scope, send, 400, "bad_request", "invalid Content-Length header")
        too_large = length is not None and length > self.max_bytes
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        more = True
        while more:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except asyncio.TimeoutError:
                return await self._reject(
                    scope, send, 408, "request_timeout", f"request body not received within {self.timeout_s:g} s"
                )
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                too_large = True
            if too_large:
                chunks = []
                if size > self.drain_bytes:
                    break  # stop reading; the connection will be closed
            else:
                chunks.append(body)
        if too_large:
            return await self._reject(
                scope, send, 413, "payload_too_large",
                f"request body of {length if length is not None else f'more than {size}'} bytes exceeds the "
                f"limit of {self.max_bytes} bytes",
            )
        buffered = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": buffered, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, scope, send, status: int, error: str, detail: str):
        if self.metrics is not None:
            self.metrics.rejected.labels(error).inc()
        response = _error_response(status, error, detail, headers={"Connection": "close"})

        async def no_body():
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)


# -- the app -------------------------------------------------------------------------------------
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
    metrics = Metrics()
    state: dict[str, Any] = {
        "engine": engine,
        "backbones": backbones,
        "ready": False,
        "load_error": None,
        "load_task": None,
    }

    async def load() -> None:
        loop = asyncio.get_running_loop()
        try:
            if state["engine"] is None:
                state["engine"] = await loop.run_in_executor(None, build_engine, settings)
            await state["engine"].start()
            if state["backbones"] is None:
                state["backbones"] = await loop.run_in_executor(
                    None,
                    lambda: BackboneStore.load(
                        settings.backbones, device=settings.backbone_device, dtype=settings.backbone_dtype,
                        preview=settings.preview, preview_size=settings.preview_size,
                    ),
                )
            if settings.warmup:
                await _warmup(state["engine"])
            state["ready"] = True
            metrics.ready.set(1)
            logger.info("PromptLoop sidecar ready: %s", state["engine"].info())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.exception("loading the policy failed")
            state["load_error"] = f"{type(exc).__name__}: {exc}"
            server = getattr(app.state, "uvicorn_server", None)
            if settings.exit_on_load_failure and server is not None:
                server.should_exit = True

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.load_in_background:
            state["load_task"] = asyncio.create_task(load(), name="promptloop-load")
        else:
            await load()
            if state["load_error"]:
                raise RuntimeError(state["load_error"])
        try:
            yield
        finally:
            task = state["load_task"]
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001
                    pass
            state["ready"] = False
            metrics.ready.set(0)
            if state["engine"] is not None:
                try:
                    await state["engine"].stop()
                except Exception:
                    logger.exception("stopping the policy engine failed")

    app = FastAPI(
        title="PromptLoop sidecar",
        version=promptloop.__version__,
        description=(
            "Refines text-to-image prompts mid-trajectory with a multimodal policy. `POST /refine` takes "
            "the prompt(s), the step, and a preview image or a latent; it returns the refined prompt(s) and, "
            "on request, their embeddings for a backbone the server holds."
        ),
        lifespan=lifespan,
        responses={
            400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 413: {"model": ErrorBody},
            422: {"model": ErrorBody}, 503: {"model": ErrorBody}, 504: {"model": ErrorBody},
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.promptloop = state

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(PayloadError)
    async def _payload_error(request: Request, exc: PayloadError):
        names = {400: "bad_payload", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_payload"}
        return _error_response(exc.status, names.get(exc.status, "bad_payload"), exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msg = err.get("msg", "invalid")
            problems.append(f"{where}: {msg}" if where else msg)
        return _error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI: the body did not parse
            return _error_response(400, "invalid_json", _unparsable_body(exc.__cause__))
        return _error_response(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s", request.url.path)
        return _error_response(500, "internal_error", f"internal error: {type(exc).__name__}")

    # -- metrics of every request ----------------------------------------------------------------
    @app.middleware("http")
    async def _count(request: Request, call_next):
        start = time.perf_counter()
        metrics.in_flight.inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.in_flight.dec()
            route = request.scope.get("route")
            endpoint = route.path if route is not None else "unmatched"
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    # -- auth ------------------------------------------------------------------------------------
    def _presented_key(request: Request) -> str | None:
        auth = request.headers.get("authorization")
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.headers.get("x-api-key")

    def require_api_key(request: Request) -> None:
        if not settings.api_key:
            return
        key = _presented_key(request)
        if key is None:
            raise APIError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(key.encode(), settings.api_key.encode()):
            raise APIError(401, "unauthorized", "wrong API key", {"WWW-Authenticate": "Bearer"})

    def require_admin_key(request: Request) -> None:
        admin = settings.effective_admin_key
        if not admin:
            raise APIError(403, "forbidden", "admin endpoints are off: start the server with --admin-key or --api-key")
        key = _presented_key(request)
        if key is None:
            raise APIError(401, "unauthorized", "missing admin key", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(key.encode(), admin.encode()):
            if settings.api_key and hmac.compare_digest(key.encode(), settings.api_key.encode()):
                raise APIError(403, "forbidden", "this key may refine but not administer; use the admin key")
            raise APIError(401, "unauthorized", "wrong admin key", {"WWW-Authenticate": "Bearer"})

    def ready_engine() -> Engine:
        if not state["ready"]:
            if state["load_error"]:
                raise APIError(503, "not_ready", f"the policy failed to load: {state['load_error']}")
            raise APIError(503, "not_ready", "the policy is still loading; retry when /ready answers 200",
                           {"Retry-After": "5"})
        return state["engine"]

    # -- helpers ---------------------------------------------------------------------------------
    def sampling_for(engine: Engine, overrides: Sampling | None) -> SamplingConfig:
        base = engine.default_sampling
        if overrides is None:
            return base
        changes = overrides.model_dump(exclude_none=True)
        if "max_new_tokens" in changes and changes["max_new_tokens"] > settings.max_new_tokens_limit:
            raise APIError(422, "invalid_request",
                           f"sampling.max_new_tokens {changes['max_new_tokens']} exceeds this server's limit "
                           f"{settings.max_new_tokens_limit}")
        return replace(base, **changes)

    def adapter_for(engine: Engine, name: str | None, use_base: bool):
        if use_base:
            if name is not None:
                raise APIError(422, "invalid_request", "give 'adapter' or 'use_base_model', not both")
            return None
        if name is None:
            return DEFAULT
        try:
            engine.check_adapter(name)
        except AdapterError as exc:
            raise APIError(exc.status, "unknown_adapter", str(exc)) from None
        return name

    def check_batch(size: int, what: str) -> None:
        if size > settings.max_batch:
            raise APIError(413, "batch_too_large", f"{size} {what}, more than the limit {settings.max_batch}")

    def check_text(value: str, where: str, *, allow_empty: bool = False) -> None:
        if not allow_empty and not value.strip():
            raise APIError(422, "invalid_request", f"{where}: must not be empty")
        if len(value) > settings.max_prompt_chars:
            raise APIError(422, "invalid_request",
                           f"{where}: {len(value)} characters, more than the limit {settings.max_prompt_chars}")
        if "\x00" in value:
            raise APIError(422, "invalid_request", f"{where}: contains a NUL character")
        surrogate = next((i for i, ch in enumerate(value) if "\ud800" <= ch <= "\udfff"), None)
        if surrogate is not None:
            raise APIError(422, "invalid_request",
                           f"{where}: lone surrogate U+{ord(value[surrogate]):04X} at character {surrogate} "
                           "(not valid Unicode text)")

    def decode_previews(body: RefineRequest, items: list) -> list[Any]:
        """The items' preview images: every header is read and the request's pixels are
        counted before any image is decoded."""
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

    async def call_policy(call):
        """Await the engine's refine/plan, turning the policy's failures into answers."""
        try:
            return await call
        except AdapterError as exc:
            raise APIError(exc.status, "unknown_adapter", str(exc)) from None
        except InputTooLongError as exc:
            metrics.rejected.labels("input_too_long").inc()
            raise APIError(413, "input_too_long", str(exc)) from None
        except (TimeoutError, asyncio.TimeoutError):
            raise APIError(504, "policy_timeout", "the policy did not answer in time") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("policy generation failed")
            raise APIError(503, "policy_error", f"the policy failed: {type(exc).__name__}: {exc}") from None

    async def with_timeout(coro):
        try:
            return await asyncio.wait_for(coro, timeout=settings.request_timeout_s)
        except asyncio.TimeoutError:
            metrics.rejected.labels("timeout").inc()
            raise APIError(504, "timeout", f"request not answered within {settings.request_timeout_s:g} s") from None

    def out(ref: Refinement, sampling: SamplingConfig) -> RefinementOut:
        logprobs = sampling.return_logprobs  # token ids and log-probs only when asked for
        return RefinementOut(
            text=ref.text, applied=ref.applied, fallback=ref.fallback.value if ref.fallback else None,
            raw_text=ref.raw_text, error=ref.error, token_ids=ref.token_ids if logprobs else None,
            logprobs=ref.logprobs if logprobs else None,
        )

    # -- routes ----------------------------------------------------------------------------------
    @app.get("/health", tags=["service"], summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], summary="Readiness: 200 once the policy is loaded and warmed up")
    async def ready():
        if state["ready"]:
            return {"status": "ready"}
        if state["load_error"]:
            return _error_response(503, "load_failed", f"the policy failed to load: {state['load_error']}")
        return _error_response(503, "loading", "the policy is still loading")

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics")
    async def metrics_endpoint():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/info", tags=["service"], response_model=Info, dependencies=[Depends(require_api_key)],
             summary="Policy, adapters, backbones and limits")
    async def info():
        engine = state["engine"]
        store: BackboneStore | None = state["backbones"]
        held = []
        for b in (store.backbones.values() if store else []):
            held.append(BackboneInfo(name=b.name, path=b.path, family=b.family, latent_format=b.latent_format.name,
                                     latent_channels=b.latent_format.channels, pooled=b.pooled))
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
            ready=state["ready"],
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

    @app.post("/refine", tags=["policy"], response_model=RefineResponse, dependencies=[Depends(require_api_key)],
              summary="Refine one prompt or a batch, from preview images or a latent")
    async def refine(body: RefineRequest) -> RefineResponse:
        return await with_timeout(_refine(ready_engine(), body))

    async def _refine(engine: Engine, body: RefineRequest) -> RefineResponse:
        start = time.perf_counter()
        items = body.normalized_items()
        check_batch(len(items), "items")
        for i, item in enumerate(items):
            at = "" if body.items is None else f"items[{i}]."
            check_text(item.prompt, f"{at}prompt")
            if item.current_prompt is not None:
                check_text(item.current_prompt, f"{at}current_prompt")
            if len(item.history) > settings.max_history:
                raise APIError(422, "invalid_request",
                               f"{at}history: {len(item.history)} entries, more than {settings.max_history}")
            for j, h in enumerate(item.history):
                check_text(h, f"{at}history[{j}]", allow_empty=True)
            if item.step is None or item.num_steps is None:
                raise APIError(422, "invalid_request", f"{at or 'request: '}'step' and 'num_steps' are required")
            if item.step >= item.num_steps:
                raise APIError(422, "invalid_request",
                               f"{at}step: {item.step} is not below num_steps {item.num_steps}")
            if body.latent is not None and item.image is not None:
                raise APIError(422, "invalid_request", "give preview images or a latent, not both")
        sampling = sampling_for(engine, body.sampling)
        adapter = adapter_for(engine, body.adapter, body.use_base_model)
        loop = asyncio.get_running_loop()
        store: BackboneStore = state["backbones"] or BackboneStore()
        if body.backbone is not None:
            store.get(body.backbone)  # a name the server does not hold is an error, needed or not

        # previews
        previews: list[Any] = [None] * len(items)
        if body.latent is not None:
            backbone = store.resolve(body.backbone, body.latent_format, purpose="decoding a latent")
            latents = decode_latents(body.latent, max_bytes=settings.max_body_bytes)
            if latents.numel() > settings.max_latent_elements:
                raise PayloadError(
                    f"latent has {latents.numel()} elements, more than the limit {settings.max_latent_elements}",
                    status=413, field="latent",
                )
            latents = backbone.check_latents(latents, len(items), height=body.height, width=body.width,
                                             max_pixels=settings.max_image_pixels,
                                             max_request_pixels=settings.max_request_pixels)
            previews = await loop.run_in_executor(
                None, partial(backbone.decode, latents, slice_pixels=settings.max_image_pixels)
            )
        else:
            previews = await loop.run_in_executor(None, decode_previews, body, items)
        embed_backbone = None
        if body.return_embeddings:
            embed_backbone = store.resolve(body.backbone, body.latent_format, purpose="return_embeddings")

        observations = [
            Observation(
                original_prompt=item.prompt,
                current_prompt=item.current_prompt if item.current_prompt is not None else item.prompt,
                step=int(item.step), num_steps=int(item.num_steps), timestep=item.timestep,
                preview=preview, history=list(item.history), sample_index=item.sample_index,
            )
            for item, preview in zip(items, previews)
        ]
        t0 = time.perf_counter()
        refinements = await call_policy(engine.refine(observations, sampling, adapter))
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

    @app.post("/plan", tags=["policy"], response_model=PlanResponse, dependencies=[Depends(require_api_key)],
              summary="Ahead mode: write the prompts for all refinement steps at once")
    async def plan(body: PlanRequest) -> PlanResponse:
        return await with_timeout(_plan(ready_engine(), body))

    async def _plan(engine: Engine, body: PlanRequest) -> PlanResponse:
        start = time.perf_counter()
        check_batch(len(body.prompts), "prompts")
        for i, p in enumerate(body.prompts):
            check_text(p, f"prompts[{i}]")
        if any(s < 0 or s >= body.num_steps for s in body.steps):
            raise APIError(422, "invalid_request", f"steps must lie in [0, {body.num_steps})")
        sampling = sampling_for(engine, body.sampling)
        adapter = adapter_for(engine, body.adapter, body.use_base_model)
        plans = await call_policy(engine.plan(body.prompts, body.steps, body.num_steps, sampling, adapter))
        return PlanResponse(plans=[[out(r, sampling) for r in plan] for plan in plans], model=engine.model,
                            adapter=engine.adapter if adapter is DEFAULT else adapter,
                            latency_s=time.perf_counter() - start)

    @app.post("/admin/adapter", tags=["admin"], dependencies=[Depends(require_admin_key)],
              summary="Load a LoRA adapter and/or make it the default (admin key)")
    async def admin_adapter(body: AdapterRequest):
        engine = ready_engine()
        try:
            if body.path is not None:
                if body.name is None:
                    raise APIError(422, "invalid_request", "loading an adapter needs a 'name'")
                await engine.load_adapter(body.name, body.path)
            if body.make_default:
                await engine.set_adapter(body.name)
        except AdapterError as exc:
            raise APIError(exc.status, "adapter_error", str(exc)) from None
        logger.info("adapter now %r (loaded: %s)", engine.adapter, engine.adapters)
        return {"adapter": engine.adapter, "adapters": engine.adapters}

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.receive_timeout_s, metrics=metrics)
    return app


async def _warmup(engine: Engine) -> None:
    """One tiny generation with an image, so the first client does not pay for lazy set-up."""
    from PIL import Image

    obs = Observation(_WARMUP_PROMPT, _WARMUP_PROMPT, 0, 2, preview=Image.new("RGB", (64, 64), (128, 128, 128)))
    sampling = replace(engine.default_sampling, max_new_tokens=2)
    try:
        await engine.refine([obs], sampling)
    except Exception:
        logger.warning("warm-up generation failed", exc_info=True)

