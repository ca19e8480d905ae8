#!/usr/bin/env bash
# Set up .venv, start tritterd (with its recorder) on ./home, train tiny -> small on the
# embedded corpus, wait for it, and say where everything is.  Extra args go to `tritterctl start`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TRITTER_HOME=${TRITTER_HOME:-$PWD/home}
BIN=$PWD/.venv/bin
mkdir -p "$TRITTER_HOME"
"$BIN/tritterd" 2>>"$TRITTER_HOME/tritterd.log" &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 100); do "$BIN/tritterctl" runs >/dev/null 2>&1 && break; sleep 0.2; done
RUN=$("$BIN/tritterctl" start --start tiny --end small --steps 100 --name demo "$@")
echo "run $RUN started; following it (Ctrl-C stops watching, the run is checkpointed)"
"$BIN/tritterctl" events --follow --since 1 | grep --line-buffered -E " (run|stage|phase|checkpoint) |step [0-9]*0 " &
FOLLOW=$!
STATUS=0
"$BIN/tritterctl" wait "$RUN" || STATUS=$?
kill $FOLLOW 2>/dev/null || true
echo
"$BIN/tritterctl" status "$RUN" || true
echo
echo "results:   $TRITTER_HOME/runs/$RUN/ (run.json, metrics.jsonl, checkpoints/)"
echo "event log: $TRITTER_HOME/events.log    daemon log: $TRITTER_HOME/tritterd.log"
exit $STATUS
