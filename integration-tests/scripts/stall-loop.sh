#!/usr/bin/env bash
# Repeats a short `bench players` run (chat and frontend echo, no mydog, about a minute each)
# until a step fails: the regression loop of the io_uring connector's stall (docs/benchmarks.md,
# "An open defect" and "Found": the reactor spun on a stale TASKRUN flag, fixed 2026-12-04).
# At the first dump (a setup exchange unanswered, or a step stuck or with replies unaccounted
# for) it straces, for 6 s and side by side, every io_uring
# connector (the stall lifts after the step's own dump, so this is the moment to look) and
# copies every server's log then and 7 s later; the failed step's servers are then held for
# HOLD seconds (default 600) for gdb or strace. `polldebug.patch` (git apply, build, run with KENNEL_POLL_DEBUG=1) makes
# every server log, every 500 ms, how often its accept loop, ring reactor and link readers
# were polled: a diagnostic, never to be committed into worker/.
#
#   cargo build --release -p chat-demo -p kennel-master -p integration-tests
#   integration-tests/scripts/stall-loop.sh [RUNS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-100}
out=${2:-$(mktemp -d)}
hold=${HOLD:-600}
mkdir -p "$out"
# copy_logs BENCH_LOG PREFIX TAG: every server the master started (its log lines in the bench's
# stderr name each pid), its log as it stands (stdout and stderr go to it) to PREFIX.PID.TAG.log.
copy_logs() {
  for pid in $(grep -o 'server started server=[^ ]* pid=[0-9]*' "$1" | cut -d= -f3 | sort -u); do
    cp -L "/proc/$pid/fd/2" "$2.$pid.$3.log" 2>/dev/null || true
  done
}
echo "stall-loop: logs in $out"
for i in $(seq 1 "$runs"); do
  log="$out/run-$i.err"
  BENCH_DUMP_NO_GDB=1 BENCH_HOLD_STUCK_SECS=$hold CARGO=/bin/true target/release/bench players-chat \
    players-frontend-echo --no-mydog --profile release --players 1000,5000 \
    --open-players 1000,2000,5000 --warmup 0.5 --measure 1 >"$out/run-$i.md" 2>"$log" &
  bench=$!
  traced=0
  while kill -0 "$bench" 2>/dev/null; do
    if [ "$traced" = 0 ] && grep -q "bench: unanswered\|bench: stuck step" "$log"; then
      traced=1
      sleep 1 # the dump's lines
      # The io_uring connectors (those with a ring in the dump), traced side by side.
      for pid in $(grep -o 'pid [0-9]*: io_uring fd' "$log" \
        | awk '{print $2}' | tr -d : | sort -u); do
        { echo "== strace of $pid during the stall"
          timeout 6 strace -tt -p "$pid" 2>&1 || true; } >"$out/run-$i.$pid.strace" &
      done
      ss -tanpi >"$out/run-$i.ss" 2>&1 || true
      copy_logs "$log" "$out/run-$i" stall
      sleep 7
      copy_logs "$log" "$out/run-$i" later
      echo "stall-loop: run $i stalled; $out/run-$i.*"
    fi
    sleep 0.5
  done
  if wait "$bench"; then
    echo "stall-loop: run $i passed"
    rm -f "$out/run-$i.md" "$log"
  else
    echo "stall-loop: run $i failed: $(grep 'bench: failed' "$log" || true)"
    exit 1
  fi
done
