#!/usr/bin/env bash
# User-space instructions per request (the recipe of BENCHMARKS.md, "Where the CPU goes"):
# the proxy under `valgrind --tool=callgrind`, warmed up, counters zeroed, `wrk -t1 -c4` for
# DURATION seconds, counters dumped, total Ir divided by the requests wrk completed.
# Instruction counts do not move with the machine's load, so this is what decides whether a
# change helps. Loopback only; everything stopped on exit.
#
#   bench/callgrind.sh                         # ifmatch, GET /items/N (upstream ETag)
#   TARGET=bare bench/callgrind.sh             # the same binary with --passthrough
#   WORKLOAD=put_pass bench/callgrind.sh       # PUT, If-Match "v1" (current)
#   WORKLOAD=put_stale bench/callgrind.sh      # PUT, If-Match "stale" (409, never forwarded)
#   KEEP=1 bench/callgrind.sh                  # keep the callgrind.out file (its path is printed)
#   WORKERS=0 bench/callgrind.sh               # [server] workers = 0 (tokio's work-stealing
#                                              # runtime) instead of one worker per CPU
#
# Prints one line: workload, target, requests, Ir, Ir per request. With KEEP=1, read the
# profile with `callgrind_annotate --inclusive=yes FILE`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TARGET=${TARGET:-ifmatch}
WORKLOAD=${WORKLOAD:-get}
DURATION=${DURATION:-6}
CONNS=${CONNS:-4}
PORT_UP=${PORT_UP:-18280}
PORT_PROXY=${PORT_PROXY:-18281}
BIN=${BIN:-$TARGET_DIR/release/ifmatch}
UPSTREAM=${UPSTREAM:-$TARGET_DIR/release/examples/bench_upstream}

case $WORKLOAD in
  get) METHOD=GET IF_MATCH="" ;;
  put_pass) METHOD=PUT IF_MATCH='"v1"' ;;
  put_stale) METHOD=PUT IF_MATCH='"stale"' ;;
  *) echo "unknown WORKLOAD $WORKLOAD" >&2; exit 2 ;;
esac
EXTRA=()
[ "$TARGET" != bare ] || EXTRA=(--passthrough)

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
if [ -n "${WORKERS:-}" ]; then
  printf '[server]\nworkers = %d\n' "$WORKERS" >"$WORK/workers.toml"
  EXTRA+=(--config "$WORK/workers.toml")
fi

"$UPSTREAM" "127.0.0.1:$PORT_UP" 1 1000 2>/dev/null &
PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
  "$BIN" --upstream "http://127.0.0.1:$PORT_UP" --listen "127.0.0.1:$PORT_PROXY" \
  --admin-listen 127.0.0.1:0 "${EXTRA[@]}" 2>"$WORK/proxy.log" &
PIDS+=($!); PID_PROXY=$!
for port in "$PORT_UP" "$PORT_PROXY"; do
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

# Warm-up: every key learned, connections (downstream and upstream) open, code paths touched.
WRK_METHOD=GET WRK_PATH=/items/ WRK_KEYS=1000 wrk -t1 -c"$CONNS" -d4s \
  -s "$ROOT/bench/wrk/req.lua" "http://127.0.0.1:$PORT_PROXY" >/dev/null
WRK_METHOD=$METHOD WRK_PATH=/items/ WRK_KEYS=1000 WRK_IF_MATCH=$IF_MATCH wrk -t1 -c"$CONNS" \
  -d2s -s "$ROOT/bench/wrk/req.lua" "http://127.0.0.1:$PORT_PROXY" >/dev/null

callgrind_control -z "$PID_PROXY" >/dev/null 2>&1
out=$(WRK_METHOD=$METHOD WRK_PATH=/items/ WRK_KEYS=1000 WRK_IF_MATCH=$IF_MATCH \
  wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$ROOT/bench/wrk/req.lua" "http://127.0.0.1:$PORT_PROXY")
callgrind_control -d "$PID_PROXY" >/dev/null 2>&1
requests=$(awk '/requests in/ {print $1}' <<<"$out")
# The dump after zeroing is the highest-numbered part file.
dump=$(ls -v "$WORK"/callgrind.out.* | tail -1)
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
awk -v w="$WORKLOAD" -v t="$TARGET" -v n="$requests" -v ir="$ir" -v f="$dump" -v keep="${KEEP:-}" \
  'BEGIN { printf "%s %s: %d requests, %d Ir, %.0f Ir/request%s\n", w, t, n, ir, ir / n, keep ? " (" f ")" : "" }'
