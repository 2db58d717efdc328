#!/usr/bin/env bash
# The load benchmark: one command, loopback only, everything stopped on exit.
#
#   bench/load.sh                      # DURATION=5 REPS=3 CONNS=64
#   DURATION=10 REPS=5 bench/load.sh
#   CONNS="1 32 256" ONLY="get put_pass put_stale" bench/load.sh   # each workload at each count
#   ONLY="get put_pass" KEEP_WORK=1 bench/load.sh   # some workloads; keep logs and nginx.conf
#   WORKERS=0 bench/load.sh            # bare and ifmatch with [server] workers = 0 (tokio's
#                                      # work-stealing runtime), instead of one worker per CPU
#
# Side by side, in one run, each measurement repeated REPS times (median reported):
#   direct   straight to bench_upstream (the physical limit on this machine)
#   bare     `ifmatch --passthrough`: the same binary and stack minus the precondition layer
#   ifmatch  `ifmatch`
#   nginx    nginx as a reverse proxy with upstream keepalive
# and, for the scale workloads, a second ifmatch whose store holds SCALE_KEYS resources
# (filled before any measurement; its RSS before and after is reported as bytes per key):
#   ifmatch_1m  the same binary, the same workload, over SCALE_KEYS keys instead of KEYS
# Reports requests/s, p50/p99 latency (wrk --latency) and the proxy process's CPU-seconds
# per 100k requests (utime+stime from /proc/PID/stat, all processes of the proxy).
# Raw rows: $OUT/raw.tsv; the median table: $OUT/summary.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-5}
REPS=${REPS:-3}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
SLOW_US=${SLOW_US:-1000}
KEYS=${KEYS:-1000}
OUT=${OUT:-$ROOT/bench/out}
PORT_UP=${PORT_UP:-18080}
PORT_BARE=${PORT_BARE:-18081}
PORT_IFM=${PORT_IFM:-18082}
PORT_NGX=${PORT_NGX:-18083}
PORT_IFM_1M=${PORT_IFM_1M:-18084}
PORT_ADMIN_1M=${PORT_ADMIN_1M:-18085}
SCALE_KEYS=${SCALE_KEYS:-1000000}

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

# --- tools ---------------------------------------------------------------------------------
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v wrk >/dev/null || [ ! -x "$NGINX" ] || ! command -v curl >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  log "installing wrk, nginx-light and curl from Debian packages"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light curl >/dev/null
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi

log "building release (ifmatch, bench_upstream)"
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet \
  --bin ifmatch --example bench_upstream)
IFMATCH="$TARGET_DIR/release/ifmatch"
UPSTREAM="$TARGET_DIR/release/examples/bench_upstream"

# --- processes -----------------------------------------------------------------------------
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP_WORK:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
  local i
  for i in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  log "nothing answers on port $1"; return 1
}

"$UPSTREAM" "127.0.0.1:$PORT_UP" "$UPSTREAM_THREADS" "$SLOW_US" 2>"$WORK/upstream.log" &
PIDS+=($!); PID_UP=$!
# WORKERS set: bare and ifmatch get a config file with only [server] workers (the routes come
# from --upstream).
SERVER_CONFIG=()
if [ -n "${WORKERS:-}" ]; then
  printf '[server]\nworkers = %d\n' "$WORKERS" >"$WORK/workers.toml"
  SERVER_CONFIG=(--config "$WORK/workers.toml")
fi
"$IFMATCH" "${SERVER_CONFIG[@]}" --upstream "http://127.0.0.1:$PORT_UP" \
  --listen "127.0.0.1:$PORT_BARE" --admin-listen 127.0.0.1:0 --passthrough 2>"$WORK/bare.log" &
PIDS+=($!); PID_BARE=$!
"$IFMATCH" "${SERVER_CONFIG[@]}" --upstream "http://127.0.0.1:$PORT_UP" \
  --listen "127.0.0.1:$PORT_IFM" --admin-listen 127.0.0.1:0 2>"$WORK/ifmatch.log" &
