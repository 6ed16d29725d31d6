#!/usr/bin/env bash
# An operator's tour of homerd, replayed: every day-to-day thing README's "Operating
# homerd" promises, tried the way a person at a shell would, each either working as
# described or refused with a clear message and its documented exit code.
#
#   scripts/tour.sh [HOMERD] [HARNESS]
#
# HOMERD defaults to target/debug/homerd. With HARNESS (a homer-harness binary) the tour
# also fails a scenario on purpose and opens its timeline. Prints one line per check and
# exits 1 if any failed. Everything happens in a temporary home that is removed after.
# No step sleeps to let something happen: each waits for the event it needs (`homerd
# wait`, `homerd logs -f`, a line in the daemon's stderr) under a generous deadline.
set -u -o pipefail

homerd=${1:-target/debug/homerd}
harness=${2:-}
case $homerd in /*) ;; *) homerd=$PWD/$homerd ;; esac
[ -x "$homerd" ] || { echo "tour: no homerd at $homerd (cargo build -p homerd)" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
scale=${HOMER_TEST_TIME_SCALE:-1}
deadline=$(awk "BEGIN { printf \"%d\", 30 * $scale }")

work=$(mktemp -d "${TMPDIR:-/tmp}/homer-tour.XXXXXX")
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ]; then kill -KILL "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT
export HOMER_HOME=$work/home
unset HOMER_CONFIG HOMER_LOCK_FILE HOMER_LOG_LEVEL HOMER_LOG_FORMAT HOMER_DATABASE

failures=0
ok() { printf 'ok    %s\n' "$1"; }
bad() { printf 'FAIL  %s\n' "$1"; shift; for l in "$@"; do printf '      %s\n' "$l"; done; failures=$((failures + 1)); }
# check NAME COMMAND...: the command's status 0 is a pass.
check() { local name=$1; shift; if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$out"; fi; }
# run CODE ARGS...: runs homerd, keeps stdout in $out and stderr in $err, true if it exited CODE.
run() { local want=$1; shift; out=$("$homerd" "$@" 2>"$work/stderr"); code=$?; err=$(cat "$work/stderr"); [ "$code" = "$want" ]; }
# until_line FILE PATTERN: waits (deadline) for a line matching PATTERN to appear in FILE.
until_line() {
    local end=$((SECONDS + deadline))
    while ! grep -q -- "$2" "$1" 2>/dev/null; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.05 # how often to look again; the deadline above bounds a genuine failure
    done
}
enqueue() { "$homerd" enqueue "$@" 2>>"$work/stderr"; }

echo "homerd tour: $("$homerd" --version) in $work"

# --- Before the first start -------------------------------------------------------------
run 0 list && [ "$(printf '%s\n' "$out" | grep -c '^ *[0-9]')" = 0 ] \
    && ok "list before the first start: an empty list, exit 0" || bad "list before the first start" "exit $code" "$out" "$err"
run 66 show 1 && printf '%s' "$err" | grep -q "has not created its database" \
    && ok "show before the first start: exit 66, says why" || bad "show before the first start" "exit $code" "$err"
run 66 cancel 1 && printf '%s' "$err" | grep -q "has not created its database" \
    && ok "cancel before the first start: exit 66, says why" || bad "cancel before the first start" "exit $code" "$err"
run 65 enqueue noop && printf '%s' "$err" | grep -q "start the daemon once" \
    && ok "enqueue before the first start: exit 65, says what to do" || bad "enqueue before the first start" "exit $code" "$err"

# --- Start: INFO by default -----------------------------------------------------------------
"$homerd" --log-format json run 2>"$work/daemon.err" &
daemon_pid=$!
until_line "$work/daemon.err" '"event":"daemon.active"' && ok "the daemon starts (daemon.active)" \
    || { bad "the daemon starts" "$(tail -5 "$work/daemon.err")"; exit 1; }
id=$(enqueue noop)
run 0 wait "$id" --timeout "${deadline}s" && ok "wait: a completed job exits 0" || bad "wait on a noop job" "exit $code" "$out" "$err"
if grep -q '"level":"debug"' "$work/daemon.err"; then
    bad "INFO by default: no DEBUG events" "$(grep -m3 '"level":"debug"' "$work/daemon.err")"
else ok "INFO by default: no DEBUG events in $(wc -l <"$work/daemon.err" | tr -d ' ') lines"; fi
run 0 -v status && ok "-v is accepted" || bad "-v" "exit $code" "$err"
run 0 --log-level debug status && ok "--log-level debug is accepted" || bad "--log-level debug" "exit $code" "$err"
run 64 --log-level chatty status && ok "--log-level chatty: refused, exit 64" || bad "--log-level chatty" "exit $code" "$err"

# --- A job in the caller's directory, with its environment set, and its output -----------------
mkdir -p "$work/project"
printf '#!/bin/sh\necho "hello from job $HOMER_JOB_ID, $GREETING, in $(pwd)"\n' >"$work/project/hello.sh"
chmod +x "$work/project/hello.sh"
export SECRET_TOKEN=do-not-store
id=$(cd "$work/project" && enqueue exec --env GREETING=hi -- ./hello.sh)
run 0 wait "$id" --timeout "${deadline}s" && ok "exec ./hello.sh from the project directory completes" \
    || bad "exec ./hello.sh" "exit $code" "$err" "$("$homerd" show "$id" 2>&1)"
run 0 logs "$id" && [ "$out" = "hello from job $id, hi, in $(cd "$work/project" && pwd -P)" ] \
    && ok "logs: the job's output, run in the caller's directory with --env" || bad "logs $id" "exit $code" "$out" "$err"
run 0 show "$id" --json && ! printf '%s' "$out" | grep -q do-not-store \
    && ok "the caller's environment is not stored (show --json has no SECRET_TOKEN)" || bad "environment capture" "$out"
run 66 enqueue exec --cwd "$work/nowhere" -- true && printf '%s' "$err" | grep -q nowhere \
    && ok "--cwd to a missing directory: refused, exit 66, names it" || bad "--cwd missing" "exit $code" "$err"
run 64 enqueue exec --env NO_VALUE -- true && ok "--env without =VALUE: refused, exit 64" || bad "--env NO_VALUE" "exit $code" "$err"
run 64 enqueue exec --env HOMER_JOB_ID=7 -- true && ok "--env over a variable the daemon sets: refused, exit 64" || bad "--env HOMER_JOB_ID" "exit $code" "$err"

# --- A missing program: show says why -----------------------------------------------------------
id=$(enqueue --max-attempts 1 exec -- no-such-program-here)
run 4 wait "$id" --timeout "${deadline}s" && ok "wait: a failed job exits 4" || bad "wait on a failed job" "exit $code" "$out" "$err"
run 0 show "$id" && printf '%s' "$out" | grep -q "No such file or directory" && printf '%s' "$out" | grep -q "$id-1.err" \
    && ok "show: names the log files and the failed run's last stderr line" || bad "show $id" "$out"

# --- logs -f follows a running job and exits with its outcome ------------------------------------
id=$(enqueue --max-attempts 1 exec -- sh -c 'for i in 1 2 3 4 5; do echo "line $i"; sleep 0.1; done; exit 3')
run 4 logs -f "$id" && [ "$(printf '%s\n' "$out" | wc -l | tr -d ' ')" = 5 ] && [ "$(printf '%s\n' "$out" | tail -1)" = "line 5" ] \
    && ok "logs -f: every line, then exit 4 for the failed job" || bad "logs -f $id" "exit $code" "$out" "$err"
long=$(enqueue exec -- sleep 600)
run 6 wait "$long" --timeout 200ms && ok "wait --timeout: exit 6, names what is left" || bad "wait --timeout" "exit $code" "$err"
# A lane runs one job at a time unless configured otherwise: the sleeper goes.
run 0 cancel "$long" && run 5 wait "$long" --timeout "${deadline}s" && ok "cancel a running job; wait on it exits 5" \
    || bad "cancel $long" "exit $code" "$out" "$err"

# --- Durations and times --------------------------------------------------------------------------
run 0 enqueue --run-after 1h30m noop && ok "--run-after 1h30m" || bad "--run-after 1h30m" "exit $code" "$err"
run 0 enqueue --run-after 2099-01-01T10:00:00+01:00 noop && ok "--run-after an RFC 3339 time" || bad "--run-after RFC 3339" "exit $code" "$err"
run 64 enqueue --run-after 106751980000d noop && ok "--run-after 106751980000d: refused, exit 64" || bad "--run-after too far" "exit $code" "$err"
run 64 enqueue --run-after soon noop && printf '%s' "$err" | grep -q -- "--run-after" \
    && ok "--run-after soon: refused, exit 64, names the flag" || bad "--run-after soon" "exit $code" "$err"

# --- One JSON contract ------------------------------------------------------------------------------
run 0 enqueue --json noop && printf '%s' "$out" | grep -q '^{"created":true,"id":[0-9]*}$\|^{"id":[0-9]*,"created":true}$' \
    && ok "enqueue --json: {\"id\", \"created\"}" || bad "enqueue --json" "$out"
run 66 show 999999 --json && printf '%s' "$err" | grep -q '"code":66' && printf '%s' "$err" | grep -q '"error":' \
    && ok "an error under --json: one JSON object on stderr, same exit code" || bad "show 999999 --json" "exit $code" "$err"
run 0 status --json && [ "$(printf '%s\n' "$out" | wc -l | tr -d ' ')" = 1 ] && ok "status --json: one compact line" || bad "status --json" "$out"
run 0 list --json --limit 1 && printf '%s' "$out" | grep -q '"created_at":[0-9]*' && printf '%s' "$out" | grep -q '"created_at_rfc3339":"20' \
    && ok "list --json: epoch ms with RFC 3339 beside it" || bad "list --json" "$out"

# --- A closed stdout ends every command quietly ---------------------------------------------------
seq 1 3000 | sed 's/.*/{"kind":"noop","run_after":"1h"}/' >"$work/many.jsonl"
run 0 enqueue --from "$work/many.jsonl" >/dev/null || bad "enqueue --from 3000 jobs" "exit $code" "$err"
for cmd in "list --limit 5000" "list --json --limit 5000" "doctor" "doctor --json" "show 1" "status" "completions bash"; do
    # shellcheck disable=SC2086
    first=$("$homerd" $cmd 2>"$work/pipe.err" | head -1); codes=("${PIPESTATUS[@]}")
    if [ -n "$first" ] && [ "${codes[0]}" -le 1 ] && ! grep -q -i "panicked\|broken pipe\|backtrace" "$work/pipe.err"; then
        ok "$cmd | head -1: quiet, exit ${codes[0]}"
    else bad "$cmd | head -1" "exit ${codes[0]}" "$(cat "$work/pipe.err")"; fi
