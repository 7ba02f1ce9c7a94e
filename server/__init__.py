"""The PromptLoop HTTP sidecar (installed as ``promptloop.server``).

``create_app(settings)`` builds the FastAPI app; ``promptloop serve`` (or
``python -m promptloop.server``) runs it under uvicorn. See ``docs/sidecar.md``.

Importing this package is cheap: FastAPI, the policy backends and vLLM load only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(name)
