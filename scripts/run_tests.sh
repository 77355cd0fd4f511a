#!/usr/bin/env bash
# The project's test command (README command 2 and .ci/run). GPU tests run only where CUDA is present.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -n 2 --dist loadfile -m "not gpu" "$@"
