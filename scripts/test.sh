#!/usr/bin/env bash
# Set up .venv and run the whole test suite (real daemons, sockets, subprocesses and kill -9).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
