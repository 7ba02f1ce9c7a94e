"""Fixtures of the trainer tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def warm_policy_dir():
    from promptloop.testing.warmup import cached_warm_tiny_qwen2vl

    return cached_warm_tiny_qwen2vl()
