#!/usr/bin/env bash
# Install everything (vLLM's CPU build included), lint with ruff and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k hook`; a ruff finding fails the command
# before any test runs (ruff's settings: [tool.ruff] in pyproject.toml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh" --vllm
cd "$ROOT"
VENV="${PROMPTLOOP_VENV:-$ROOT/.venv}"
echo "==> ruff check"
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest "$@"
