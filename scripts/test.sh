#!/usr/bin/env bash
# Install everything (vLLM's CPU build included) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k hook`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh" --vllm
cd "$ROOT"
exec "${PROMPTLOOP_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
