"""The policy behind the sidecar: one async interface over three backends.

An :class:`Engine` refines observations and writes ``ahead`` plans through the library's one
refine path (:meth:`~promptloop.policies.base.GenerativePolicy.arefine` /
:meth:`~promptloop.policies.base.GenerativePolicy.aplan`: messages, generation, parsing), with
the sampling settings of each call, and keeps the bookkeeping of named adapters (which are
loaded, which is the default) once for every backend:

* ``vllm``         - :class:`~promptloop.policies.vllm.AsyncVLLMPolicy`: every request goes
  straight into vLLM's ``AsyncLLM``, which batches concurrent requests continuously.
* ``transformers`` - :class:`~promptloop.policies.transformers.TransformersPolicy` behind a
  micro-batcher: requests arriving within ``batch_wait_ms`` of each other (same sampling
  settings and adapter) share one ``refine`` call on a dedicated worker thread. When a shared
  call fails, its requests are run again one by one, so a request's failure stays its own.
* ``openai``       - :class:`~promptloop.policies.openai.OpenAIChatPolicy`: a client of an
  OpenAI-compatible endpoint (``vllm serve``); adapters are the endpoint's served model names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, replace
from typing import Any

from promptloop.policies.base import GenerativePolicy, SamplingConfig
from promptloop.refinement import Observation, Refinement

from .settings import Settings

logger = logging.getLogger("promptloop.server")

#: Sentinel: "use the engine's current default adapter".
DEFAULT = object()


class AdapterError(ValueError):
    """An adapter operation the client asked for cannot be done (unknown name, LoRA off...)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class Engine:
    """A started policy that refines asynchronously, with named adapters.

    Args:
        policy: the library policy (may be None until :meth:`start` loads it).
        model: what ``/info`` calls the model.
        adapters: adapters known at start, ``{name: path}`` (for OpenAI: ``{name: served model}``).
        adapter: the default adapter's name (None: the base model).
    """

    backend: str = "base"

    def __init__(
        self, policy: GenerativePolicy | None, model: str, *,
        adapters: dict[str, str] | None = None, adapter: str | None = None,
    ) -> None:
        self.policy = policy
        self.model = model
        self._adapters: dict[str, str] = dict(adapters or {})
        self._adapter = adapter
        self._default_sampling: SamplingConfig | None = None

    @property
    def default_sampling(self) -> SamplingConfig:
        """The decoding settings a request gets when it overrides nothing."""
        if self.policy is None:  # not loaded yet
            return SamplingConfig()
        if self._default_sampling is None:
            self._default_sampling = replace(self.policy.sampling)
        return self._default_sampling

    def input_token_limit(self, sampling: SamplingConfig | None = None) -> int | None:
        """The policy's bound on input tokens for a call with ``sampling`` (None: unbounded)."""
        if self.policy is None:
            return None
        return self.policy.input_token_limit(sampling or self.default_sampling)

    async def start(self) -> None:
        """Load weights / start processes (may take long; runs while /ready says 503)."""

    async def stop(self) -> None:
        """Release everything (called on shutdown)."""

    # -- the refine path ------------------------------------------------------------------------
    async def refine(
        self, observations: Sequence[Observation], sampling: SamplingConfig, adapter: Any = DEFAULT
    ) -> list[Refinement]:
        """One refinement per observation, decoded with ``sampling`` under ``adapter``."""
        options = self.generate_options(self.resolve_adapter(adapter))
        return await self.policy.arefine(observations, sampling=sampling, **options)

    async def plan(
        self, prompts: Sequence[str], steps: Sequence[int], num_steps: int, sampling: SamplingConfig,
        adapter: Any = DEFAULT,
    ) -> list[list[Refinement]]:
        """For each prompt, one refinement per step (``ahead`` mode)."""
        options = self.generate_options(self.resolve_adapter(adapter))
        return await self.policy.aplan(prompts, steps, num_steps, sampling=sampling, **options)

    def generate_options(self, adapter: str | None) -> dict[str, Any]:
        """The policy's ``generate`` options that select ``adapter`` (None: the base model)."""
        return {"adapter": adapter}

    # -- adapters -------------------------------------------------------------------------------
    @property
    def lora_enabled(self) -> bool:
        return True

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def adapters(self) -> dict[str, str]:
        return dict(self._adapters)

    def check_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters:
            known = ", ".join(sorted(self._adapters)) or "none"
            raise AdapterError(f"unknown adapter {name!r}; loaded adapters: {known}")

    def resolve_adapter(self, adapter: Any) -> str | None:
        """The adapter a call runs under: ``DEFAULT`` is the engine's default; others are checked."""
        name = self._adapter if adapter is DEFAULT else adapter
        self.check_adapter(name)
        return name

    async def load_adapter(self, name: str, path: str) -> None:
        """Load (or reload) an adapter under ``name``."""
        if not self.lora_enabled:
            raise AdapterError(f"this server's {self.backend} engine was started without LoRA (use --enable-lora)", 409)
        try:
            self._adapters[name] = await self._load_adapter(name, path)
        except (FileNotFoundError, ValueError) as exc:
            raise AdapterError(str(exc)) from None

    async def _load_adapter(self, name: str, path: str) -> str:
        """Load it into the backend; return what to record for it (its path or served name)."""
        raise AdapterError(f"the {self.backend} backend cannot load adapters at runtime", status=409)

    async def set_adapter(self, name: str | None) -> None:
        self.check_adapter(name)
        self._adapter = name

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "adapter": self.adapter, "adapters": self.adapters,
                **self.details()}

    def details(self) -> dict[str, Any]:
        """What else ``/info`` says about this backend."""
        return {}


