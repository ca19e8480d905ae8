#!/usr/bin/env bash
# Set up .venv and run the whole test suite (real daemons, sockets, subprocesses and kill -9).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Every process the suite starts carries a tag; whatever still carries it afterwards was left
# behind by a test: it is listed, killed, and fails the run.
. scripts/leftovers.sh
tag_session tests
STATUS=0
.venv/bin/python -m pytest "$@" || STATUS=$?
reap_leftovers "scripts/test.sh" || { [ "$STATUS" -ne 0 ] || STATUS=1; }
exit "$STATUS"
