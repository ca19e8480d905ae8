# Sourced by demo.sh and test.sh: find processes a command of ours left behind.
#
# Every process started under `tag_session` inherits TRITTER_SESSION_TAG in its environment,
# including ones reparented to init after their parent exited (a pid file or $! would miss
# those), so after the command `leftovers` lists whatever still carries the tag.

tag_session() {
    export TRITTER_SESSION_TAG="${1:-session}-$$-${RANDOM}${RANDOM}"
}

# Print "PID ARGS" of every process still carrying our tag, except this shell and its subshells.
leftovers() {
    local f pid
    [ -n "${TRITTER_SESSION_TAG:-}" ] || return 0
    for f in $(env -u TRITTER_SESSION_TAG grep -lzx "TRITTER_SESSION_TAG=$TRITTER_SESSION_TAG" /proc/[0-9]*/environ 2>/dev/null); do
        pid=${f#/proc/}; pid=${pid%/environ}
        [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ] && continue
        [ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$BASHPID" ] && continue  # our own pipeline
        echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    done
}

# Kill leftovers (after a last chance to exit on their own) and say which; status 1 if any.
reap_leftovers() {
    local what=$1 left i
    for i in $(seq 50); do  # up to 5 s for processes that are already on their way out
        left=$(leftovers)
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    echo "$what: processes left behind (killing them):" >&2
    echo "$left" | sed 's/^/  /' >&2
    echo "$left" | while read -r pid _; do kill -KILL "$pid" 2>/dev/null || true; done
    return 1
}
