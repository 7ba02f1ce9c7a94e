"""The node pack in a real, headless ComfyUI (CPU): the example workflow runs and its trace shows
the refinements; the PromptLoop sampler matches graphs built from ComfyUI's own nodes; ComfyUI's
own page, in a real headless Chromium at 1280 x 720, loads the UI-format example with every node
known and every widget visible, converts it to the API-format file, lists and opens it as a
template, and runs it with the Trace node showing its text.

ComfyUI's own code is not on PyPI (docs/comfyui.md, "Testing"), so this runs only when pointed at
a checkout; ``bash tests/comfy/run_real_comfyui.sh /path/to/ComfyUI`` sets everything up, or:

    PROMPTLOOP_COMFYUI_DIR=/path/to/ComfyUI \
    PROMPTLOOP_COMFYUI_PYTHON=/path/to/ComfyUI/.venv/bin/python \
    python -m pytest tests/comfy/test_comfyui_integration.py -s

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``; other paths: ``PROMPTLOOP_CHROMIUM``, ``PROMPTLOOP_CHROMEDRIVER``) and selenium
(the ``dev`` extra).

ComfyUI's Python must be able to ``import promptloop`` (``pip install -e .`` into it). Everything
the run writes goes to a temporary ``--base-directory`` (models, custom_nodes, output, database):
a tiny SD1.5-shaped checkpoint built with ComfyUI's own classes, the pack (installed with
``install_into``), and a tiny random Qwen2-VL policy saved with ``save_pretrained``. The checkout
itself is not modified. The server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers import stop_process

from promptloop.comfy_nodes.install import PACK_NAME, find_comfyui_python, install_into

COMFY_DIR = os.environ.get("PROMPTLOOP_COMFYUI_DIR")
HERE = Path(__file__).resolve().parent
PACK = HERE.parents[1] / "comfy_nodes"
WORKFLOW = PACK / "api_workflows" / "promptloop_api.json"
UI_WORKFLOW = PACK / "example_workflows" / "promptloop.json"
CKPT = "tiny_sd15.safetensors"
TEXT = "a lighthouse on a rocky cliff at sunset"

pytestmark = [
    pytest.mark.slow,
    # ComfyUI runs a dozen sampler graphs and the policy trains an adapter: minutes on a busy CPU
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        not COMFY_DIR,
        reason="PROMPTLOOP_COMFYUI_DIR is not set: point it at a ComfyUI checkout (and PROMPTLOOP_COMFYUI_PYTHON "
               "at its python) to run the pack in a real ComfyUI",
    ),
]


def _python() -> str:
    explicit = os.environ.get("PROMPTLOOP_COMFYUI_PYTHON")
    if explicit:
        return explicit
    found = find_comfyui_python(COMFY_DIR)
    return str(found) if found else sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base: Path, port: int, proc: subprocess.Popen, log: Path) -> None:
        self.base, self.port, self.proc, self.log = base, port, proc, log
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def run(self, graph: dict, timeout: float = 900.0, *, expect_error: bool = False) -> dict:
        """Queue ``graph``, wait on the websocket until it has run, return its /history entry
        (with ``expect_error``: the ``execution_error`` event's data)."""
        client_id = uuid.uuid4().hex
        ws = _connect_ws(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}")
        try:
            body = json.dumps({"prompt": graph, "client_id": client_id}).encode()
            request = urllib.request.Request(self.url + "/prompt", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    prompt_id = json.loads(response.read())["prompt_id"]
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"ComfyUI rejected the workflow: {exc.read().decode()}") from None
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"workflow did not finish in {timeout} s\n{self.log_tail()}")
                message = ws.recv(min(remaining, 30.0))
                if message is None or isinstance(message, bytes):  # timeout tick / binary preview
                    if self.proc.poll() is not None:
                        raise AssertionError(f"ComfyUI exited\n{self.log_tail()}")
                    continue
                event = json.loads(message)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if event["type"] == "execution_error":
                    if expect_error:
                        return data
                    raise AssertionError(f"workflow failed: {data.get('exception_message')}\n"
                                         f"{''.join(data.get('traceback', []))}")
                if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        assert not expect_error, "the workflow ran without the expected error"
        history = self.get(f"/history/{prompt_id}")[prompt_id]
        assert history["status"]["status_str"] == "success", history["status"]
        return history


class _WS:
    """A minimal blocking websocket client over ``websockets`` (sync API) or ``aiohttp``."""

    def __init__(self, url: str) -> None:
        try:
            from websockets.sync.client import connect

            self._ws = connect(url, max_size=None, open_timeout=30)
            self._kind = "websockets"
        except ImportError:
            import asyncio

            import aiohttp

            self._loop = asyncio.new_event_loop()
            self._session = self._loop.run_until_complete(self._make_session(aiohttp))
            self._ws = self._loop.run_until_complete(self._session.ws_connect(url, max_msg_size=0))
            self._kind = "aiohttp"

    @staticmethod
    async def _make_session(aiohttp):
        return aiohttp.ClientSession()

    def recv(self, timeout: float):
        if self._kind == "websockets":
            try:
                return self._ws.recv(timeout=timeout)
            except TimeoutError:
                return None
        import asyncio

        try:
            msg = self._loop.run_until_complete(self._ws.receive(timeout=timeout))
        except asyncio.TimeoutError:
            return None
        return msg.data

    def close(self) -> None:
        if self._kind == "websockets":
            self._ws.close()
        else:
            self._loop.run_until_complete(self._ws.close())
            self._loop.run_until_complete(self._session.close())
            self._loop.close()