PIDS+=($!); PID_IFM=$!

"$IFMATCH" --upstream "http://127.0.0.1:$PORT_UP" --listen "127.0.0.1:$PORT_IFM_1M" \
  --admin-listen "127.0.0.1:$PORT_ADMIN_1M" 2>"$WORK/ifmatch_1m.log" &
PIDS+=($!); PID_IFM_1M=$!

mkdir -p "$WORK/nginx"
NGINX_USER=""
[ "$(id -u)" -ne 0 ] || NGINX_USER="user $(id -un);"
cat >"$WORK/nginx/nginx.conf" <<CONF
$NGINX_USER
worker_processes auto;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream app {
    server 127.0.0.1:$PORT_UP;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$PORT_NGX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      # Stream large bodies like the proxies under test, never through temp files.
      proxy_max_temp_file_size 0;
    }
  }
}
CONF
"$NGINX" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2>>"$WORK/nginx/error.log" &
PIDS+=($!); PID_NGX=$!

for port in "$PORT_UP" "$PORT_BARE" "$PORT_IFM" "$PORT_NGX" "$PORT_IFM_1M"; do wait_port "$port"; done
log "upstream $PID_UP, bare $PID_BARE, ifmatch $PID_IFM, nginx $PID_NGX: all up"

# --- measurement ---------------------------------------------------------------------------
TICK=$(getconf CLK_TCK)
port_of() { case $1 in direct) echo "$PORT_UP" ;; bare) echo "$PORT_BARE" ;; ifmatch) echo "$PORT_IFM" ;; nginx) echo "$PORT_NGX" ;; ifmatch_1m) echo "$PORT_IFM_1M" ;; esac; }
pid_of() { case $1 in direct) echo "$PID_UP" ;; bare) echo "$PID_BARE" ;; ifmatch) echo "$PID_IFM" ;; nginx) echo "$PID_NGX" ;; ifmatch_1m) echo "$PID_IFM_1M" ;; esac; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
store_entries() { curl -s "http://127.0.0.1:$PORT_ADMIN_1M/metrics" | awk '$1 == "ifmatch_store_entries" {print $2}'; }

# utime+stime (clock ticks) of a process and its children (nginx workers).
cpu_ticks() {
  local pid=$1 total=0 child
  total=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$child/stat")))
  done
  echo "$total"
}
upstream_requests() { curl -s "http://127.0.0.1:$PORT_UP/__stats" | awk '{print $1}'; }

# wrk latency "1.23ms" / "850.00us" / "1.02s" -> microseconds.
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'; }

mkdir -p "$OUT"
RAW="$OUT/raw.tsv"
printf 'workload\ttarget\trep\tconns\trequests\tnon2xx\trps\tp50_us\tp99_us\tcpu_s_per_100k\tupstream_requests\n' >"$RAW"

# run WORKLOAD TARGET REP CONNS METHOD PATH KEYS IF_MATCH
run() {
  local workload=$1 target=$2 rep=$3 conns=$4 method=$5 path=$6 keys=$7 if_match=$8
  local port pid threads out c0 c1 u0 u1 requests non2xx rps p50 p99 cpu
  port=$(port_of "$target"); pid=$(pid_of "$target")
  # The scale workloads spread the same requests over the target's own key count.
  if [ "$keys" = scale ]; then if [ "$target" = ifmatch_1m ]; then keys=$SCALE_KEYS; else keys=$KEYS; fi; fi
  threads=$WRK_THREADS; [ "$conns" -ge "$threads" ] || threads=$conns
  u0=$(upstream_requests); c0=$(cpu_ticks "$pid")
  out=$(WRK_METHOD=$method WRK_PATH=$path WRK_KEYS=$keys WRK_IF_MATCH=$if_match \
    wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s "$ROOT/bench/wrk/req.lua" \
    "http://127.0.0.1:$port")
  c1=$(cpu_ticks "$pid"); u1=$(upstream_requests)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  if [ "$target" = direct ]; then cpu=NA; else
    cpu=$(awk -v d=$((c1 - c0)) -v t="$TICK" -v n="$requests" 'BEGIN { printf "%.3f", d / t / n * 100000 }')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$target" "$rep" "$conns" \
    "$requests" "$non2xx" "$rps" "$p50" "$p99" "$cpu" "$((u1 - u0))" >>"$RAW"
  log "$workload $target #$rep: $rps req/s p50 ${p50}us p99 ${p99}us cpu/100k ${cpu}s non2xx $non2xx upstream +$((u1 - u0))"
}

