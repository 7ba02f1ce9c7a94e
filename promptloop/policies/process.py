"""Run any policy in a child process.

A policy running in a thread of the sampling process competes with sampling for Python's GIL:
both launch many small kernels, so ``mode="async"`` cannot hide the policy's latency. In a child
process (like the HTTP sidecar, without the network) the policy runs truly in parallel.

    from functools import partial
    from promptloop.policies import TransformersPolicy
    from promptloop.policies.process import ProcessPolicy

    policy = ProcessPolicy(partial(TransformersPolicy.from_pretrained, "Qwen/Qwen2.5-VL-3B-Instruct"))
    hook = PromptLoopHook(policy, mode="async")

The factory must be picklable (a module-level function or a ``functools.partial``); with the
default ``spawn`` start method, scripts need an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from promptloop.refinement import Observation, Refinement

if TYPE_CHECKING:
    from typing_extensions import Self


def _serve(factory: Callable[[], Any], conn) -> None:
    try:
        policy = factory()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    conn.send(("ready", type(policy).__name__))
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return
        if method == "close":
            return
        try:
            conn.send(("ok", getattr(policy, method)(*args)))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessPolicy:
    """A policy served from a child process; same ``refine``/``plan`` interface.

    Args:
        factory: builds the real policy inside the child (picklable).
        start_method: ``"spawn"`` (default; safe with CUDA) or ``"forkserver"``.
        startup_timeout_s: longest wait for the child to build its policy.
    """

    def __init__(self, factory: Callable[[], Any], *, start_method: str = "spawn",
                 startup_timeout_s: float = 600.0) -> None:
        ctx = mp.get_context(start_method)
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(factory, child), daemon=True, name="promptloop-policy")
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        if not self._conn.poll(startup_timeout_s):
            self.close()
            raise TimeoutError(f"the policy process did not start within {startup_timeout_s:g} s")
        status, payload = self._conn.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"the policy process failed to start: {payload}")
        self.name = f"process:{payload}"

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            if not self._process.is_alive():
                raise RuntimeError("the policy process has exited")
            self._conn.send((method, args))
            status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"policy process: {payload}")
        return payload

    def refine(self, observations: Sequence[Observation]) -> list[Refinement]:
        return self._call("refine", list(observations))

    def plan(self, prompts: Sequence[str], steps: Sequence[int], num_steps: int) -> list[list[Refinement]]:
        return self._call("plan", list(prompts), list(steps), num_steps)

    def close(self) -> None:
        """Stop the child process (also done at interpreter exit: it is a daemon)."""
        try:
            if self._process.is_alive():
                self._conn.send(("close", ()))
                self._process.join(timeout=5)
        except (OSError, ValueError, BrokenPipeError):
            pass
        if self._process.is_alive():
            self._process.terminate()
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