done

# --- status --watch, completions, man page, install -------------------------------------------------
first=$("$homerd" status --watch --interval 100ms 2>/dev/null | head -3 | head -1); code=${PIPESTATUS[0]}
[ "$code" = 0 ] && [ -n "$first" ] && ok "status --watch | head: refreshes, ends quietly" || bad "status --watch" "exit $code"
for shell in bash zsh fish; do
    run 0 completions "$shell" && printf '%s' "$out" | grep -q homerd && ok "completions $shell" || bad "completions $shell" "exit $code" "$err"
done
check "README's quick start installs with cargo install --locked" grep -q 'cargo install --locked --path daemon' "$here/README.md"
check "a release workflow builds the four targets" grep -q 'aarch64-apple-darwin' "$here/.github/workflows/release.yml"

# --- Shutdown says what it waits for, and a second signal stops now -----------------------------------
# The job prints on: `logs -f` learns at its next write that grep stopped reading.
id=$(enqueue exec -- sh -c 'echo started; while :; do sleep 0.2; echo tick; done')
"$homerd" logs -f "$id" 2>/dev/null | grep -q -m1 started && ok "the long job is running (logs -f saw it start)" || bad "long job start"
kill -TERM "$daemon_pid"
until_line "$work/daemon.err" 'again to stop' && ok "SIGTERM: says it waits for the running job and that a second signal stops now" \
    || bad "shutdown message" "$(tail -5 "$work/daemon.err")"
