"""A policy served by any OpenAI-compatible chat-completions endpoint (``vllm serve``, SGLang,
TGI's Messages API, hosted APIs).

The conversations are the shared PromptLoop messages; preview images are resized exactly as the
in-process backends resize them and sent as base64 PNG data URLs in ``image_url`` parts. A batch
becomes concurrent requests (bounded by ``max_concurrency``), so a serving engine batches them.

Example, against ``vllm serve /models/policy --served-model-name policy``::

    policy = OpenAIChatPolicy("http://127.0.0.1:8000/v1", model="policy")
    pipe(prompt, callback_on_step_end=PromptLoopHook(policy, schedule=[0.2, 0.4, 0.6]))
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from promptloop.policies.base import Generation, GenerativePolicy, SamplingConfig
from promptloop.policies.messages import Message
from promptloop.policies.retry import Retry, Retryable
from promptloop.wire import image_data_url

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")
_RETRY_STATUS = {429, 502, 503, 504}


class OpenAIError(RuntimeError):
    """The endpoint answered with an error (``status`` is its HTTP status, 0 for no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class OpenAIChatPolicy(GenerativePolicy):
    """Client of ``POST {base_url}/chat/completions``.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when missing).
        model: the served model name (for ``vllm serve`` with LoRA modules, an adapter's name);
            ``None`` or ``"default"``: the endpoint's first model (asked once, from ``/models``).
        api_key: sent as ``Authorization: Bearer``.
        sampling: default decoding settings.
        timeout_s: deadline of one request, retries included.
        retries: extra attempts after a connection error or a 429/502/503/504 answer.
        backoff_s: first pause between attempts (doubled each time, with jitter).
        max_concurrency: most requests in flight for one batch.
        vllm_extensions: when log-probs are asked for, also ask vLLM for the generated token ids
            (``return_token_ids``); turn off for endpoints that reject unknown fields.
        extra_body: more fields merged into every request body.
        **kwargs: ``GenerativePolicy`` options (``min_pixels``, ``max_pixels``: preview
            preparation, as in the in-process backends; ``max_input_tokens`` is not enforced here,
            the endpoint holds the tokenizer).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        sampling: SamplingConfig | None = None,
        timeout_s: float = 60.0,
        retries: int = 1,
        backoff_s: float = 0.2,
        max_concurrency: int = 16,
        vllm_extensions: bool = True,
        extra_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sampling, **kwargs)
        base = base_url.rstrip("/")
        if not base.endswith("/v1") and "/v1/" not in base + "/":
            base += "/v1"
        self.base_url = base
        self.model = model if model not in (None, "", "default") else None
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retry = Retry(retries=max(0, int(retries)), backoff_s=float(backoff_s), deadline_s=timeout_s)
        self.max_concurrency = max(1, int(max_concurrency))
        self.vllm_extensions = vllm_extensions
        self.extra_body = dict(extra_body or {})
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._client = None
        self._aclient = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def name_or_path(self) -> str:
        return f"{self.base_url} ({self.model or 'default model'})"

    # -- request bodies -------------------------------------------------------------------------
    def openai_messages(self, conversation: list[Message]) -> list[dict[str, Any]]:
        """Our messages in OpenAI form: images, prepared as the in-process backends prepare them,
        become base64 PNG ``image_url`` parts."""
        conversation, _ = self.prepare(conversation)
        out = []
        for message in conversation:
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image":
                        parts.append({"type": "image_url", "image_url": {"url": image_data_url(part["image"])}})
                    else:
                        parts.append({"type": "text", "text": part.get("text", "")})
                content = parts
            out.append({"role": message["role"], "content": content})
        return out

    def request_body(
        self, conversation: list[Message], sampling: SamplingConfig | None = None, model: str | None = None
    ) -> dict[str, Any]:
        s = sampling or self.sampling
        body: dict[str, Any] = {
            "model": model or self.model or "default",
            "messages": self.openai_messages(conversation),
            "max_tokens": int(s.max_new_tokens),
            "temperature": 0.0 if s.greedy else float(s.temperature),
            "n": 1,
            "stream": False,
        }
        if not s.greedy:
            body["top_p"] = float(s.top_p)
        if s.seed is not None:
            body["seed"] = int(s.seed)
        if s.return_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 0
            if self.vllm_extensions:
                body["return_token_ids"] = True
        body.update(self.extra_body)
        return body

    @staticmethod
    def parse_response(data: Mapping[str, Any]) -> Generation:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise OpenAIError(f"unexpected response without choices: {str(data)[:200]}") from None
        message = choice.get("message") or {}
        text = message.get("content") or ""
        token_ids = choice.get("token_ids")
        logprobs = None
        content = (choice.get("logprobs") or {}).get("content")
        if content:
            logprobs = [float(item["logprob"]) for item in content]
            if token_ids is None:
                ids = [_TOKEN_ID.match(str(item.get("token", ""))) for item in content]
                if all(ids):
                    token_ids = [int(m.group(1)) for m in ids]  # type: ignore[union-attr]
        return Generation(
            text=text,
            token_ids=list(token_ids) if token_ids is not None else None,
            logprobs=logprobs,
            finished=choice.get("finish_reason") != "length",
        )

    @staticmethod
    def _error(response) -> OpenAIError:
        try:
            payload = response.json()
            detail = payload.get("error", payload)
            if isinstance(detail, Mapping):
                detail = detail.get("message", detail)
        except Exception:  # noqa: BLE001
            detail = response.text[:300]
        return OpenAIError(f"endpoint answered {response.status_code}: {detail}", response.status_code)

    def _answer(self, response) -> Generation:
        """One attempt's response: the generation, or an error (``Retryable`` when worth retrying)."""
        if response.status_code == 200:
            return self.parse_response(response.json())
        error = self._error(response)
        raise Retryable(error) if response.status_code in _RETRY_STATUS else error

    def _transport_error(self, exc: Exception) -> Retryable:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return Retryable(TimeoutError(f"{self.base_url} timed out ({type(exc).__name__})"))
        return Retryable(OpenAIError(f"cannot reach {self.base_url}: {exc}"))

    def _first_model(self, models: list[str]) -> str:
        if not models:
            raise OpenAIError(f"{self.base_url} serves no model")
        return models[0]

    # -- sync -----------------------------------------------------------------------------------
    def _sync_client(self):
        import httpx

        if self._client is None:
            self._client = httpx.Client(
                timeout=self.timeout_s,
                limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
            )
            self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="promptloop-openai")
        return self._client

    def _post_sync(self, body: dict[str, Any]) -> Generation:
        import httpx

        client = self._sync_client()

        def attempt(timeout: float | None) -> Generation:
            try:
                response = client.post(f"{self.base_url}/chat/completions", json=body, headers=self.headers,
                                       timeout=timeout)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from None
            return self._answer(response)

        return self.retry.call(attempt, what=self.base_url)

    def generate(self, conversations: Sequence[list[Message]], *, sampling: SamplingConfig | None = None,
                 model: str | None = None) -> list[Generation]:
        if not conversations:
            return []
        if model is None and self.model is None:
            self.model = self._first_model(self.list_models())
        bodies = [self.request_body(c, sampling, model) for c in conversations]
        self._sync_client()
        assert self._pool is not None
        return list(self._pool.map(self._post_sync, bodies))

    def list_models(self) -> list[str]:
        response = self._sync_client().get(f"{self.base_url}/models", headers=self.headers)
        if response.status_code != 200:
            raise self._error(response)
        return [m["id"] for m in response.json().get("data", [])]

    # -- async ----------------------------------------------------------------------------------
    def _async_client(self):
        import httpx

        if self._aclient is None:
            self._aclient = httpx.AsyncClient(
                timeout=self.timeout_s,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )
        return self._aclient

    async def _post_async(self, body: dict[str, Any], semaphore: asyncio.Semaphore) -> Generation:
        import httpx

        client = self._async_client()

        async def attempt(timeout: float | None) -> Generation:
            try:
                response = await client.post(f"{self.base_url}/chat/completions", json=body,
                                             headers=self.headers, timeout=timeout)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from None
            return self._answer(response)

        async with semaphore:
            return await self.retry.acall(attempt, what=self.base_url)

    async def agenerate(self, conversations: Sequence[list[Message]], *,
                        sampling: SamplingConfig | None = None, model: str | None = None) -> list[Generation]:
        """Concurrent requests on an ``httpx.AsyncClient`` (for use inside a server's loop)."""
        if not conversations:
            return []
        if model is None and self.model is None:
            self.model = self._first_model(await self.alist_models())
        loop = asyncio.get_running_loop()
        bodies = await loop.run_in_executor(None, lambda: [self.request_body(c, sampling, model) for c in conversations])
        semaphore = asyncio.Semaphore(self.max_concurrency)
        return list(await asyncio.gather(*(self._post_async(b, semaphore) for b in bodies)))

    async def alist_models(self) -> list[str]:
        response = await self._async_client().get(f"{self.base_url}/models", headers=self.headers)
        if response.status_code != 200:
            raise self._error(response)
        return [m["id"] for m in response.json().get("data", [])]

    # -- lifecycle ------------------------------------------------------------------------------
    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        return {"backend": "openai", "endpoint": self.base_url, "model": self.model}


__all__ = ["OpenAIChatPolicy", "OpenAIError"]
