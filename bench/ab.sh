#!/usr/bin/env bash
# Two builds of the proxy side by side: A and B alternate on one upstream, ROUNDS pairs, each a
# 1 s warm-up then wrk for DURATION seconds. For a change whose effect is smaller than the
# machine's noise between runs, the pairs are what compares. Loopback only.
#
#   BIN_A=/tmp/old/release/ifmatch BIN_B=target/release/ifmatch bench/ab.sh
#   METHOD=PUT IF_MATCH='"stale"' CONNS=32 ROUNDS=5 bench/ab.sh
#   BARE=1 URL_PATH=/plain/262144 KEYS=0 CONNS=8 bench/ab.sh   # --passthrough, 256 KiB bodies
#
# Build A from a worktree: `git worktree add /tmp/old <commit>` and
# `(cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin ifmatch)`.
# Prints one line per run: requests/s, p50, p99, and the proxy's CPU (utime+stime) in ms per
# 1,000 requests.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
UPSTREAM=${UPSTREAM:-$TARGET_DIR/release/examples/bench_upstream}
BIN_B=${BIN_B:-$TARGET_DIR/release/ifmatch}
: "${BIN_A:?BIN_A: the other build}"
METHOD=${METHOD:-GET}
IF_MATCH=${IF_MATCH:-}
CONNS=${CONNS:-256}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
PORT_UP=${PORT_UP:-18480}
PORT_PROXY=${PORT_PROXY:-18481}
# The path, or its prefix with a random key in [1, KEYS] (KEYS=0: always the path).
URL_PATH=${URL_PATH:-/items/}
KEYS=${KEYS:-1000}
EXTRA=()
[ -z "${BARE:-}" ] || EXTRA=(--passthrough)

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
"$UPSTREAM" "127.0.0.1:$PORT_UP" 1 1000 2>/dev/null &
PIDS+=($!)

load() { # duration, extra wrk flags
  WRK_METHOD=$METHOD WRK_IF_MATCH=$IF_MATCH WRK_PATH=$URL_PATH WRK_KEYS=$KEYS \
    wrk -t1 -c"$CONNS" -d"$1" "${@:2}" -s "$ROOT/bench/wrk/req.lua" "http://127.0.0.1:$PORT_PROXY"
}
cpu() { # utime+stime of the proxy, in ticks
  local stat
  stat=$(sed 's/.*) //' "/proc/$1/stat")
  set -- $stat
  echo $(( ${12} + ${13} ))
}
run() { # binary, name
  "$1" --upstream "http://127.0.0.1:$PORT_UP" --listen "127.0.0.1:$PORT_PROXY" \
    --admin-listen 127.0.0.1:0 "${EXTRA[@]}" 2>/dev/null &
  local proxy=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT_PROXY") 2>/dev/null && break
    sleep 0.1
  done
  load 1s >/dev/null
  local before out after
  before=$(cpu "$proxy")
  out=$(load "${DURATION}s" --latency)
  after=$(cpu "$proxy")
  kill "$proxy"; wait "$proxy" 2>/dev/null || true
  local requests
  requests=$(echo "$out" | awk '/requests in/{print $1}')
  echo "$2 $(echo "$out" | awk '/Requests\/sec/{print "rps=" $2} $1=="50%"{print "p50=" $2} $1=="99%"{print "p99=" $2}' | tr '\n' ' ')cpu_ms_per_1k=$(awk -v t=$((after - before)) -v r="$requests" 'BEGIN { printf "%.2f", t * 10000 / r }')"
}
for _ in $(seq 1 "$ROUNDS"); do
  run "$BIN_A" A
  run "$BIN_B" B
done