grep 'again to stop' "$work/daemon.err" | head -1 | sed 's/.*"msg":"\([^"]*\)".*/      \1/'
kill -TERM "$daemon_pid"
until_line "$work/daemon.err" '"event":"lock.released"' && wait "$daemon_pid"
code=$?
[ "$code" = 0 ] && ok "a second SIGTERM stops the daemon (exit 0, lock released)" || bad "second SIGTERM" "exit $code" "$(tail -5 "$work/daemon.err")"
daemon_pid=
run 0 show "$id" && ok "the stopped job, released for the next start: $(printf '%s\n' "$out" | head -1)" || bad "show $id after the stop" "$err"

# --- A failing scenario draws its timeline --------------------------------------------------------
if [ -n "$harness" ]; then
    out=$(HOMER_HARNESS_SANDBOX_DIR=$work "$harness" run "$here/scripts/tour-fails.toml" --daemon "$homerd" 2>&1)
    page=$(printf '%s\n' "$out" | sed -n 's/^ *timeline: //p' | head -1)
    [ -n "$page" ] && [ -s "$page" ] && grep -q "<svg" "$page" && ok "a failed scenario's report names its timeline.html ($(wc -c <"$page" | tr -d ' ') bytes)" \
        || bad "failed scenario timeline" "$out"
fi

echo
if [ "$failures" = 0 ]; then echo "tour: every check passed"; else echo "tour: $failures check(s) failed"; exit 1; fi
