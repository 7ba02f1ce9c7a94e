"""A scripted policy and engine (no model): they answer "a scripted prompt", after a delay or
with a failure, so that the app around them can be tested for real."""

from __future__ import annotations

import asyncio
import threading

from promptloop.policies.base import Generation, GenerativePolicy
from promptloop.server.engine import Engine


class ScriptedPolicy(GenerativePolicy):
    """Answers "a scripted prompt" after ``delay_s``, or fails."""

    def __init__(self, *, delay_s: float = 0.0, fail_generate: bool = False) -> None:
        super().__init__()
        self.delay_s, self.fail_generate = delay_s, fail_generate
        self.cancelled = 0

    def generate(self, conversations, *, sampling=None, adapter=None):  # the server only awaits agenerate
        raise AssertionError

    async def agenerate(self, conversations, *, sampling=None, adapter=None):
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_generate:
            raise RuntimeError("engine died")
        return [Generation(text="a scripted prompt") for _ in conversations]


class ScriptedEngine(Engine):
    backend = "scripted"

    def __init__(self, *, start_gate: threading.Event | None = None, fail_start: bool = False, **policy) -> None:
        super().__init__(ScriptedPolicy(**policy), "scripted")
        self.start_gate, self.fail_start = start_gate, fail_start

    async def start(self) -> None:
        if self.start_gate is not None:
            while not self.start_gate.is_set():
                await asyncio.sleep(0.02)
        if self.fail_start:
            raise RuntimeError("weights not found")
