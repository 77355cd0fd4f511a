#!/usr/bin/env bash
# Create .venv and install spared_tools with its test extras.
# torch is installed FIRST as the CPU wheel (torch==2.13.0): any other torch requirement would make pip
# download several GB of CUDA packages. On a GPU machine, install the CUDA torch build you want instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[${EXTRAS:-test}]"
# compile the numba kernels into their on-disk cache now, not inside the first pp call (~40 s on 2 cores)
.venv/bin/python -m spared_tools._kernels.warmup
