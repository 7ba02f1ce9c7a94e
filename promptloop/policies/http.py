"""The remote policy: a client of a PromptLoop sidecar's ``POST /refine``.

``HTTPPolicy`` never raises for the sidecar's troubles: after bounded retries with backoff, an
unreachable, failing or slow sidecar turns into refinements that keep the current prompt
(``Fallback.ERROR`` / ``Fallback.TIMEOUT``, with the reason in ``error``), so a generation is
never broken by the network. Client mistakes (a 4xx other than 408/429) are not retried.

Example::

    policy = HTTPPolicy("http://127.0.0.1:8765", api_key=os.environ.get("PROMPTLOOP_API_KEY"))
    image = pipe(prompt, callback_on_step_end=PromptLoopHook(policy, schedule="evenly:3")).images[0]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from promptloop.policies.base import SamplingConfig
from promptloop.policies.retry import Retry, Retryable
from promptloop.refinement import Fallback, Observation, Refinement

logger = logging.getLogger("promptloop.http")

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class HTTPPolicy:
    """Policy served by a PromptLoop sidecar.

    Args:
        url: the sidecar's base URL (``http://host:port``; a trailing ``/refine`` is accepted).
        api_key: sent as ``Authorization: Bearer``.
        timeout_s: overall deadline of one ``refine`` call, retries included.
        retries: extra attempts after a connection error, a timeout of one attempt or a
            408/429/5xx answer.
        backoff_s: first wait between attempts (doubled each time, with jitter, capped at 2 s).
        backbone: name of a backbone the sidecar holds, for latents and embeddings.
        return_embeddings: ask for the refined prompts' embeddings; they land in
            ``refinement.extra["prompt_embeds"]`` (and ``"pooled_prompt_embeds"``), one row each.
        sampling: decoding overrides sent with each request (``None``: the server's defaults).
        adapter: a LoRA adapter loaded on the sidecar to use for these requests.
        image_format: ``"PNG"`` (lossless, default) or ``"JPEG"`` (smaller).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.25,
        backbone: str | None = None,
        return_embeddings: bool = False,
        sampling: SamplingConfig | None = None,
        adapter: str | None = None,
        image_format: str = "PNG",
        headers: dict[str, str] | None = None,
        max_connections: int = 16,
    ) -> None:
        base = url.rstrip("/")
        for suffix in ("/refine", "/plan"):
            base = base.removesuffix(suffix)
        self.url = base
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.retry = Retry(retries=max(0, int(retries)), backoff_s=float(backoff_s),
                           deadline_s=self.timeout_s)
        self.backbone = backbone
        self.return_embeddings = return_embeddings
        self.sampling = sampling
        self.adapter = adapter
        self.image_format = image_format.upper()
        self.headers = dict(headers or {})
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.max_connections = max_connections
        self._client = None
        self._client_lock = threading.Lock()

    @property
    def name_or_path(self) -> str:
        return self.url

    # -- transport ------------------------------------------------------------------------------
    def _http(self):
        import httpx

        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self.headers,
                    limits=httpx.Limits(max_connections=self.max_connections,
                                        max_keepalive_connections=self.max_connections),
                )
            return self._client

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries inside the overall deadline. Raises ``TimeoutError`` or
        ``RemoteError`` (never anything else) when no good answer came."""
        import httpx

        def attempt(timeout: float | None) -> dict[str, Any]:
            try:
                response = self._http().post(self.url + path, json=body, timeout=timeout)
            except httpx.TimeoutException as exc:
                raise Retryable(TimeoutError(f"timed out ({type(exc).__name__})")) from None
            except httpx.HTTPError as exc:
                message = f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
                raise Retryable(RemoteError(message)) from None
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise RemoteError(f"{self.url}{path} answered 200 with a body that is not JSON") from None
            message = f"{self.url}{path} answered {response.status_code}: {_detail(response)}"
            if response.status_code in (408, 504):
                raise Retryable(TimeoutError(message))
            error = RemoteError(message, response.status_code)
            raise Retryable(error) if response.status_code in _RETRY_STATUS else error

        return self.retry.call(attempt, what=f"sidecar at {self.url}")

    # -- requests -------------------------------------------------------------------------------
    def _common(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.sampling is not None:
            s = self.sampling
            body["sampling"] = {"temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                                "seed": s.seed, "return_logprobs": s.return_logprobs}
        if self.adapter is not None:
            body["adapter"] = self.adapter
        if self.backbone is not None:
            body["backbone"] = self.backbone
        if self.return_embeddings:
            body["return_embeddings"] = True
        return body

    def refine_request(self, observations: Sequence[Observation], *, latents: Any = None,
                       latent_format: str | None = None, height: int | None = None,
                       width: int | None = None) -> dict[str, Any]:
        """The ``/refine`` JSON body for these observations."""
        from promptloop.wire import encode_image, encode_latents

        items = []
        for obs in observations:
            item: dict[str, Any] = {
                "prompt": obs.original_prompt,
                "current_prompt": obs.current_prompt,
                "history": list(obs.history),
                "step": int(obs.step),
                "num_steps": int(obs.num_steps),
                "sample_index": int(obs.sample_index),
            }
            if obs.timestep is not None:
                item["timestep"] = float(obs.timestep)
            if obs.preview is not None and latents is None:
                item["image"] = encode_image(obs.preview, format=self.image_format)
            items.append(item)
        body = {"items": items, **self._common()}
        if latents is not None:
            body["latent"] = encode_latents(latents)
            if latent_format is not None:
                body["latent_format"] = latent_format
            if height is not None and width is not None:
                body["height"], body["width"] = int(height), int(width)
        return body

    def refine(self, observations: Sequence[Observation], *, latents: Any = None,
               latent_format: str | None = None, height: int | None = None,
               width: int | None = None) -> list[Refinement]:
        """One refinement per observation; fallbacks (never an exception) when the sidecar fails.

        With ``latents`` (model-space, rows in observation order) the sidecar decodes the
        previews itself with a backbone it holds (``latent_format`` names the format).
        """
        if not observations:
            return []
        start = time.perf_counter()
        try:
            body = self.refine_request(observations, latents=latents, latent_format=latent_format,
                                       height=height, width=width)
            data = self._post("/refine", body)
            refinements = self._parse(data, observations)
        except TimeoutError as exc:
            return self._fallbacks(observations, Fallback.TIMEOUT, str(exc), start)
        except Exception as exc:  # noqa: BLE001 - the hook must never break
            logger.warning("sidecar refine failed: %s", exc)
            return self._fallbacks(observations, Fallback.ERROR, f"{type(exc).__name__}: {exc}", start)
        latency = time.perf_counter() - start
        for ref in refinements:
            ref.latency_s = latency
        return refinements

    def _parse(self, data: dict[str, Any], observations: Sequence[Observation]) -> list[Refinement]:
        items = data.get("refinements")
        if not isinstance(items, list) or len(items) != len(observations):
            raise RemoteError(f"sidecar returned {len(items) if isinstance(items, list) else 'no'} refinements "
                              f"for {len(observations)} observations")
        embeds = None
        if data.get("embeddings"):
            from promptloop.wire import decode_tensors

            embeds = decode_tensors(data["embeddings"], field="embeddings")
        out = []
        for i, (obs, item) in enumerate(zip(observations, items)):
            fallback = item.get("fallback")
            try:
                reason = Fallback(fallback) if fallback else None
            except ValueError:
                reason = Fallback.ERROR
            text = item.get("text")
            if not isinstance(text, str):
                text, reason = obs.current_prompt, Fallback.ERROR
            ref = Refinement(
                text=text, raw_text=item.get("raw_text"), fallback=reason, error=item.get("error"),
                token_ids=item.get("token_ids"), logprobs=item.get("logprobs"),
            )
            ref.extra.update({"server_latency_s": data.get("latency_s"), "model": data.get("model"),
                              "adapter": data.get("adapter")})
            if embeds is not None:
                for name, tensor in embeds.items():
                    ref.extra[name] = tensor[i]
                ref.extra["backbone"] = data.get("backbone")
            out.append(ref)
        return out

    @staticmethod
    def _fallbacks(observations, reason: Fallback, error: str, start: float) -> list[Refinement]:
        latency = time.perf_counter() - start
        refinements = [Refinement.fallback_to(obs.current_prompt, reason, error=error) for obs in observations]
        for ref in refinements:
            ref.latency_s = latency
        return refinements

    def plan(self, prompts: Sequence[str], steps: Sequence[int], num_steps: int) -> list[list[Refinement]]:
        """``ahead`` mode through ``POST /plan``; on failure every planned prompt keeps the original."""
        if not prompts:
            return []
        start = time.perf_counter()
        body = {"prompts": list(prompts), "steps": [int(s) for s in steps], "num_steps": int(num_steps),
                **{k: v for k, v in self._common().items() if k in ("sampling", "adapter")}}
        try:
            data = self._post("/plan", body)
            plans = data["plans"]
            if len(plans) != len(prompts) or any(len(p) != len(steps) for p in plans):
                raise RemoteError("sidecar returned a plan of the wrong shape")
            out = []
            for plan in plans:
                refs = []
                for item in plan:
                    fallback = item.get("fallback")
                    refs.append(Refinement(text=item["text"], raw_text=item.get("raw_text"),
                                           fallback=Fallback(fallback) if fallback else None,
                                           error=item.get("error")))
                out.append(refs)
        except Exception as exc:  # noqa: BLE001
            reason = Fallback.TIMEOUT if isinstance(exc, TimeoutError) else Fallback.ERROR
            out = [[Refinement.fallback_to(p, reason, error=f"{type(exc).__name__}: {exc}") for _ in steps]
                   for p in prompts]
        latency = time.perf_counter() - start
        for plan in out:
            for ref in plan:
                ref.latency_s = latency
        return out

    # -- service endpoints ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The sidecar's ``/info`` (raises on failure: this is not on the generation path)."""
        response = self._http().get(self.url + "/info", timeout=self.timeout_s)
        if response.status_code != 200:
            raise RemoteError(f"/info answered {response.status_code}: {_detail(response)}", response.status_code)
        return response.json()

    def ready(self) -> bool:
        try:
            return self._http().get(self.url + "/ready", timeout=min(self.timeout_s, 5.0)).status_code == 200
        except Exception:  # noqa: BLE001
            return False

    def wait_ready(self, timeout_s: float = 300.0, interval_s: float = 0.5) -> bool:
        """Poll ``/ready`` until it answers 200 (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return True
            time.sleep(interval_s)
        return False

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HTTPPolicy({self.url!r})"


class RemoteError(RuntimeError):
    """The sidecar answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _detail(response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(payload, dict):
        return str(payload.get("detail") or payload.get("error") or payload)[:500]
    return str(payload)[:500]


__all__ = ["HTTPPolicy", "RemoteError"]