def _connect_ws(url: str) -> _WS:
    return _WS(url)


@pytest.fixture(scope="module")
def tiny_policy_name(comfy_base):
    from promptloop.testing import save_tiny_qwen2vl

    save_tiny_qwen2vl(comfy_base / "models" / "promptloop" / "tiny-qwen2vl")
    return "tiny-qwen2vl"  # found by the loader node under models/promptloop/


TAUGHT = TEXT + ", oil painting"  # what the LoRA adapter below teaches the tiny policy to answer


@pytest.fixture(scope="module")
def tiny_adapter_name(comfy_base, tiny_policy_name):
    models = comfy_base / "models" / "promptloop"
    save_taught_adapter(models / tiny_policy_name, models / "tiny-qwen2vl-lora")
    return "tiny-qwen2vl-lora"


def save_taught_adapter(policy_dir: Path, out: Path) -> Path:
    """Save a peft LoRA adapter that teaches the random tiny policy to answer ``TAUGHT``.

    A random policy only writes garbage (recorded as fallbacks); a few steps of supervised
    fine-tuning on chat inputs built exactly as the policy builds them (preview image included)
    make it answer a real prompt, so the ComfyUI run shows a refinement that is applied and
    re-encoded - through the real loader, backend, adapter and vision path.
    """
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from PIL import Image

    from promptloop.policies import TransformersPolicy
    from promptloop.refinement import Observation

    policy = TransformersPolicy.from_pretrained(policy_dir, device="cpu")
    torch.manual_seed(0)
    model = get_peft_model(policy.model, LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    rng = np.random.default_rng(0)
    previews = [Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)) for _ in range(2)]
    previews.append(Image.new("RGB", (112, 112), (40, 70, 110)))
    observations = [Observation(TEXT, TEXT, 2, 6, preview=previews[0]),
                    Observation(TEXT, TAUGHT, 4, 6, preview=previews[1], history=[TEXT]),
                    Observation(TEXT, TEXT, 1, 10, preview=previews[2])]
    conversations = [policy.messages_for(o) for o in observations]
    # Teacher-forced log-probs of the answer after each chat, through the policy's public scoring
    # path (the inputs it generates from: same chat template, same prepared preview images).
    answer = policy.tokenizer.encode(TAUGHT + "<|im_end|>", add_special_tokens=False)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        scored = policy.score(conversations, [answer] * len(conversations), model=model, temperature=1.0,
                              entropies=False)
        loss = -(scored.logprobs * scored.mask).sum() / scored.mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def comfy_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("comfyui-base")
    for sub in ("models/checkpoints", "models/promptloop", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture(scope="module")
def comfy(comfy_base):
    python = _python()
    built = subprocess.run(
        [python, str(HERE / "tiny_comfy_checkpoint.py"), "--comfyui", COMFY_DIR,
         "--out", str(comfy_base / "models" / "checkpoints" / CKPT)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    install_into(comfy_base / "custom_nodes", mode="copy")  # as the registry would: the folder alone

    port = _free_port()
    log = comfy_base / "comfyui.log"
    # One thread: the models are tiny, and on a shared CPU spinning OpenMP threads cost more than they give.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--base-directory", str(comfy_base), "--database-url", f"sqlite:///{comfy_base / 'comfyui.db'}",
             "--disable-auto-launch", "--preview-method", "latent2rgb"],
            cwd=COMFY_DIR, stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    server = ComfyServer(comfy_base, port, proc, log)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited at start-up\n{server.log_tail()}")
            try:
                server.get("/object_info/PromptLoopSampler")
                break
            except (urllib.error.URLError, ConnectionError, KeyError, json.JSONDecodeError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not come up\n{server.log_tail()}") from None
                time.sleep(1.0)
        yield server
    finally:
        stop_process(proc)


def _load_latent(server: ComfyServer, history: dict, node: str):
    from safetensors.torch import load_file

    files = history["outputs"][node]["latents"]
    assert len(files) == 1
    item = files[0]
    return load_file(str(server.base / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]


def _trace(history: dict, node: str) -> dict:
    return history["outputs"][node]["promptloop_trace"][0]


# -- tests ------------------------------------------------------------------------------------
def test_pack_is_registered(comfy):
    info = comfy.get("/object_info")
    for name, display in [("PromptLoopLoadPolicy", "Load PromptLoop Policy"), ("PromptLoopSampler", "PromptLoop Sampler"),
                          ("PromptLoopRemotePolicy", "PromptLoop Remote Policy (sidecar)"),
                          ("PromptLoopScriptedPolicy", "PromptLoop Scripted Policy (no model)"),
                          ("PromptLoopTrace", "PromptLoop Trace")]:
        assert info[name]["category"] == "PromptLoop"
        assert info[name]["display_name"] == display
    sampler = info["PromptLoopSampler"]["input"]["required"]
    ksampler = info["KSampler"]["input"]["required"]
    assert sampler["sampler_name"][0] == ksampler["sampler_name"][0]  # ComfyUI's own sampler list
    assert sampler["scheduler"][0] == ksampler["scheduler"][0]
    assert "tooltip" in sampler["schedule"][1]
    failed = [line for line in comfy.log.read_text().splitlines() if "IMPORT FAILED" in line and "promptloop" in line]
    assert not failed, failed


def test_example_workflow_with_tiny_policy(comfy, tiny_policy_name, tiny_adapter_name):
    graph = json.loads(WORKFLOW.read_text())
    graph["1"]["inputs"]["ckpt_name"] = CKPT
    graph["3"]["inputs"].update(width=64, height=64, batch_size=2)
    graph["4"]["inputs"].update(policy=tiny_policy_name, adapter=tiny_adapter_name, max_new_tokens=32)
    graph["5"]["inputs"].update(steps=6, cfg=5.0, schedule="0.3,0.6", preview_size=112)
    start = time.perf_counter()
    history = comfy.run(graph)
    elapsed = time.perf_counter() - start
    trace = _trace(history, "8")
    entries = trace["entries"]
    print(f"\n[example workflow, tiny Qwen2-VL policy + LoRA] finished in {elapsed:.1f} s")
    print(history["outputs"]["8"]["text"][0])
    for e in entries:
        print(f"  sample {e['sample_index']} step {e['step']}: policy wrote {(e['raw_text'] or '')[:60]!r} -> {e['fallback']}")
    print("meta:", json.dumps({k: trace["meta"][k] for k in ("mode", "refine_steps", "segments",
                                                             "reencoded_after_steps", "policy_calls")}))
    assert trace["original_prompts"] == [TEXT, TEXT]
    assert trace["meta"]["frontend"] == "comfyui" and trace["meta"]["refine_steps"] == [2, 4]
    assert trace["meta"]["segments"] == [[0, 3], [3, 5], [5, 6]]
    assert trace["meta"]["policy_calls"] == 2  # one batched call per refine step
    assert sorted((e["sample_index"], e["step"]) for e in entries) == [(0, 2), (0, 4), (1, 2), (1, 4)]
    for e in entries:  # each refinement was applied at its step, or the trace says why the prompt was kept
        assert e["fallback"] is not None or e["applied_step"] == e["step"]
    # the taught policy (base weights + LoRA adapter, seeing the preview) rewrote the prompt at the
    # first refinement step, and the sampler re-encoded it there
    first = [e for e in entries if e["step"] == 2]
    assert any(e["fallback"] is None and e["prompt_after"] == TAUGHT for e in first), first
    assert trace["meta"]["reencoded_after_steps"][:1] == [2]
    assert TAUGHT in history["outputs"]["8"]["text"][0]
    assert len(history["outputs"]["7"]["images"]) == 2  # the decoded images were saved
    strip = history["outputs"]["8"]["images"][0]
    saved = comfy.base / "output" / strip["subfolder"]
    assert (saved / strip["filename"]).is_file()
    trace_dir = saved / strip["filename"].removesuffix(".png")
    assert (trace_dir / "trace.json").is_file() and (trace_dir / "trace.html").is_file()
    assert len(list((trace_dir / "previews").glob("*.png"))) == 4  # the previews the policy saw


def _base_graph(batch: int = 1) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "script": {"class_type": "PromptLoopScriptedPolicy",
                   "inputs": {"template": "{current}, detailed\n{current}, oil painting"}},
    }


def _pl_sampler(schedule: str, mode: str = "sync", async_delay: int = 2, seed: int = 7) -> dict:
    return {"class_type": "PromptLoopSampler", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "text": TEXT, "negative": ["neg", 0],
        "latent_image": ["latent", 0], "seed": seed, "steps": 6, "cfg": 5.0, "sampler_name": "euler",
        "scheduler": "normal", "denoise": 1.0, "policy": ["script", 0], "schedule": schedule, "mode": mode,
        "preview": "linear", "async_delay": async_delay}}


def _save(node: str, prefix: str) -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": f"latents/{prefix}"}}


def _trace_node(sampler: str) -> dict:
    return {"class_type": "PromptLoopTrace", "inputs": {"trace": [sampler, 1], "thumb_size": 64, "save": False,
                                                         "filename_prefix": "promptloop/trace"}}


def test_sampler_matches_comfyui_graphs(comfy):
    """Empty schedule == KSampler; a schedule == KSamplerAdvanced segments with re-encoded text."""
    import torch

    g = _base_graph()
    # plain KSampler on CLIPTextEncode(TEXT)
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": ["ckpt", 1]}}
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": 7, "steps": 6, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
    g["save_ks"] = _save("ks", "ks")
    # PromptLoop with no refinement
    g["pl_none"] = _pl_sampler("none")
    g["save_none"] = _save("pl_none", "pl_none")
    # PromptLoop refining after steps 1 and 3 (sync, then ahead with the same scripted prompts)
    g["pl_sync"] = _pl_sampler("1,3")
    g["save_sync"] = _save("pl_sync", "pl_sync")
    g["trace_sync"] = _trace_node("pl_sync")
    g["pl_ahead"] = _pl_sampler("1,3", mode="ahead")
    g["save_ahead"] = _save("pl_ahead", "pl_ahead")
    g["trace_ahead"] = _trace_node("pl_ahead")
    g["pl_async"] = _pl_sampler("1", mode="async", async_delay=2)
    g["pl_async"]["inputs"].update(preview="vae", vae=["ckpt", 2])  # the policy sees a VAE-decoded x0
    g["trace_async"] = _trace_node("pl_async")
    # The same refinement by hand: three KSamplerAdvanced segments, each with CLIPTextEncode(text)
    texts = [TEXT, TEXT + ", detailed", TEXT + ", detailed, oil painting"]
    bounds = [(0, 2), (2, 4), (4, 10000)]
    previous = ["latent", 0]
    for i, (text, (start, end)) in enumerate(zip(texts, bounds)):
        g[f"enc{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}}
        g[f"adv{i}"] = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["ckpt", 0], "add_noise": "enable" if i == 0 else "disable", "noise_seed": 7 + start,
            "steps": 6, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "positive": [f"enc{i}", 0],
            "negative": ["neg", 0], "latent_image": previous, "start_at_step": start, "end_at_step": end,
            "return_with_leftover_noise": "enable" if i < 2 else "disable"}}
        previous = [f"adv{i}", 0]
    g["save_manual"] = _save("adv2", "manual")

    history = comfy.run(g)
    ks, none = _load_latent(comfy, history, "save_ks"), _load_latent(comfy, history, "save_none")
    sync, ahead = _load_latent(comfy, history, "save_sync"), _load_latent(comfy, history, "save_ahead")
    manual = _load_latent(comfy, history, "save_manual")
    print("\n[equivalence] |none-KSampler|max =", float((none - ks).abs().max()),
          " |sync-manual|max =", float((sync - manual).abs().max()),
          " |ahead-sync|max =", float((ahead - sync).abs().max()),
          " |sync-KSampler|max =", float((sync - ks).abs().max()))
    assert torch.equal(none, ks), "an empty schedule must reproduce KSampler bit for bit"
    assert torch.equal(sync, manual), "refinement must equal hand-chained segments with re-encoded text"
    assert torch.equal(ahead, sync)
    assert not torch.equal(sync, ks)

    trace = _trace(history, "trace_sync")
    print(history["outputs"]["trace_sync"]["text"][0])
    assert [(e["step"], e["applied_step"], e["prompt_after"]) for e in trace["entries"]] == [
        (1, 1, texts[1]), (3, 3, texts[2])]
    assert trace["meta"]["segments"] == [[0, 2], [2, 4], [4, 6]]
    assert trace["meta"]["reencoded_after_steps"] == [1, 3]
    ahead_trace = _trace(history, "trace_ahead")
    assert [e["prompt_after"] for e in ahead_trace["entries"]] == texts[1:]
    assert ahead_trace["meta"]["policy_calls"] == 1
    async_trace = _trace(history, "trace_async")
    assert [(e["step"], e["applied_step"]) for e in async_trace["entries"]] == [(1, 3)]
    assert async_trace["meta"]["segments"] == [[0, 2], [2, 4], [4, 6]]


def test_what_the_user_is_told(comfy):
    """Policy failures and a schedule outside the run reach ComfyUI's console and the trace; an
    unknown policy name says where it was looked for."""
    g = _base_graph()
    g["remote"] = {"class_type": "PromptLoopRemotePolicy", "inputs": {
        "url": f"http://127.0.0.1:{_free_port()}", "protocol": "promptloop", "api_key": "", "timeout_s": 2.0}}
    g["pl_remote"] = _pl_sampler("1,3")
    g["pl_remote"]["inputs"]["policy"] = ["remote", 0]
    g["trace_remote"] = _trace_node("pl_remote")
    g["pl_late"] = _pl_sampler("25")
    g["trace_late"] = _trace_node("pl_late")
    history = comfy.run(g)
    log = comfy.log.read_text()
    remote, late = _trace(history, "trace_remote"), _trace(history, "trace_late")
    assert [(e["step"], e["fallback"]) for e in remote["entries"]] == [(1, "error"), (3, "error")]
    assert "PromptLoop Sampler: the policy's answer was not used at step 1 of 0-5, step 3 of 0-5 (sample 0): error:" in log
    assert "PromptLoop Sampler: schedule '25': step 25 never refines: a 6-step run can refine after steps 0-4" in log
    assert late["entries"] == [] and "step 25 never refines" in late["meta"]["warnings"][0]
    assert history["outputs"]["trace_late"]["text"][0].startswith("warning: schedule '25'")
    assert "step 1 of 0-5: kept prompt (error:" in history["outputs"]["trace_remote"]["text"][0]

    g = _base_graph()
    g["load"] = {"class_type": "PromptLoopLoadPolicy", "inputs": {
        "policy": "no-such-policy", "backend": "transformers", "adapter": "", "device": "auto", "dtype": "auto",
        "max_new_tokens": 16, "temperature": 0.0}}
    g["pl"] = _pl_sampler("1")
    g["pl"]["inputs"]["policy"] = ["load", 0]
    g["save"] = _save("pl", "unknown")
    start = time.perf_counter()
    error = comfy.run(g, expect_error=True)
    elapsed = time.perf_counter() - start
    print(f"\n[unknown policy] after {elapsed:.1f} s:", error["exception_message"])
    assert error["exception_type"].endswith("FileNotFoundError")
    assert str(comfy.base / "models" / "promptloop" / "no-such-policy") in error["exception_message"]
    assert "HF_HUB_OFFLINE is set" in error["exception_message"]  # the server runs offline: no hub retries
    assert elapsed < 60  # (the graph still loads the checkpoint; the hub retries alone took ~47 s)

    # a schedule that does not parse is refused when queued, with every form it could be
    g = _base_graph()
    g["pl"] = _pl_sampler("evenly:x")
    g["save"] = _save("pl", "bad-schedule")
    body = json.dumps({"prompt": g}).encode()
    request = urllib.request.Request(comfy.url + "/prompt", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    answer = refused.value.read().decode()
    print("[bad schedule]", answer[:400])
    assert refused.value.code == 400 and "bad schedule 'evenly:x'" in answer and "'none'" in answer and "random:5" in answer


def test_interrupt_stops_the_sampler(comfy):
    """ComfyUI's Cancel (POST /interrupt) stops a PromptLoop run between steps."""
    g = _base_graph()
    slow = copy.deepcopy(_pl_sampler("every:1"))
    slow["inputs"]["steps"] = 400
    g["pl"] = slow
    g["save"] = _save("pl", "interrupted")
    client_id = uuid.uuid4().hex
    ws = _connect_ws(f"ws://127.0.0.1:{comfy.port}/ws?clientId={client_id}")
    try:
        body = json.dumps({"prompt": g, "client_id": client_id}).encode()
        req = urllib.request.Request(comfy.url + "/prompt", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
        interrupted = False
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            message = ws.recv(30.0)
            if message is None or isinstance(message, bytes):
                continue
            event = json.loads(message)
            data = event.get("data", {})
            if event["type"] == "progress" and data.get("value", 0) >= 3 and not interrupted:
                urllib.request.urlopen(urllib.request.Request(comfy.url + "/interrupt", b"", method="POST"), timeout=30)
                interrupted = True
            if event["type"] == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                break
            if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                raise AssertionError("the run finished instead of being interrupted")
        else:
            raise AssertionError("no execution_interrupted event")
    finally:
        ws.close()
    # ComfyUI files the prompt in /history just after it sends execution_interrupted
    deadline = time.monotonic() + 60
    while (history := comfy.get(f"/history/{prompt_id}").get(prompt_id)) is None:
        assert time.monotonic() < deadline, "the interrupted prompt never reached /history"
        time.sleep(0.5)
    assert "save" not in history.get("outputs", {})


SHAPESWORLD = HERE.parents[1] / "promptloop" / "assets" / "shapesworld" / "backbone-c"
LOAD_WITH_COMFY = """
import sys
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd, comfy.utils
for what, load in [("unet", lambda: comfy.sd.load_diffusion_model(sys.argv_unet)),
                   ("vae", lambda: comfy.sd.VAE(sd=comfy.utils.load_torch_file(sys.argv_vae)))]:
    try:
        load()
        print(what, "LOADED")
    except Exception as exc:
        print(what, "FAILED", " ".join(str(exc).split())[:300])
"""


def test_shapesworld_backbone_is_not_loadable(comfy):
    """Why the example cannot show ShapesWorld shapes (docs/comfyui.md): ComfyUI's loaders accept only
    its registered architectures, and the tiny ShapesWorld UNet and VAE match none. If a ComfyUI
    release starts accepting them, this fails: then ship a ShapesWorld checkpoint and template."""
    code = LOAD_WITH_COMFY.replace("sys.argv_unet", repr(str(SHAPESWORLD / "unet" / "diffusion_pytorch_model.safetensors")))
    code = code.replace("sys.argv_vae", repr(str(SHAPESWORLD / "vae" / "diffusion_pytorch_model.safetensors")))
    done = subprocess.run([_python(), "-c", code], check=False, cwd=COMFY_DIR, capture_output=True, text=True, timeout=600)
    print("\n[ShapesWorld in ComfyUI]", done.stdout.strip())
    assert "unet FAILED ERROR: Could not detect model type" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "vae FAILED" in done.stdout and "size mismatch" in done.stdout + done.stderr


# -- the page, in a real browser ---------------------------------------------------------------
# For a closed network: no background requests, no first-run or sync services, a fresh profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,720"]
PAGE = (1280, 720)  # the page (viewport) the example must fit, in CSS pixels
SHOTS = os.environ.get("PROMPTLOOP_COMFYUI_SCREENSHOTS")  # also save the screenshots there (docs/comfyui/)

# Runs in the page: load the UI workflow as Workflow -> Open does (or keep the graph shown), let the
# canvas lay the nodes out, and report what the editor made of them plus the page's own UI -> API conversion.
LOAD_AND_INSPECT = """
const workflow = arguments[0];
return (async () => {
  const frame = () => new Promise(resolve => requestAnimationFrame(() => resolve()));
  if (workflow) await app.loadGraphData(workflow, true, true, "promptloop.json");  // null: inspect the graph as it is
  for (let i = 0; i < 5; i++) { app.canvas.setDirty(true, true); app.canvas.draw(true, true); await frame(); }
  const canvas = app.canvas.canvas.getBoundingClientRect();
  const nodes = app.graph.nodes.map(n => ({
    id: String(n.id), type: n.type, title: n.title, registered: n.type in LiteGraph.registered_node_types,
    comfyClass: n.comfyClass ?? null, has_errors: !!n.has_errors, color: n.color ?? null, bgcolor: n.bgcolor ?? null,
    pos: Array.from(n.pos), size: Array.from(n.size), bounding: Array.from(n.boundingRect),
    title_on_canvas: [n.pos[0] + 12, n.pos[0] + n.size[0] / 2, n.pos[0] + n.size[0] - 12].map(cx => {
      const [sx, sy] = app.canvas.ds.convertOffsetToCanvas([cx, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2]);
      return document.elementFromPoint(canvas.left + sx, canvas.top + sy) === app.canvas.canvas;
    }),
    min_size: Array.from(n.computeSize()),
    widgets: (n.widgets ?? []).map(w => {
      let element = null;
      if (w.element) {
        const r = w.element.getBoundingClientRect();
        const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        element = {width: r.width, height: r.height, on_top: !!top && (top === w.element || w.element.contains(top)),
                   display: getComputedStyle(w.element).display, visibility: getComputedStyle(w.element).visibility};
      }
      // canvas widgets: is the page's canvas what is under the widget's left end, middle and
      // right end (not a menu, side bar, minimap or dialog over it)?
      let on_canvas = null;
      if (!w.element && w.y != null && w.computedHeight) {
        const cy = n.pos[1] + w.y + w.computedHeight / 2;
        on_canvas = [n.pos[0] + 12, n.pos[0] + n.size[0] / 2, n.pos[0] + n.size[0] - 12].map(cx => {
          const [sx, sy] = app.canvas.ds.convertOffsetToCanvas([cx, cy]);
          return document.elementFromPoint(canvas.left + sx, canvas.top + sy) === app.canvas.canvas;
        });
      }
      return {name: w.name, type: w.type, y: w.y ?? w.last_y ?? null, height: w.computedHeight ?? null,
              visible: n.isWidgetVisible ? n.isWidgetVisible(w) : !w.hidden, element, on_canvas};
    }),
  }));
  const prompt = await app.graphToPrompt();
  const dialogs = Array.from(document.querySelectorAll('[role="dialog"]')).map(d => d.innerText.slice(0, 300));
  // below this zoom ComfyUI draws no text (LiteGraph's low-quality rendering)
  const low_quality_below = app.extensionManager.setting.get("LiteGraph.Canvas.LowQualityRenderingZoomThreshold");
  return {nodes, output: prompt.output, canvas: [canvas.left, canvas.top, canvas.width, canvas.height],
          ds: {scale: app.canvas.ds.scale, offset: Array.from(app.canvas.ds.offset)}, dialogs, low_quality_below};
})();
"""


# Runs in the page: ComfyUI's "Fit view" (the "." key, or the zoom menu), then the zoom it chose.
FIT_VIEW = """
return (async () => {
  await app.extensionManager.command.execute("Comfy.Canvas.FitView");
  await new Promise(resolve => setTimeout(resolve, 1000));
  return app.canvas.ds.scale;
})();
"""

# Runs in the page: Templates -> Custom Nodes -> this pack, as a user browses them; reports each
# card and its thumbnail.
BROWSE_TEMPLATES = """
const [pack] = arguments;
return (async () => {
  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
  const until = async (what, seconds = 60) => {
    for (let i = 0; i < seconds * 10; i++) { const got = what(); if (got) return got; await sleep(100); }
    throw new Error("timed out waiting for " + what);
  };
  await app.extensionManager.command.execute("Comfy.BrowseTemplates");
  const dialog = await until(() => document.querySelector('[role="dialog"]'));
  const entry = await until(() => Array.from(dialog.querySelectorAll("li")).find(e => e.textContent.trim() === pack));
  entry.scrollIntoView();
  entry.click();
  await until(() => dialog.querySelector('[data-testid^="template-workflow-"]'));
  await sleep(3000);  // let the thumbnails load (or fail)
  return Array.from(dialog.querySelectorAll('[data-testid^="template-workflow-"]')).map(card => {
    const img = card.querySelector("img");
    return {name: card.dataset.testid.replace("template-workflow-", ""), title: card.querySelector("h3")?.textContent.trim(),
            thumbnail: img ? {src: img.getAttribute("src"), width: img.naturalWidth, shown: getComputedStyle(img).display !== "none"} : null};
  });
})();
"""

# Runs in the page, with the templates dialog open: choose template ``arguments[0]`` and report
# the graph it loaded and any message the page showed.
OPEN_TEMPLATE = """
const [name] = arguments;
return (async () => {
  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
  app.graph.clear();
  document.querySelector(`[data-testid="template-workflow-${name}"]`).click();
  for (let i = 0; i < 600 && app.graph.nodes.length === 0; i++) await sleep(100);
  await sleep(1000);
  const messages = Array.from(document.querySelectorAll('[role="dialog"], [role="alert"], .p-toast-message'))
    .map(e => e.innerText.slice(0, 300)).filter(text => text.trim());
  return {nodes: app.graph.nodes.map(n => ({id: String(n.id), type: n.type, has_errors: !!n.has_errors})), messages};
})();
"""

# Runs in the page: point the loaded example at the test's tiny models, press Queue, wait for the
# run, and report what the PromptLoop Trace node shows (its text box and the strip).
RUN_IN_PAGE = """
const [values] = arguments;
return (async () => {
  for (const [id, name, value] of values) {
    app.graph.getNodeById(Number(id)).widgets.find(w => w.name === name).value = value;
  }
  const done = new Promise(resolve => {
    app.api.addEventListener("execution_success", () => resolve("success"));
    app.api.addEventListener("execution_error", e => resolve("error: " + JSON.stringify(e.detail).slice(0, 2000)));
  });
  await app.queuePrompt(0, 1);
  const status = await done;
  await new Promise(resolve => setTimeout(resolve, 2000));
  for (let i = 0; i < 3; i++) { app.canvas.setDirty(true, true); app.canvas.draw(true, true); }
  const trace = app.graph.nodes.find(n => n.type === "PromptLoopTrace");
  const box = trace.widgets.find(w => w.name === "trace_text");
  const r = box.element.getBoundingClientRect();
  const top = document.elementFromPoint(r.left + r.width / 2, r.top + Math.min(r.height / 2, 20));
  return {status, text: box.value, box: {width: r.width, height: r.height, on_top: !!top && (top === box.element || box.element.contains(top))},
          strip: (trace.imgs ?? []).map(img => [img.naturalWidth, img.naturalHeight]), scale: app.canvas.ds.scale};
})();
"""


def _open_page(browser, comfy) -> float:
    """Load ComfyUI's page; the seconds it took to come up."""
    start = time.perf_counter()
    browser.get(comfy.url)
    deadline = time.monotonic() + 300
    ready = "return !!(window.app && app.graph && app.canvas && window.LiteGraph && " \
            "LiteGraph.registered_node_types['PromptLoopSampler'])"
    while not browser.execute_script(ready):
        assert time.monotonic() < deadline, f"the page did not come up\n{browser.get_log('browser')}"
        time.sleep(0.5)
    return time.perf_counter() - start


def _screenshot(browser, comfy, name: str) -> Path:
    """Save the page as ``name`` in the base directory (and in $PROMPTLOOP_COMFYUI_SCREENSHOTS)."""
    path = comfy.base / name
    browser.save_screenshot(str(path))
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(SHOTS) / name)
    return path


def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser(comfy, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = _find("PROMPTLOOP_CHROMIUM", "chromium", "chromium-browser")
    driver = _find("PROMPTLOOP_CHROMEDRIVER", "chromedriver")
    assert chromium and driver, "the browser test needs Chromium and its driver: apt-get install chromium chromium-driver"
    # A new ComfyUI user gets the template browser over the canvas; a returning one does not.
    request = urllib.request.Request(comfy.url + "/settings/Comfy.TutorialCompleted", b"true",
                                     {"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=30).close()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_script_timeout(600)
    session.get(comfy.url)
    # the window's frame takes part of --window-size: size the window so that the page is PAGE
    extra = session.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight]")
    session.set_window_size(PAGE[0] + extra[0], PAGE[1] + extra[1])
    assert session.execute_script("return [innerWidth, innerHeight]") == list(PAGE)
    try:
        yield session
    finally:
        session.quit()


def _overlap(a, b) -> bool:
    """Whether two ``[x, y, width, height]`` rectangles share an area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_ui_workflow_in_the_browser(comfy, browser):
    """ComfyUI's page loads the UI example: no missing or red node, every widget visible, and its
    own UI -> API conversion (graphToPrompt) gives the API-format file."""
    start = time.perf_counter()
    loaded = _open_page(browser, comfy)
    page = browser.execute_script(LOAD_AND_INSPECT, json.loads(UI_WORKFLOW.read_text()))
    _screenshot(browser, comfy, "promptloop_ui.png")
    logs = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    print(f"\n[browser] page up in {loaded:.1f} s, workflow checked in {time.perf_counter() - start - loaded:.1f} s; "
          f"view {page['ds']}, canvas {page['canvas']}; screenshot {comfy.base / 'promptloop_ui.png'}")
    for node in page["nodes"]:
        print(f"  {node['id']:>2} {node['type']:<24} pos {[round(v) for v in node['pos']]} size "
              f"{[round(v) for v in node['size']]} (needs {[round(v) for v in node['min_size']]})")

    api = json.loads(WORKFLOW.read_text())
    nodes = {n["id"]: n for n in page["nodes"]}
    # every node known to the page (a missing type becomes a red placeholder with has_errors)
    assert {i: n["type"] for i, n in nodes.items()} == {i: spec["class_type"] for i, spec in api.items()}
    for node in nodes.values():
        assert node["registered"] and node["comfyClass"] == node["type"] and not node["has_errors"], node
        assert node["color"] is None and node["bgcolor"] is None, node  # not marked (red) by the page
    assert not [d for d in page["dialogs"] if "missing" in d.lower()], page["dialogs"]
    assert not [m for m in logs if "promptloop" in m.lower() or "validation" in m.lower()], logs

    # no node covers another, each node has the room the editor computes for it, and every
    # widget lies inside its own node and under no other
    for a in nodes.values():
        for b in nodes.values():
            if a["id"] < b["id"]:
                assert not _overlap(a["bounding"], b["bounding"]), (a["type"], b["type"])
    for node in nodes.values():
        assert node["size"][0] >= node["min_size"][0] - 1 and node["size"][1] >= node["min_size"][1] - 1, node
        x, y = node["pos"]
        for widget in node["widgets"]:
            where = f"{node['type']}.{widget['name']}"
            assert widget["visible"] and widget["y"] is not None and widget["height"], (where, widget)
            assert widget["y"] + widget["height"] <= node["size"][1] + 1, (where, widget, node["size"])
            rect = [x, y + widget["y"], node["size"][0], widget["height"]]
            covering = [o["type"] for o in nodes.values() if o["id"] != node["id"] and _overlap(rect, o["bounding"])]
            assert not covering, (where, covering)
            if widget["on_canvas"] is not None:  # drawn on the canvas, and nothing of the page is over it
                assert all(widget["on_canvas"]), (where, widget)
            if widget["element"] is not None:  # a DOM widget (the multiline prompt): shown and on top
                element = widget["element"]
                assert element["display"] != "none" and element["visibility"] == "visible", (where, element)
                assert element["width"] > 50 and element["height"] > 30 and element["on_top"], (where, element)
    pack_widgets = {n["type"]: [w["name"] for w in n["widgets"]] for n in nodes.values() if n["type"].startswith("PromptLoop")}
    sampler_widgets = set(pack_widgets["PromptLoopSampler"])
    assert {"text", "schedule", "mode", "preview", "preview_size", "timeout_s", "async_delay"} <= sampler_widgets

    # the whole graph is on a 1280 x 720 page at the view the workflow opens with, at a zoom where
    # ComfyUI draws text, and no title bar is under the workflow tabs, the minimap or a menu
    scale, (ox, oy) = page["ds"]["scale"], page["ds"]["offset"]
    width, height = page["canvas"][2:]
    assert page["canvas"][0] + width <= PAGE[0] and page["canvas"][1] + height <= PAGE[1], page["canvas"]
    assert scale >= page["low_quality_below"], (scale, page["low_quality_below"])
    for node in nodes.values():
        bx, by, bw, bh = node["bounding"]
        assert (bx + ox) * scale >= 0 and (by + oy) * scale >= 0, node["type"]
        assert (bx + bw + ox) * scale <= width and (by + bh + oy) * scale <= height, (node["type"], page["canvas"])
        assert all(node["title_on_canvas"]), (node["type"], node["title_on_canvas"])

    # the page's own UI -> API conversion is the API-format file
    assert page["output"] == api

    # ComfyUI's Fit View keeps the text drawn too (it zoomed to 0.43 with the earlier layout)
    fit = browser.execute_script(FIT_VIEW)
    print(f"[browser] opening zoom {scale}, Fit View zoom {fit:.3f}; no text below {page['low_quality_below']}")
    assert fit >= page["low_quality_below"]


def test_template_opens_from_the_templates_dialog(comfy, browser):
    """Templates -> Custom Nodes -> comfyui-promptloop lists the UI-format examples, each with its
    thumbnail, and choosing one opens its graph (an API-format file there failed: "Required at
    'version'", and empty canvas)."""
    _open_page(browser, comfy)
    templates = sorted(f.stem for f in UI_WORKFLOW.parent.glob("*.json"))
    cards = browser.execute_script(BROWSE_TEMPLATES, PACK_NAME)
    _screenshot(browser, comfy, "promptloop_templates.png")
    result = browser.execute_script(OPEN_TEMPLATE, UI_WORKFLOW.stem)
    print(f"\n[templates] {cards}\n  opened: {[n['type'] for n in result['nodes']]}; messages {result['messages']}")
    assert sorted(card["name"] for card in cards) == templates
    for card in cards:
        thumbnail = card["thumbnail"]
        assert thumbnail and thumbnail["width"] > 0 and thumbnail["shown"], card  # the .jpg was served and shown
    expected = json.loads(UI_WORKFLOW.read_text())
    assert sorted((n["id"], n["type"]) for n in result["nodes"]) == sorted((str(n["id"]), n["type"]) for n in expected["nodes"])
    assert not any(n["has_errors"] for n in result["nodes"])
    assert not [m for m in result["messages"] if "version" in m.lower() or "invalid" in m.lower()], result["messages"]


def test_example_runs_in_the_page_and_the_trace_node_shows_its_text(comfy, browser, tiny_policy_name, tiny_adapter_name):
    """Queue the example from the page (as Run does): the Trace node shows the refinements in its
    text box and the strip under it, and the whole graph still fits the 1280 x 720 page."""
    _open_page(browser, comfy)
    page = browser.execute_script(LOAD_AND_INSPECT, json.loads(UI_WORKFLOW.read_text()))
    values = [("1", "ckpt_name", CKPT), ("3", "width", 64), ("3", "height", 64), ("4", "policy", tiny_policy_name),
              ("4", "adapter", tiny_adapter_name), ("4", "max_new_tokens", 32), ("5", "steps", 6), ("5", "cfg", 5.0),
              ("5", "schedule", "0.3,0.6"), ("5", "preview_size", 112)]
    shown = browser.execute_script(RUN_IN_PAGE, values)
    _screenshot(browser, comfy, "promptloop_run.png")
    print(f"\n[run in the page] {shown['status']}; strip {shown['strip']}; text box {shown['box']}\n{shown['text']}")
    assert shown["status"] == "success"
    assert "step 2 of 0-5: " + TAUGHT in shown["text"] and shown["text"].startswith("sample 0: " + TEXT)
    assert shown["box"]["on_top"] and shown["box"]["height"] >= 40, shown["box"]
    assert len(shown["strip"]) == 1 and shown["strip"][0][0] > 0
    assert shown["scale"] == page["ds"]["scale"]
    after = browser.execute_script(LOAD_AND_INSPECT, None)
    for node in after["nodes"]:  # the images the run added still leave every widget uncovered
        for widget in node["widgets"]:
            if widget["on_canvas"] is not None:
                assert all(widget["on_canvas"]), (node["type"], widget["name"], widget["on_canvas"])
