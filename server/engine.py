"""The policy behind the sidecar, one async interface over three backends.

* ``vllm``         - :class:`~promptloop.policies.vllm.AsyncVLLMPolicy`: every request goes
  straight into vLLM's ``AsyncLLM``, which batches concurrent requests continuously.
* ``transformers`` - :class:`~promptloop.policies.transformers.TransformersPolicy` behind a
  micro-batcher: requests arriving within ``batch_wait_ms`` of each other (same sampling
  settings and adapter) share one ``generate`` call on a dedicated worker thread.
* ``openai``       - :class:`~promptloop.policies.openai.OpenAIChatPolicy`: a client of an
  OpenAI-compatible endpoint (``vllm serve``); adapters are the endpoint's served model names.

All of them take chat conversations built by the shared message builder and return raw
generations; parsing into refinements happens once, in the app.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

from promptloop.policies.base import Generation, GenerativePolicy, SamplingConfig
from promptloop.policies.messages import Message

from .settings import Settings

logger = logging.getLogger("promptloop.server")

#: Sentinel: "use the engine's current default adapter".
DEFAULT = object()


class AdapterError(ValueError):
    """An adapter operation the client asked for cannot be done (unknown name, LoRA off...)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class Engine(abc.ABC):
    """A started policy that generates for chat conversations, asynchronously."""

    backend: str = "base"

    def __init__(self, policy: GenerativePolicy, model: str) -> None:
        self.policy = policy
        self.model = model
        self._default_sampling: SamplingConfig | None = None

    @property
    def default_sampling(self) -> SamplingConfig:
        """The decoding settings a request gets when it overrides nothing."""
        if self.policy is None:  # not loaded yet
            return SamplingConfig()
        if self._default_sampling is None:
            base = getattr(self.policy, "sampling", None)
            self._default_sampling = replace(base) if base is not None else SamplingConfig()
        return self._default_sampling

    async def start(self) -> None:
        """Load weights / start processes (may take long; runs while /ready says 503)."""

    async def stop(self) -> None:
        """Release everything (called on shutdown)."""

    @abc.abstractmethod
    async def generate(
        self, conversations: Sequence[list[Message]], sampling: SamplingConfig, adapter: Any = DEFAULT
    ) -> list[Generation]:
        """One generation per conversation."""

    # adapters ---------------------------------------------------------------------------------
    @property
    def lora_enabled(self) -> bool:
        return False

    @property
    def adapter(self) -> str | None:
        return None

    @property
    def adapters(self) -> dict[str, str]:
        return {}

    def check_adapter(self, name: str | None) -> None:
        if name is not None and name not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise AdapterError(f"unknown adapter {name!r}; loaded adapters: {known}")

    async def load_adapter(self, name: str, path: str) -> None:
        raise AdapterError(f"the {self.backend} backend cannot load adapters at runtime", status=409)

    async def set_adapter(self, name: str | None) -> None:
        raise AdapterError(f"the {self.backend} backend cannot switch adapters", status=409)

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model}


