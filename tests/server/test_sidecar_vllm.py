"""What only the vLLM backend does: one shared AsyncLLM engine, LoRA, log-probs, seeds, and the
OpenAI-compatible client against a real ``vllm serve``."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest
from conftest import API_KEY, server_settings, start_server
from PIL import Image
from trained_policy import ADAPTER_ANSWER, BASE_ANSWER

from promptloop.policies import SamplingConfig
from promptloop.policies.http import HTTPPolicy
from promptloop.refinement import Observation

pytestmark = pytest.mark.vllm


def _observations():
    return [
        Observation("a red fox", "a red fox", 2, 10, preview=Image.new("RGB", (64, 64), (200, 60, 20))),
        Observation("a castle", "a castle, fog", 5, 10, preview=Image.new("RGB", (96, 64), (20, 60, 200)),
                    history=["a castle"], sample_index=1),
        Observation("a dog", "a dog", 0, 4),
    ]


def test_engine_policy_matches_transformers_token_for_token(vllm_server, tf_policy):
    """Same weights, greedy: the served AsyncLLM and model.generate give the same tokens, and
    vLLM's log-probs match a transformers forward pass."""
    policy = vllm_server.state.engine.policy  # the server's AsyncVLLMPolicy, called from this thread
    sampling = SamplingConfig(max_new_tokens=24, return_logprobs=True)
    conversations = [policy.messages_for(o) for o in _observations()]
    ours = policy.generate(conversations, sampling=sampling)
    theirs = tf_policy.generate(conversations, sampling=sampling)
    for a, b in zip(ours, theirs):
        assert a.text == b.text == BASE_ANSWER
        assert a.token_ids == b.token_ids and a.finished and b.finished
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-3


def test_lora_adapter_matches_peft(vllm_server, trained_dirs):
    from promptloop.policies import TransformersPolicy

    policy_dir, adapter_dir = trained_dirs
    peft_policy = TransformersPolicy.from_pretrained(policy_dir, adapter=adapter_dir, device="cpu",
                                                     sampling=SamplingConfig(max_new_tokens=24))
    engine_policy = vllm_server.state.engine.policy
    conversations = [engine_policy.messages_for(o) for o in _observations()]
    with_adapter = engine_policy.generate(conversations, adapter="oil")
    assert [g.text for g in with_adapter] == [g.text for g in peft_policy.generate(conversations)]
    assert {g.text for g in with_adapter} == {ADAPTER_ANSWER}
    assert {g.text for g in engine_policy.generate(conversations, adapter=None)} == {BASE_ANSWER}


def test_seeded_sampling_is_reproducible_per_request(vllm_server):
    body = {"prompt": "a cat", "step": 1, "num_steps": 4,
            "sampling": {"temperature": 1.5, "seed": 1234, "return_logprobs": True, "max_new_tokens": 12}}
    with vllm_server.client() as c:
        first = c.post("/refine", json=body).json()["refinements"][0]
        second = c.post("/refine", json=body).json()["refinements"][0]
        other = c.post("/refine", json={**body, "sampling": {**body["sampling"], "seed": 99}}).json()
    assert first["token_ids"] == second["token_ids"] and first["logprobs"] == second["logprobs"]
    assert other["refinements"][0]["token_ids"] is not None


def test_concurrent_requests_share_the_engine(vllm_server):
    """Requests from many clients are batched by the one engine (continuous batching): all
    answered, and the total time is far below the sum of the single-request latencies."""
    def one(i):
        with HTTPPolicy(vllm_server.url, api_key=API_KEY, timeout_s=120, retries=0) as policy:
            obs = Observation(f"subject {i}", f"subject {i}", 1, 4, preview=Image.new("RGB", (56, 56), (i, i, i)))
            return policy.refine([obs])[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    assert all(r.fallback is None and r.text == BASE_ANSWER for r in results)
    assert {r.extra["model"] for r in results} == {str(vllm_server.state.engine.model)}


def test_openai_client_against_a_real_vllm_serve(openai_endpoint, tf_policy):
    """OpenAIChatPolicy (base64 image_url parts, concurrent requests) against `vllm serve` of the
    same weights gives the in-process answers; the LoRA module is a served model name; and the
    sidecar with --backend openai forwards to it."""

    from promptloop.policies.openai import OpenAIChatPolicy

    url = openai_endpoint.wait()
    observations = _observations()
    with OpenAIChatPolicy(url, model="tiny", sampling=SamplingConfig(max_new_tokens=24, return_logprobs=True)) as policy:
        assert set(policy.list_models()) >= {"tiny", "oil"}
        remote = policy.refine(observations)
        local = tf_policy.refine(observations)
        assert [r.raw_text for r in remote] == [r.raw_text for r in local]
        assert all(r.fallback is None and r.text == BASE_ANSWER for r in remote)
        assert [r.token_ids for r in remote] == [r.token_ids for r in local]
        policy.model = "oil"
        assert {r.text for r in policy.refine(observations)} == {ADAPTER_ANSWER}
    with OpenAIChatPolicy(url) as default_model:  # no model named: the endpoint's first (the base)
        assert default_model.refine(observations[:1])[0].text == BASE_ANSWER
        assert default_model.model == "tiny"

    # the sidecar in front of it
    settings = server_settings(url, "tiny", "unused", "openai", adapters={"oil": "oil"}, backbones={},
                               openai_model="tiny")
    live = start_server(settings, ready_timeout=120)
    try:
        with live.client() as c:
            r = c.post("/refine", json={"prompt": "a cat", "step": 1, "num_steps": 4,
                                        "image": None})
            assert r.status_code == 200 and r.json()["prompt"] == BASE_ANSWER, r.text
            assert c.post("/refine", json={"prompt": "a cat", "step": 1, "num_steps": 4,
                                           "adapter": "oil"}).json()["prompt"] == ADAPTER_ANSWER
        refs = HTTPPolicy(live.url, api_key=API_KEY).refine(observations)
        assert [r.text for r in refs] == [BASE_ANSWER] * 3
        assert httpx.get(live.url + "/ready").status_code == 200
    finally:
        live.stop()
