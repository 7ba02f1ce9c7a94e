"""Shared fixtures: tiny models built in code (no downloads), cached per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_report_header(config):
    """Name the float kernels in use: training figures move with them (AVX2 vs AVX-512)."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return (f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"
            f" (ATEN_CPU_CAPABILITY={forced or 'unset'})")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_pipes():
    """family -> a tiny pipeline (built once per session)."""
    from promptloop.testing import FAMILIES, tiny_pipeline

    return {family: tiny_pipeline(family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    from promptloop.testing.policy import save_tiny_qwen2vl

    return save_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-qwen2vl"))


@pytest.fixture(scope="session")
def tiny_policy(tiny_policy_dir):
    from promptloop.policies import SamplingConfig, TransformersPolicy

    return TransformersPolicy.from_pretrained(tiny_policy_dir, device="cpu", sampling=SamplingConfig(max_new_tokens=12))


@pytest.fixture(scope="session")
def warm_policy_dir():
    """The tiny Qwen2-VL taught to write valid refinements (cached on disk), for trainer tests."""
    from promptloop.testing.warmup import cached_warm_tiny_qwen2vl

    return cached_warm_tiny_qwen2vl()