# Teach ifmatch every key's validator first, so that writes are checked, not revalidated.
log "warm-up"
for target in direct bare ifmatch nginx; do
  WRK_METHOD=GET WRK_PATH=/items/ WRK_KEYS=$KEYS wrk -t1 -c8 -d2s -s "$ROOT/bench/wrk/req.lua" \
    "http://127.0.0.1:$(port_of $target)" >/dev/null
done
curl -s -o /dev/null "http://127.0.0.1:$PORT_IFM/items/hot"
curl -s -o /dev/null "http://127.0.0.1:$PORT_IFM/slow/hot"

# Fill the scale instance's store with SCALE_KEYS resources, each learned from one GET.
SCALE_NOTE=""
if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" scale_"* ]]; then
  # The baseline includes the fill's 64 connections and their pooled upstream ones (buffers),
  # so that the growth is the store's: warm them up on one key first.
  WRK_METHOD=GET WRK_PATH=/items/1 WRK_KEYS=0 wrk -t2 -c64 -d2s -s "$ROOT/bench/wrk/req.lua" \
    "http://127.0.0.1:$PORT_IFM_1M" >/dev/null
  r0=$(rss_kib "$PID_IFM_1M"); t0=$(date +%s)
  log "filling ifmatch_1m with $SCALE_KEYS keys"
  # wrk runs for its whole duration: stop it once the upstream has served the fill's GETs.
  u0=$(upstream_requests)
  WRK_PATH=/items/ WRK_KEYS=$SCALE_KEYS WRK_THREADS=2 wrk -t2 -c64 -d900s \
    -s "$ROOT/bench/wrk/fill.lua" "http://127.0.0.1:$PORT_IFM_1M" >/dev/null &
  PID_FILL=$!
  while kill -0 "$PID_FILL" 2>/dev/null && [ $(($(upstream_requests) - u0)) -lt "$SCALE_KEYS" ]; do
    sleep 1
  done
  kill "$PID_FILL" 2>/dev/null || true
  wait "$PID_FILL" 2>/dev/null || true
  r1=$(rss_kib "$PID_IFM_1M"); entries=$(store_entries)
  SCALE_NOTE=$(awk -v r0="$r0" -v r1="$r1" -v n="$entries" -v s=$(($(date +%s) - t0)) 'BEGIN {
    printf "ifmatch_1m: %d store entries after the fill (%d s); RSS %.1f -> %.1f MiB: %.1f bytes per entry", n, s, r0 / 1024, r1 / 1024, (r1 - r0) * 1024 / n }')
  log "$SCALE_NOTE"
fi

