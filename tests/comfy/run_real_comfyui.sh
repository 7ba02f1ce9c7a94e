#!/usr/bin/env bash
# The real-ComfyUI tests (tests/comfy/test_comfyui_integration.py), as a maintainer runs them
# before a release. CI cannot: no package on PyPI carries ComfyUI's own code (docs/comfyui.md,
# "Testing"), so this needs a ComfyUI checkout, e.g. of the release the pack was last checked with:
#
#   git clone --depth 1 --branch v0.3.64 https://github.com/comfyanonymous/ComfyUI /opt/ComfyUI
#   bash tests/comfy/run_real_comfyui.sh /opt/ComfyUI [pytest arguments]
#
# What it does, each step skipped when already done:
#   1. the project's venv (scripts/install.sh), which runs pytest and selenium;
#   2. a venv for ComfyUI (ComfyUI/.venv-promptloop, or $PROMPTLOOP_COMFYUI_VENV) that sees the
#      project venv's packages (torch, torchvision, promptloop itself, editable) and adds ComfyUI's
#      own requirements.txt with its pins (front end, templates, docs), less torch/torchvision/
#      torchaudio;
#   3. Debian's chromium and chromium-driver for the browser tests (apt-get, as root), unless
#      PROMPTLOOP_CHROMIUM / PROMPTLOOP_CHROMEDRIVER name other binaries;
#   4. the tests. The checkout is not modified (everything goes to a temporary base directory).
#      PROMPTLOOP_COMFYUI_SCREENSHOTS=docs/comfyui also refreshes the screenshots in the docs.
set -euo pipefail

if [[ $# -lt 1 || ! -f "$1/main.py" ]]; then
    echo "usage: bash tests/comfy/run_real_comfyui.sh /path/to/ComfyUI [pytest arguments]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
COMFY="$(cd "$1" && pwd)"
shift
VENV="${PROMPTLOOP_VENV:-$ROOT/.venv}"
COMFY_VENV="${PROMPTLOOP_COMFYUI_VENV:-$COMFY/.venv-promptloop}"

[[ -x "$VENV/bin/python" ]] || bash "$ROOT/scripts/install.sh"

if [[ ! -x "$COMFY_VENV/bin/python" ]]; then
    echo "==> creating $COMFY_VENV (on top of $VENV)"
    base="$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)')"
    "$base/bin/python3" -m venv "$COMFY_VENV"
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    comfy_site="$("$COMFY_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "import site; site.addsitedir('$site')" > "$comfy_site/zz_promptloop_project_venv.pth"
fi
echo "==> ComfyUI's requirements into $COMFY_VENV"
grep -vE '^(torch|torchvision|torchaudio)([^a-z_-]|$)' "$COMFY/requirements.txt" > "$COMFY_VENV/comfyui-requirements.txt"
"$COMFY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$COMFY_VENV/comfyui-requirements.txt"
"$COMFY_VENV/bin/python" -c "import torch, torchvision, promptloop, comfyui_frontend_package"

if [[ -z "${PROMPTLOOP_CHROMIUM:-}" ]] && ! command -v chromium >/dev/null 2>&1; then
    echo "==> installing chromium and chromium-driver"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi

echo "==> ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py"), front end" \
     "$("$COMFY_VENV/bin/python" -c 'from importlib.metadata import version; print(version("comfyui-frontend-package"))')"
cd "$ROOT"
PROMPTLOOP_COMFYUI_DIR="$COMFY" PROMPTLOOP_COMFYUI_PYTHON="$COMFY_VENV/bin/python" \
    exec "$VENV/bin/python" -m pytest tests/comfy/test_comfyui_integration.py -s -p no:cacheprovider "$@"
