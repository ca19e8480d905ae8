#!/usr/bin/env bash
# Set up .venv, start tritterd (with its recorder) on ./home, train tiny -> small on the
# embedded corpus, wait for it, and say where everything is.  Extra args go to `tritterctl start`.
# Nothing it starts outlives it: on any exit the follower and the daemon (which checkpoints the
# run; its worker and recorder end with it) are stopped and waited for, then checked for.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/leftovers.sh
tag_session demo
[ "${TRITTER_DEMO_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh  # the tests skip it: .venv exists
export TRITTER_HOME=${TRITTER_HOME:-$PWD/home}
BIN=$PWD/.venv/bin
mkdir -p "$TRITTER_HOME"
"$BIN/tritterd" 2>>"$TRITTER_HOME/tritterd.log" &
DAEMON=$!
FOLLOW=
cleanup() {
    local status=$?
    set +e  # clean up everything, whatever fails
    [ -n "$FOLLOW" ] && kill "$FOLLOW" 2>/dev/null
    kill -TERM "$DAEMON" 2>/dev/null
    wait 2>/dev/null
    reap_leftovers demo.sh
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq 100); do "$BIN/tritterctl" runs >/dev/null 2>&1 && break; sleep 0.2; done
RUN=$("$BIN/tritterctl" start --start tiny --end small --steps 100 --name demo "$@")
echo "run $RUN started; following it (Ctrl-C stops watching, the run is checkpointed)"
# `a | b &` would make $! grep's pid and leave tritterctl running; with the filter in a process
# substitution $! is tritterctl itself, and grep ends when tritterctl's output closes.
"$BIN/tritterctl" events --follow --since 1 > >(grep --line-buffered -E " (run|stage|phase|checkpoint) |step [0-9]*0 ") &
FOLLOW=$!
STATUS=0
"$BIN/tritterctl" wait "$RUN" || STATUS=$?
kill "$FOLLOW" 2>/dev/null || true
wait "$FOLLOW" 2>/dev/null || true
FOLLOW=
echo
"$BIN/tritterctl" status "$RUN" || true
echo
echo "results:   $TRITTER_HOME/runs/$RUN/ (run.json, metrics.jsonl, eval.jsonl, checkpoints/)"
for stage in "$TRITTER_HOME/runs/$RUN"/export/*/; do
    [ -d "$stage" ] && echo "model:     $stage (transformers.AutoModelForCausalLM.from_pretrained; README.md has a snippet)"
done
echo "event log: $TRITTER_HOME/events.log    daemon log: $TRITTER_HOME/tritterd.log"
[ "$STATUS" -eq 0 ] || echo "the run did not complete: the reason is in the status above, details in $TRITTER_HOME/tritterd.log" >&2
exit $STATUS