# -- vLLM ---------------------------------------------------------------------------------------
class VLLMEngine(Engine):
    backend = "vllm"

    def __init__(self, settings: Settings) -> None:
        from promptloop.policies.vllm import AsyncVLLMPolicy

        policy = AsyncVLLMPolicy(
            settings.policy,
            adapters=settings.adapters,
            sampling=_default_sampling(settings),
            max_input_tokens=settings.max_input_tokens,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
            enforce_eager=settings.enforce_eager,
            enable_lora=settings.enable_lora,
            max_lora_rank=settings.max_lora_rank,
            max_loras=settings.max_loras,
            engine_kwargs=settings.engine_kwargs,
        )
        super().__init__(policy, settings.policy, adapters=policy.adapters, adapter=settings.adapter)

    @classmethod
    def from_policy(cls, policy: Any) -> VLLMEngine:
        """Serve an already built :class:`AsyncVLLMPolicy` (its engine may be running)."""
        engine = cls.__new__(cls)
        Engine.__init__(engine, policy, policy.name_or_path, adapters=policy.adapters, adapter=policy.adapter)
        return engine

    async def start(self) -> None:
        await self.policy.astart()

    async def stop(self) -> None:
        await self.policy.ashutdown()

    @property
    def lora_enabled(self) -> bool:
        return self.policy.lora_enabled

    async def _load_adapter(self, name: str, path: str) -> str:
        await self.policy.add_adapter_async(name, path)
        return self.policy.adapters[name]

    def details(self) -> dict[str, Any]:
        info = self.policy.info()
        return {"lora_enabled": info["lora_enabled"], "engine": info["engine"], "engine_args": info["engine_args"]}


# -- transformers -------------------------------------------------------------------------------
@dataclass
class _Job:
    """Some items (observations or plan prompts) waiting for a shared policy call. Jobs with
    the same ``key`` have equivalent ``run`` functions and may share one call."""

    key: tuple
    items: list
    run: Callable[[list], list]
    future: asyncio.Future