ALL="direct bare ifmatch nginx"
# workload  conns (C: each of CONNS)  method  path  keys  if-match  targets
WORKLOADS=(
  "get           C      GET /items/         $KEYS -         $ALL"
  "put_pass      C      PUT /items/         $KEYS \"v1\"    $ALL"
  "put_pass_c1   1      PUT /items/         $KEYS \"v1\"    $ALL"
  "put_stale     C      PUT /items/         $KEYS \"stale\" $ALL"
  "hot_key       C      PUT /items/hot      0     \"v1\"    $ALL"
  "hot_serial    1      PUT /items/hot      0     \"v1\"    direct"
  "hot_key_1ms   C      PUT /slow/hot       0     \"v1\"    direct ifmatch"
  "hot_serial_1ms 1     PUT /slow/hot       0     \"v1\"    direct"
  "synth_1k      C      GET /plain/1024     0     -         $ALL"
  "synth_1m      C      GET /plain/1048576  0     -         $ALL"
  "scale_get     C      GET /items/         scale -         ifmatch ifmatch_1m"
  "scale_put     C      PUT /items/         scale \"v1\"    ifmatch ifmatch_1m"
)
for spec in "${WORKLOADS[@]}"; do
  read -r workload conns_spec method path keys if_match targets <<<"$spec"
  [ "$if_match" != - ] || if_match=""
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $workload "* ]] || continue
  counts=$conns_spec; [ "$conns_spec" != C ] || counts=$CONNS
  for conns in $counts; do
    for rep in $(seq "$REPS"); do
      for target in $targets; do
        run "$workload" "$target" "$rep" "$conns" "$method" "$path" "$keys" "$if_match"
      done
    done
  done
done

# --- summary: medians, ratios to bare and nginx --------------------------------------------
SUMMARY="$OUT/summary.md"
{
  echo "DURATION=${DURATION}s REPS=$REPS CONNS=$CONNS WORKERS=${WORKERS:-per CPU}; medians of $REPS runs."
  echo
  echo "| workload | target | conns | req/s | p50 µs | p99 µs | proxy CPU-s /100k req | req/s vs bare | req/s vs nginx | CPU vs bare | CPU vs nginx | non-2xx (median) | upstream requests (median) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '
    function median(list,   n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && (a[j] + 0) > (t + 0)) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
      if (a[1] == "NA") return "NA"
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function ratio(a, b) { return (a == "NA" || b == "" || b == "NA" || b + 0 == 0) ? "" : sprintf("%.2fx", a / b) }
    NR > 1 {
      k = $1 SUBSEP $2 SUBSEP $4
      if (!(k in seen)) { seen[k] = 1; order[++n] = k; conns[k] = $4 }
      rps[k] = rps[k] " " $7; p50[k] = p50[k] " " $8; p99[k] = p99[k] " " $9
      cpu[k] = cpu[k] " " $10; bad[k] = bad[k] " " $6; up[k] = up[k] " " $11
    }
    END {
      for (i = 1; i <= n; i++) { k = order[i]; R[k] = median(rps[k]); C[k] = median(cpu[k]) }
      for (i = 1; i <= n; i++) {
        k = order[i]; split(k, f, SUBSEP); w = f[1]; c = f[3]
        b = w SUBSEP "bare" SUBSEP c; x = w SUBSEP "nginx" SUBSEP c
        printf "| %s | %s | %s | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", w, f[2], conns[k], R[k], median(p50[k]), median(p99[k]), C[k], ratio(R[k], R[b]), ratio(R[k], R[x]), ratio(C[k], C[b]), ratio(C[k], C[x]), median(bad[k]), median(up[k])
      }
    }' "$RAW"
  echo
  [ -z "$SCALE_NOTE" ] || echo "$SCALE_NOTE"
  echo
  echo "Scale (ifmatch over $KEYS keys vs ifmatch_1m over $SCALE_KEYS keys, medians):"
  awk -F'\t' '
    function median(list,   n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && (a[j] + 0) > (t + 0)) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR > 1 && $1 ~ /^scale_/ { cpu[$1, $2] = cpu[$1, $2] " " $10; p50[$1, $2] = p50[$1, $2] " " $8; w[$1] = 1 }
    END {
      for (k in w) {
        a = median(cpu[k, "ifmatch"]); b = median(cpu[k, "ifmatch_1m"])
        c = median(p50[k, "ifmatch"]); d = median(p50[k, "ifmatch_1m"])
        if (a > 0 && c > 0) printf "- %s: CPU-s/100k %s vs %s (%.2fx); p50 %s vs %s us (%.2fx)\n", k, a, b, b / a, c, d, d / c
      }
    }' "$RAW"
} >"$SUMMARY"
cat "$SUMMARY"
log "raw rows in $RAW"
