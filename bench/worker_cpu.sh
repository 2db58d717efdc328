#!/usr/bin/env bash
# CPU per worker thread under load: are connections (and so the load) spread evenly over the
# data plane's worker threads? Loopback only; everything stopped on exit.
#
#   bench/worker_cpu.sh              # wrk -t2 -c256, GET, 5 s
#   CONNS=32 bench/worker_cpu.sh
#   BIN=/path/to/ifmatch bench/worker_cpu.sh   # another build (e.g. from a worktree)
#
# Prints wrk's throughput and, per thread of the proxy that used any, its CPU ticks
# (utime+stime from /proc/PID/task/TID/stat, 100 a second) during the run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$TARGET_DIR/release/ifmatch}
UPSTREAM=${UPSTREAM:-$TARGET_DIR/release/examples/bench_upstream}
CONNS=${CONNS:-256}
DURATION=${DURATION:-5}
PORT_UP=${PORT_UP:-18380}
PORT_PROXY=${PORT_PROXY:-18381}

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
"$UPSTREAM" "127.0.0.1:$PORT_UP" 1 1000 2>/dev/null &
PIDS+=($!)
"$BIN" --upstream "http://127.0.0.1:$PORT_UP" --listen "127.0.0.1:$PORT_PROXY" \
  --admin-listen 127.0.0.1:0 2>/dev/null &
PIDS+=($!); PROXY=$!
for port in "$PORT_UP" "$PORT_PROXY"; do
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

ticks() { # thread id -> utime+stime
  local stat
  for task in /proc/"$PROXY"/task/*; do
    stat=$(sed 's/.*) //' "$task/stat")
    set -- $stat
    echo "${task##*/} $(( ${12} + ${13} ))"
  done
}
declare -A before
while read -r tid t; do before[$tid]=$t; done < <(ticks)
WRK_METHOD=GET WRK_PATH=/items/ WRK_KEYS=1000 wrk -t2 -c"$CONNS" -d"${DURATION}s" \
  -s "$ROOT/bench/wrk/req.lua" "http://127.0.0.1:$PORT_PROXY" | grep -E "Requests/sec"
while read -r tid t; do
  used=$(( t - ${before[$tid]:-0} ))
  [ "$used" -gt 0 ] && echo "thread $tid ($(cat /proc/"$PROXY"/task/"$tid"/comm)): $used ticks"
done < <(ticks)
