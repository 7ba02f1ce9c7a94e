#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the loop on ShapesWorld (shipped models).
# Writes images and the trace (trace.html, trace.png, trace.json) to ./promptloop-demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh"
"${PROMPTLOOP_VENV:-$ROOT/.venv}/bin/promptloop" demo --out "${PROMPTLOOP_DEMO_OUT:-$ROOT/promptloop-demo}" "$@"