# -- vLLM ---------------------------------------------------------------------------------------
class VLLMEngine(Engine):
    backend = "vllm"

    def __init__(self, settings: Settings) -> None:
        from promptloop.policies.vllm import AsyncVLLMPolicy

        policy = AsyncVLLMPolicy(
            settings.policy,
            adapters=settings.adapters,
            sampling=_default_sampling(settings),
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
        policy.adapter = settings.adapter
        super().__init__(policy, settings.policy)

    @classmethod
    def from_policy(cls, policy: Any) -> VLLMEngine:
        """Serve an already built :class:`AsyncVLLMPolicy` (its engine may be running)."""
        engine = cls.__new__(cls)
        Engine.__init__(engine, policy, policy.name_or_path)
        return engine

    async def start(self) -> None:
        await self.policy.astart()

    async def stop(self) -> None:
        await self.policy.ashutdown()

    async def generate(self, conversations, sampling, adapter=DEFAULT):
        kwargs = {} if adapter is DEFAULT else {"adapter": adapter}
        return await self.policy.agenerate(conversations, sampling=sampling, **kwargs)

    @property
    def lora_enabled(self) -> bool:
        return self.policy.lora_enabled

    @property
    def adapter(self) -> str | None:
        return self.policy.adapter

    @property
    def adapters(self) -> dict[str, str]:
        return self.policy.adapters

    async def load_adapter(self, name: str, path: str) -> None:
        if not self.lora_enabled:
            raise AdapterError("this server's vLLM engine was started without LoRA (use --enable-lora)", 409)
        try:
            await self.policy.add_adapter_async(name, path)
        except (FileNotFoundError, ValueError) as exc:
            raise AdapterError(str(exc)) from None

    async def set_adapter(self, name: str | None) -> None:
        self.check_adapter(name)
        self.policy.set_adapter(name)

    def info(self) -> dict[str, Any]:
        return self.policy.info()


# -- transformers -------------------------------------------------------------------------------
@dataclass
class _Job:
    conversations: list[list[Message]]
    key: tuple
    sampling: SamplingConfig
    adapter: Any
    future: asyncio.Future


class TransformersEngine(Engine):
    """``model.generate`` on one worker thread, fed by a micro-batching queue."""

    backend = "transformers"

    def __init__(self, settings: Settings, policy: Any = None) -> None:
        self.settings = settings
        self._adapter_paths: dict[str, str] = {}
        self._adapter: str | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._batcher: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptloop-generate")
        self._lock = threading.Lock()
        super().__init__(policy, settings.policy if policy is None else getattr(policy, "name_or_path", "in-memory"))

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
        )
        for name, path in s.adapters.items():
            self._load_adapter_sync(policy, name, path)
        if s.adapter is not None:
            self._adapter = s.adapter
        return policy

    def _load_adapter_sync(self, policy: Any, name: str, path: str) -> None:
        from pathlib import Path

        from peft import PeftModel

        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterError(f"no LoRA adapter at {path} (adapter_config.json missing)")
        with self._lock:
            if isinstance(policy.model, PeftModel):
                if name in policy.model.peft_config:
                    policy.model.delete_adapter(name)
                policy.model.load_adapter(path, adapter_name=name)
            else:
                policy.model = PeftModel.from_pretrained(policy.model, path, adapter_name=name)
            policy.model.eval()
            self._adapter_paths[name] = str(path)

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def generate(self, conversations, sampling, adapter=DEFAULT):
        assert self._queue is not None, "engine not started"
        name = self._adapter if adapter is DEFAULT else adapter
        self.check_adapter(name)
        loop = asyncio.get_running_loop()
        job = _Job(list(conversations), (_sampling_key(sampling), name), sampling, name, loop.create_future())
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
            batch, size = [job], len(job.conversations)
            deadline = loop.time() + self.settings.batch_wait_ms / 1000.0
            while size < self.settings.batch_size:
                timeout = deadline - loop.time()
                try:
                    nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if nxt.future.done():
                    continue
                if nxt.key == job.key and size + len(nxt.conversations) <= self.settings.batch_size:
                    batch.append(nxt)
                    size += len(nxt.conversations)
                else:
                    pending.append(nxt)
            conversations = [c for j in batch for c in j.conversations]
            try:
                generations = await loop.run_in_executor(
                    self._executor, self._generate_sync, conversations, job.sampling, job.adapter
                )
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            start = 0
            for j in batch:
                part = generations[start:start + len(j.conversations)]
                start += len(j.conversations)
                if not j.future.done():
                    j.future.set_result(part)

    def _generate_sync(self, conversations, sampling: SamplingConfig, adapter: str | None) -> list[Generation]:
        with self._lock:
            policy = self.policy
            saved, policy.sampling = policy.sampling, sampling
            try:
                model = policy.model
                context = nullcontext()
                if self._adapter_paths:
                    if adapter is None:
                        context = model.disable_adapter()
                    else:
                        model.set_adapter(adapter)
                with context:
                    return policy.generate(conversations)
            finally:
                policy.sampling = saved

    @property
    def lora_enabled(self) -> bool:
        return True

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def adapters(self) -> dict[str, str]:
        return dict(self._adapter_paths)

    async def load_adapter(self, name: str, path: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._load_adapter_sync, self.policy, name, path)
        except (FileNotFoundError, ValueError) as exc:
            raise AdapterError(str(exc)) from None

    async def set_adapter(self, name: str | None) -> None:
        self.check_adapter(name)
        self._adapter = name

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "adapter": self._adapter, "adapters": self.adapters,
                "device": str(getattr(self.policy, "device", "")), "batch_size": self.settings.batch_size}


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
        super().__init__(policy, model or "default")
        self._adapters = dict(settings.adapters)  # name -> served model name
        self._adapter = settings.adapter

    async def start(self) -> None:
        if self.policy.model is None:  # ask the endpoint what it serves
            self.policy.model = self.policy._first_model(await self.policy.alist_models())
        self.model = self.policy.model

    async def stop(self) -> None:
        await self.policy.aclose()

    async def generate(self, conversations, sampling, adapter=DEFAULT):
        name = self._adapter if adapter is DEFAULT else adapter
        self.check_adapter(name)
        model = self._adapters.get(name, name) if name is not None else None
        return await self.policy.agenerate(conversations, sampling=sampling, model=model)

    @property
    def lora_enabled(self) -> bool:
        return True

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def adapters(self) -> dict[str, str]:
        return dict(self._adapters)

    async def load_adapter(self, name: str, path: str) -> None:
        # The endpoint loads adapters itself (vllm serve --lora-modules NAME=PATH); here a
        # name is mapped to one of its served model names.
        served = await self.policy.alist_models()
        target = path or name
        if target not in served:
            raise AdapterError(f"the endpoint serves no model {target!r}; it serves: {', '.join(served)}")
        self._adapters[name] = target

    async def set_adapter(self, name: str | None) -> None:
        self.check_adapter(name)
        self._adapter = name

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "endpoint": self.policy.base_url,
                "adapter": self._adapter, "adapters": self.adapters}


def _default_sampling(settings: Settings) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
    )


def _sampling_key(s: SamplingConfig) -> tuple:
    return (s.max_new_tokens, s.temperature, s.top_p, s.seed, s.return_logprobs)


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
