"""What one sidecar app holds (``app.state.promptloop``), and the dependency that hands it out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .backbones import BackboneStore
from .engine import Engine
from .errors import APIError
from .metrics import Metrics
from .settings import Settings


@dataclass(eq=False)
class AppState:
    """The settings, metrics, policy engine and backbones of one app, and how far loading got.

    ``engine``/``backbones`` are ``None`` until loaded (or given to ``create_app``); ``ready``
    turns true once the engine has started and warmed up; ``load_error`` says why it did not.
    """

    settings: Settings
    metrics: Metrics
    engine: Engine | None = None
    backbones: BackboneStore | None = None
    ready: bool = False
    load_error: str | None = None
    load_task: asyncio.Task | None = None

    def ready_engine(self) -> Engine:
        """The engine, or 503 while it loads or after it failed to."""
        if not self.ready:
            if self.load_error:
                raise APIError(503, "not_ready", f"the policy failed to load: {self.load_error}")
            raise APIError(503, "not_ready", "the policy is still loading; retry when /ready answers 200",
                           {"Retry-After": "5"})
        return self.engine


def app_state(request: Request) -> AppState:
    """The state of the app that received ``request``."""
    return request.app.state.promptloop


#: A handler parameter that receives the app's state.
State = Annotated[AppState, Depends(app_state)]
