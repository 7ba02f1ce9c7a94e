"""API and admin keys: the dependencies that guard the endpoints.

A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key``. With no ``api_key`` set every
client may refine; admin endpoints need the admin key (``admin_key``, else ``api_key``) and are
off (403) when neither is set.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import APIError
from .state import app_state

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_key(request: Request) -> str | None:
    """The key the client sent, if any."""
    auth = request.headers.get("authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _same(key: str, expected: str) -> bool:
    return hmac.compare_digest(key.encode(), expected.encode())


def require_api_key(request: Request) -> None:
    """401 unless the API key is off or the client sent it."""
    api_key = app_state(request).settings.api_key
    if not api_key:
        return
    key = presented_key(request)
    if key is None:
        raise APIError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
                       _CHALLENGE)
    if not _same(key, api_key):
        raise APIError(401, "unauthorized", "wrong API key", _CHALLENGE)


def require_admin_key(request: Request) -> None:
    """403 when admin endpoints are off or the client sent the (non-admin) API key; 401 otherwise
    unless the client sent the admin key."""
    settings = app_state(request).settings
    admin = settings.effective_admin_key
    if not admin:
        raise APIError(403, "forbidden", "admin endpoints are off: start the server with --admin-key or --api-key")
    key = presented_key(request)
    if key is None:
        raise APIError(401, "unauthorized", "missing admin key", _CHALLENGE)
    if not _same(key, admin):
        if settings.api_key and _same(key, settings.api_key):
            raise APIError(403, "forbidden", "this key may refine but not administer; use the admin key")
        raise APIError(401, "unauthorized", "wrong admin key", _CHALLENGE)
