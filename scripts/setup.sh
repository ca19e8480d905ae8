#!/usr/bin/env bash
# Create .venv with tritter and its test tools. torch is pinned to the CPU wheel this project
# is developed against (any other spec would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, zmq, msgspec, tritter.daemon, tritter.clients, tritter.protocol" \
    || { echo "setup: tritter did not install; see the pip output above" >&2; exit 1; }
