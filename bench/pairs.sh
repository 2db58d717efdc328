#!/usr/bin/env bash
# Paired latency: the bare pass-through and ifmatch measured back to back, PAIRS times, one
# connection, so that the machine's slow drifts (other tenants, vCPU wake-up latency) hit both
# sides of each pair alike. Reports the median p50 of each and the median of the per-pair
# differences. Loopback only; everything stopped on exit.
#
#   bench/pairs.sh                         # PUT with a current If-Match, PAIRS=15 DURATION=2
#   METHOD=GET IF_MATCH= bench/pairs.sh    # GET
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PAIRS=${PAIRS:-15}
SECONDS_EACH=${DURATION:-2}
METHOD=${METHOD:-PUT}
IF_MATCH=${IF_MATCH-\"v1\"}
PORT_UP=${PORT_UP:-18180}
PORT_BARE=${PORT_BARE:-18181}
PORT_IFM=${PORT_IFM:-18182}

command -v wrk >/dev/null || { echo "needs wrk (bench/load.sh installs it)" >&2; exit 1; }
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet \
  --bin ifmatch --example bench_upstream)

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$TARGET_DIR/release/examples/bench_upstream" "127.0.0.1:$PORT_UP" 1 1000 2>/dev/null &
PIDS+=($!)
"$TARGET_DIR/release/ifmatch" --upstream "http://127.0.0.1:$PORT_UP" \
  --listen "127.0.0.1:$PORT_BARE" --admin-listen 127.0.0.1:0 --passthrough 2>/dev/null &
PIDS+=($!)
"$TARGET_DIR/release/ifmatch" --upstream "http://127.0.0.1:$PORT_UP" \
  --listen "127.0.0.1:$PORT_IFM" --admin-listen 127.0.0.1:0 2>/dev/null &
PIDS+=($!)
for port in "$PORT_UP" "$PORT_BARE" "$PORT_IFM"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

# wrk latency "1.23ms" / "850.00us" -> microseconds.
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else print n * 1000000 }'; }
p50() {
  local out
  out=$(WRK_METHOD=$METHOD WRK_PATH=/items/ WRK_KEYS=1000 WRK_IF_MATCH=$IF_MATCH \
    wrk -t1 -c1 -d"${SECONDS_EACH}s" --latency -s "$ROOT/bench/wrk/req.lua" "http://127.0.0.1:$1")
  to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")"
}

# Warm up: ifmatch learns every key's validator, both keep their upstream connection.
for port in "$PORT_BARE" "$PORT_IFM"; do
  WRK_METHOD=GET WRK_PATH=/items/ WRK_KEYS=1000 wrk -t1 -c4 -d2s -s "$ROOT/bench/wrk/req.lua" \
    "http://127.0.0.1:$port" >/dev/null
done

rows=""
for i in $(seq "$PAIRS"); do
  # Alternate which side goes first.
  if [ $((i % 2)) -eq 1 ]; then b=$(p50 "$PORT_BARE"); g=$(p50 "$PORT_IFM"); else
    g=$(p50 "$PORT_IFM"); b=$(p50 "$PORT_BARE"); fi
  echo "pair $i: bare p50 ${b}us, ifmatch p50 ${g}us" >&2
  rows+="$b $g"$'\n'
done
awk -v method="$METHOD" -v pairs="$PAIRS" '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] > t) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  NF == 2 { n++; b[n] = $1; g[n] = $2; d[n] = $2 - $1 }
  END {
    printf "%s, 1 connection, %d pairs: p50 bare %.0f us, ifmatch %.0f us; median of the per-pair differences %+.0f us\n", method, pairs, median(b, n), median(g, n), median(d, n)
  }' <<<"$rows"
