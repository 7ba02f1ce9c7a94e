"""vLLM's compiled sampler functions run eagerly where inductor has no vector ISA (the engine
died on the first request under ATEN_CPU_CAPABILITY=default)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

PROBE = ("import json; from promptloop.policies.vllm import compile_guard_env; "
         "print(json.dumps(compile_guard_env()))")


def _guard_env(**env):
    run_env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCH_COMPILE_DISABLE")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**run_env, **env}, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.vllm
def test_scalar_kernels_turn_torch_compile_off_for_the_engine():
    assert _guard_env(ATEN_CPU_CAPABILITY="default") == {"TORCH_COMPILE_DISABLE": "1"}


@pytest.mark.vllm
def test_vector_kernels_keep_torch_compile():
    import torch

    if torch.backends.cpu.get_cpu_capability() == "DEFAULT" and "ATEN_CPU_CAPABILITY" not in os.environ:
        pytest.skip("this CPU has neither AVX2 nor AVX-512")
    assert _guard_env(ATEN_CPU_CAPABILITY="avx2") == {}
