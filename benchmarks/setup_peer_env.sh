#!/usr/bin/env bash
# Build the peer environment for the benchmarks: the published `spared` 2.2.1 library in its OWN venv
# (benchmarks/_work/venv-spared, git-ignored), so that it never touches the project's .venv.
#
#   bash benchmarks/setup_peer_env.sh
#
# spared 2.2.1 declares no dependencies; we install torch first (the 2.13.0 wheel, so pip does not pull a
# CUDA build), then spared with --no-deps, then only what the modules the benchmarks import need
# (layer_operations, denoising, spot_features, gene_features, filtering). torchvision and lightning, which
# those modules import at the top but the benchmarked functions never call, are NOT installed: the runner
# (bench_median.py --peer, used by both benchmarks) registers empty stand-ins for them before importing spared.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=_work/venv-spared
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "spared==2.2.1" --no-deps
"$VENV/bin/pip" install -q numpy pandas scipy anndata scanpy squidpy scikit-learn wget combat tqdm h5py
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for p in ("spared", "torch", "scanpy", "squidpy", "anndata", "numpy"):
    print(f"{p}=={md.version(p)}")
PY