class TransformersEngine(Engine):
    """``TransformersPolicy.refine`` on one worker thread, fed by a micro-batching queue."""

    backend = "transformers"

    def __init__(self, settings: Settings, policy: Any = None) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[_Job] | None = None
        self._batcher: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptloop-generate")
        model = settings.policy if policy is None else getattr(policy, "name_or_path", "in-memory")
        super().__init__(policy, model, adapters=settings.adapters, adapter=settings.adapter)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.policy is None:
            self.policy = await loop.run_in_executor(self._executor, self._load)
        self._queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop(), name="promptloop-batcher")

    def _load(self):
        from promptloop.policies.transformers import TransformersPolicy

        s = self.settings
        policy = TransformersPolicy.from_pretrained(
            s.policy,
            device=s.device,
            dtype=None if s.dtype == "auto" else s.dtype,
            sampling=_default_sampling(s),
            max_input_tokens=s.max_input_tokens,
        )
        for name, path in self._adapters.items():
            policy.add_adapter(name, path)
        return policy

    async def _load_adapter(self, name: str, path: str) -> str:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.policy.add_adapter, name, path)
        return self.policy.adapters[name]

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - cancelled on stop: its outcome is moot
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def refine(self, observations, sampling, adapter=DEFAULT):
        name = self.resolve_adapter(adapter)
        return await self._submit(
            ("refine", astuple(sampling), name), list(observations),
            lambda items: self.policy.refine(items, sampling=sampling, adapter=name),
        )

    async def plan(self, prompts, steps, num_steps, sampling, adapter=DEFAULT):
        name = self.resolve_adapter(adapter)
        steps = list(steps)
        return await self._submit(
            ("plan", tuple(steps), num_steps, astuple(sampling), name), list(prompts),
            lambda items: self.policy.plan(items, steps, num_steps, sampling=sampling, adapter=name),
        )

    async def _submit(self, key: tuple, items: list, run: Callable[[list], list]) -> list:
        assert self._queue is not None, "engine not started"
        job = _Job(key, items, run, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        pending: list[_Job] = []
        while True:
            job = pending.pop(0) if pending else await self._queue.get()
            if job.future.done():  # cancelled (client timeout) before it ran
                continue
            batch, size = [job], len(job.items)
            deadline = loop.time() + self.settings.batch_wait_ms / 1000.0
            while size < self.settings.batch_size:
                timeout = deadline - loop.time()
                try:
                    nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if nxt.future.done():
                    continue
                if nxt.key == job.key and size + len(nxt.items) <= self.settings.batch_size:
                    batch.append(nxt)
                    size += len(nxt.items)
                else:
                    pending.append(nxt)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Job]) -> None:
        """One shared call for the batch; if it fails, one call per job, so that each job gets
        its own result or its own error."""
        loop = asyncio.get_running_loop()
        items = [item for job in batch for item in job.items]
        try:
            results = await loop.run_in_executor(self._executor, batch[0].run, items)
        except Exception as exc:  # noqa: BLE001 - delivered to the waiting request(s)
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            logger.info("a batch of %d requests failed (%s); running them one by one", len(batch), exc)
            for job in batch:
                if not job.future.done():
                    await self._run_batch([job])
            return
        start = 0
        for job in batch:
            part = results[start:start + len(job.items)]
            start += len(job.items)
            if not job.future.done():
                job.future.set_result(part)

    def details(self) -> dict[str, Any]:
        return {"device": str(getattr(self.policy, "device", "")), "batch_size": self.settings.batch_size}


# -- OpenAI-compatible endpoint -----------------------------------------------------------------
class OpenAIEngine(Engine):
    """Forwards to an OpenAI-compatible chat endpoint; adapters are served model names."""

    backend = "openai"

    def __init__(self, settings: Settings) -> None:
        from promptloop.policies.openai import OpenAIChatPolicy

        model = settings.openai_model
        policy = OpenAIChatPolicy(
            settings.policy,
            model=model,
            api_key=settings.openai_api_key,
            sampling=_default_sampling(settings),
            timeout_s=settings.request_timeout_s,
        )
        super().__init__(policy, model or "default", adapters=settings.adapters, adapter=settings.adapter)

    async def start(self) -> None:
        if self.policy.model is None:  # ask the endpoint what it serves
            self.policy.model = self.policy._first_model(await self.policy.alist_models())
        self.model = self.policy.model

    async def stop(self) -> None:
        await self.policy.aclose()

    def generate_options(self, adapter: str | None) -> dict[str, Any]:
        return {"model": self._adapters.get(adapter, adapter) if adapter is not None else None}

    async def _load_adapter(self, name: str, path: str) -> str:
        # The endpoint loads adapters itself (vllm serve --lora-modules NAME=PATH); here a
        # name is mapped to one of its served model names.
        served = await self.policy.alist_models()
        target = path or name
        if target not in served:
            raise AdapterError(f"the endpoint serves no model {target!r}; it serves: {', '.join(served)}")
        return target

    def details(self) -> dict[str, Any]:
        return {"endpoint": self.policy.base_url}


def _default_sampling(settings: Settings) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
    )


def build_engine(settings: Settings) -> Engine:
    backend = settings.resolved_backend()
    if backend == "vllm":
        return VLLMEngine(settings)
    if backend == "transformers":
        return TransformersEngine(settings)
    if backend == "openai":
        return OpenAIEngine(settings)
    raise ValueError(f"unknown backend {backend!r}")


__all__ = ["DEFAULT", "AdapterError", "Engine", "OpenAIEngine", "TransformersEngine", "VLLMEngine", "build_engine"]
