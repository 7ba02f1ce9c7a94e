"""Bounded retries inside one deadline, for the policies that call a server (``HTTPPolicy``,
``OpenAIChatPolicy``), sync and async alike. Built on `tenacity <https://tenacity.readthedocs.io>`_.

An *attempt* is a function of the time left (seconds, ``None`` without a deadline; pass it on
as the request's timeout). It returns the answer, raises :class:`Retryable` to ask for another
try, or raises anything else to stop at once (a client mistake, such as a 400, is not retried)::

    retry = Retry(retries=2, backoff_s=0.25, deadline_s=30)

    def attempt(timeout):
        response = client.post(url, json=body, timeout=timeout)
        if response.status_code in (429, 503):
            raise Retryable(RemoteError(f"answered {response.status_code}"))
        return response.json()

    data = retry.call(attempt, what=url)            # or: await retry.acall(async_attempt, ...)

Between attempts it pauses ``backoff_s``, doubling each time with jitter, at most
``max_backoff_s``. It never starts an attempt (or a pause) that would end past the deadline.
When the attempts are used up it raises the last :class:`Retryable`'s ``error``; when the deadline
stops it, or the last error was itself a ``TimeoutError``, a ``TimeoutError`` naming ``what``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    BaseRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
    wait_exponential_jitter,
)

T = TypeVar("T")


class Retryable(Exception):
    """Raised by an attempt that may succeed if tried again; ``error`` is what to raise when
    no attempt is left (a ``TimeoutError`` for an attempt that ran out of time)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Retry:
    """How often and how long to try one request.

    Args:
        retries: extra attempts after the first.
        backoff_s: first pause between attempts (doubled each time, plus up to as much jitter).
        max_backoff_s: longest pause.
        deadline_s: all attempts and pauses together; ``None``: no limit.
    """

    retries: int = 2
    backoff_s: float = 0.25
    max_backoff_s: float = 2.0
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retries and backoff times must be >= 0")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be > 0 (or None for no limit)")

    def call(self, attempt: Callable[[float | None], T], *, what: str = "the server") -> T:
        """Run ``attempt(time_left)`` until it answers, fails for good, or time runs out."""
        run = _Run(self, what)
        try:
            return self._retrying(Retrying)(lambda: attempt(run.next_timeout()))
        except Retryable as exc:
            raise run.final(exc) from None

    async def acall(self, attempt: Callable[[float | None], Awaitable[T]], *, what: str = "the server") -> T:
        """:meth:`call` for a coroutine function (pauses with ``asyncio.sleep``)."""
        run = _Run(self, what)

        async def one() -> T:
            return await attempt(run.next_timeout())

        try:
            return await self._retrying(AsyncRetrying)(one)
        except Retryable as exc:
            raise run.final(exc) from None

    def _retrying(self, cls: type[BaseRetrying]) -> BaseRetrying:
        stop = stop_after_attempt(self.retries + 1)
        stop = stop | (stop_before_delay(self.deadline_s) if self.deadline_s is not None else stop_never)
        return cls(
            stop=stop,
            wait=wait_exponential_jitter(self.backoff_s, self.max_backoff_s, jitter=self.backoff_s),
            retry=retry_if_exception_type(Retryable),
            reraise=True,
        )


class _Run:
    """The clock and attempt count of one :meth:`Retry.call`."""

    def __init__(self, retry: Retry, what: str) -> None:
        self.retry, self.what = retry, what
        self.start = time.monotonic()
        self.attempts = 0

    def next_timeout(self) -> float | None:
        self.attempts += 1
        if self.retry.deadline_s is None:
            return None
        left = self.retry.deadline_s - (time.monotonic() - self.start)
        if left <= 0:  # tenacity starts no attempt past the deadline; a slow clock may still get here
            raise Retryable(TimeoutError("no time left"))
        return left

    def final(self, last: Retryable) -> BaseException:
        stopped_early = self.attempts <= self.retry.retries  # attempts left, but not the time
        if self.retry.deadline_s is not None and (stopped_early or isinstance(last.error, TimeoutError)):
            attempts = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
            return TimeoutError(f"{self.what} gave no answer within {self.retry.deadline_s:g} s "
                                f"({attempts}; last: {last.error})")
        return last.error


__all__ = ["Retry", "Retryable"]
