"""What runs around every request: the body limit and deadline, and the request metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from .errors import error_response
from .metrics import Metrics


class BodyLimitMiddleware:
    """Reads the request body itself, with a size cap and a deadline (pure ASGI, before any parsing).

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
        response = error_response(status, error, detail, headers={"Connection": "close"})

        async def no_body():
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)


async def count_requests(request: Request, call_next):
    """``@app.middleware("http")``: requests in flight, answered (by route and status) and their latency."""
    metrics: Metrics = request.app.state.promptloop.metrics
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
