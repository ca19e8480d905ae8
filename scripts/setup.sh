#!/usr/bin/env bash
# Create .venv with tritter and its test tools. torch is pinned to the CPU wheel this project
# is developed against (any other spec would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv and installing torch, tritter and its test tools (the first time takes a few minutes)" >&2
    "$PY" -m venv .venv
fi
# pipefail: a failed pip install fails setup; only the noise line is filtered (grep finding
# nothing to print is not an error).
quiet() { { grep -v "is ignored" || true; }; }
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | quiet
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | quiet
# Everything the tests import, test tools included: a missing one fails here, not as skips.
.venv/bin/python -c "import torch, zmq, msgspec, tritter.daemon, tritter.clients, tritter.protocol, tritter.formats, tritter.recipe, pyarrow, blosc2, xxhash, aiofiles, wcwidth, tensorboardX, prometheus_client, psutil, tensorboard, pytest, pytest_timeout, hypothesis, transformers" \
    || { echo "setup: tritter or a test dependency did not install; see the pip output above" >&2; exit 1; }
