"""The app's parts on their own, with a scripted engine (no model): handlers called directly
with an ``AppState``, and every request check's exact error answer (shape checks in the
schemas, limits against the settings, keys)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from scripted import ScriptedEngine

from promptloop.server import Settings, create_app, routes
from promptloop.server.backbones import BackboneStore
from promptloop.server.errors import APIError
from promptloop.server.metrics import Metrics
from promptloop.server.schemas import PlanRequest, RefineRequest
from promptloop.server.state import AppState

LIMITS = {"max_batch": 2, "max_prompt_chars": 20, "max_history": 2, "max_new_tokens_limit": 50}
ADMIN = {"Authorization": "Bearer admin"}
STEPS = {"step": 1, "num_steps": 4}


def _settings(**overrides) -> Settings:
    return Settings(policy="scripted", backend="transformers", warmup=False, **{**LIMITS, **overrides})


def _state(**overrides) -> AppState:
    return AppState(_settings(**overrides), Metrics(), engine=ScriptedEngine(), backbones=BackboneStore(), ready=True)


# -- handlers without HTTP -----------------------------------------------------------------------
def test_refine_and_plan_handlers_answer_when_called_directly():
    state = _state()
    answer = asyncio.run(routes.refine(RefineRequest(prompt="a cat", **STEPS), state))
    assert (answer.prompt, answer.model, len(answer.refinements)) == ("a scripted prompt", "scripted", 1)
    plans = asyncio.run(routes.plan(PlanRequest(prompts=["a cat", "a dog"], steps=[1, 2], num_steps=4), state))
    assert [[r.text for r in plan] for plan in plans.plans] == [["a scripted prompt"] * 2] * 2


def test_ready_handler_follows_the_state():
    state = _state()
    assert asyncio.run(routes.ready(state)) == {"status": "ready"}
    state.ready = False
    assert json.loads(asyncio.run(routes.ready(state)).body)["error"] == "loading"
    state.load_error = "OSError: no weights"
    answer = asyncio.run(routes.ready(state))
    assert answer.status_code == 503 and json.loads(answer.body)["detail"].endswith("OSError: no weights")
    with pytest.raises(APIError, match="failed to load: OSError: no weights"):
        asyncio.run(routes.refine(RefineRequest(prompt="a cat", **STEPS), state))


def test_a_handler_checks_the_settings_limits_without_http():
    with pytest.raises(APIError) as refused:
        asyncio.run(routes.plan(PlanRequest(prompts=["a", "b", "c"], steps=[1], num_steps=4), _state()))
    assert (refused.value.status, refused.value.error, refused.value.detail) == (
        413, "batch_too_large", "3 prompts, more than the limit 2"
    )


# -- exact answers over the app -----------------------------------------------------------------
ITEM = {"prompt": "a cat"}
CASES = {
    # request shape (schemas.py)
    "empty prompt": ("/refine", {"prompt": "  ", **STEPS}, 422, "invalid_request", "prompt: must not be empty"),
    "NUL in a prompt": ("/refine", {"prompt": "a\x00b", **STEPS}, 422, "invalid_request",
                        "prompt: contains a NUL character"),
    "lone surrogate": ("/refine", {"items": [ITEM, {"prompt": "b", "current_prompt": "a \ud800"}], **STEPS}, 422,
                       "invalid_request",
                       "items[1].current_prompt: lone surrogate U+D800 at character 2 (not valid Unicode text)"),
    "NUL in history": ("/refine", {"items": [{"prompt": "b", "history": ["", "x\x00"]}], **STEPS}, 422,
                       "invalid_request", "items[0].history[1]: contains a NUL character"),
    "no steps": ("/refine", {"prompt": "a cat"}, 422, "invalid_request",
                 "request: 'step' and 'num_steps' are required"),
    "no steps in an item": ("/refine", {"items": [{"prompt": "a", "step": 1}]}, 422, "invalid_request",
                            "items[0].'step' and 'num_steps' are required"),
    "step not below": ("/refine", {"prompt": "a cat", "step": 4, "num_steps": 4}, 422, "invalid_request",
                       "step: 4 is not below num_steps 4"),
    "image and latent": ("/refine", {"items": [{"prompt": "a", "image": "x"}], "latent": "x", "latent_format": "sd15",
                                     **STEPS}, 422, "invalid_request", "give preview images or a latent, not both"),
    "adapter and base": ("/refine", {"prompt": "a", "adapter": "oil", "use_base_model": True, **STEPS}, 422,
                         "invalid_request", "give 'adapter' or 'use_base_model', not both"),
    "empty batch": ("/refine", {"items": [], **STEPS}, 422, "invalid_request", "Value error, 'items' is empty"),
    "plan: empty prompt": ("/plan", {"prompts": ["a", " "], "steps": [1], "num_steps": 4}, 422, "invalid_request",
                           "prompts[1]: must not be empty"),
    "plan: step outside": ("/plan", {"prompts": ["a"], "steps": [1, 4], "num_steps": 4}, 422, "invalid_request",
                           "steps must lie in [0, 4)"),
    "plan: negative step": ("/plan", {"prompts": ["a"], "steps": [-1], "num_steps": 4}, 422, "invalid_request",
                            "steps must lie in [0, 4)"),
    "plan: adapter and base": ("/plan", {"prompts": ["a"], "steps": [1], "num_steps": 4, "adapter": "oil",
                                         "use_base_model": True}, 422, "invalid_request",
                               "give 'adapter' or 'use_base_model', not both"),
    "adapter without name": ("/admin/adapter", {"name": None, "path": "/somewhere"}, 422, "invalid_request",
                             "loading an adapter needs a 'name'"),
    # this server's limits (limits.py)
    "batch": ("/refine", {"items": [ITEM] * 3, **STEPS}, 413, "batch_too_large", "3 items, more than the limit 2"),
    "long prompt": ("/refine", {"prompt": "a" * 21, **STEPS}, 422, "invalid_request",
                    "prompt: 21 characters, more than the limit 20"),
    "long history entry": ("/refine", {"items": [ITEM, {"prompt": "b", "history": ["x" * 25]}], **STEPS}, 422,
                           "invalid_request", "items[1].history[0]: 25 characters, more than the limit 20"),
    "long history": ("/refine", {"prompt": "a", "history": ["a", "b", "c"], **STEPS}, 422, "invalid_request",
                     "history: 3 entries, more than 2"),
    "max_new_tokens": ("/refine", {"prompt": "a", "sampling": {"max_new_tokens": 51}, **STEPS}, 422,
                       "invalid_request", "sampling.max_new_tokens 51 exceeds this server's limit 50"),
    "plan: batch": ("/plan", {"prompts": ["a", "b", "c"], "steps": [1], "num_steps": 4}, 413, "batch_too_large",
                    "3 prompts, more than the limit 2"),
    "plan: long prompt": ("/plan", {"prompts": ["a" * 30], "steps": [1], "num_steps": 4}, 422, "invalid_request",
                          "prompts[0]: 30 characters, more than the limit 20"),
    # the engine's adapters
    "unknown adapter": ("/refine", {"prompt": "a", "adapter": "oil", **STEPS}, 422, "unknown_adapter",
                        "unknown adapter 'oil'; loaded adapters: none"),
}


@pytest.fixture(scope="module")
def client():
    app = create_app(_settings(api_key=None, admin_key="admin"), engine=ScriptedEngine(), backbones=BackboneStore())
    app.state.promptloop.ready = True  # no lifespan: the scripted engine needs no start
    return TestClient(app)


@pytest.mark.parametrize("case", list(CASES))
def test_each_check_answers_exactly(client, case):
    path, body, status, error, detail = CASES[case]
    answer = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json", **ADMIN})
    assert answer.status_code == status, answer.text
    assert answer.json() == {"error": error, "detail": detail, "status": status}


def test_keys_answer_exactly():
    app = create_app(_settings(api_key="user", admin_key="admin"), engine=ScriptedEngine(), backbones=BackboneStore())
    app.state.promptloop.ready = True
    client = TestClient(app)
    body = {"prompt": "a", **STEPS}
    assert client.post("/refine", json=body).json()["detail"].startswith("missing API key")
    wrong = client.post("/refine", json=body, headers={"X-API-Key": "nope"})
    assert (wrong.status_code, wrong.json()["detail"], wrong.headers["www-authenticate"]) == (
        401, "wrong API key", "Bearer"
    )
    assert client.post("/refine", json=body, headers={"X-API-Key": "user"}).status_code == 200
    user = client.post("/admin/adapter", json={"name": None}, headers={"Authorization": "Bearer user"})
    assert (user.status_code, user.json()["detail"]) == (403, "this key may refine but not administer; use the admin key")
    assert client.post("/admin/adapter", json={"name": None}, headers=ADMIN).json() == {"adapter": None, "adapters": {}}
