#!/usr/bin/env bash
# The shared-store benchmark: two replicas on one redis-server against one proxy on the memory
# store, the same storm workload, side by side in one run. Loopback only; everything it starts
# is stopped on exit.
#
#   bench/shared_store.sh                          # REPS=5 DURATION=5s WRITERS=16 KEYS=64
#   REPS=3 DURATION=10s bench/shared_store.sh
#   SCRIPTS_ONLY=1 SCRIPT_REPS=7 bench/shared_store.sh   # only the scripts-alone table
#   SCRIPTS_ONLY=1 SCRIPTS_RS=old.rs bench/shared_store.sh # the same, scripts from another
#                                                         # version's scripts.rs (git show)
#   BIN=/tmp/ifmatch-old bench/shared_store.sh     # another build (not built here)
#   SCRIPTS=0 bench/shared_store.sh                # without the scripts-alone table
#   WORKERS=1 bench/shared_store.sh                # [server] workers for every proxy (default:
#                                                  # one per CPU each, so the two replicas run
#                                                  # twice as many threads as there are CPUs)
#
# Each rep runs, in alternating order:
#   memory   one ifmatch (memory store), one `ifmatch storm` of WRITERS writers
#   redis2   two ifmatch replicas on one redis-server, two storms of WRITERS/2 writers each, on
#            the same keys at the same time (so writers on different replicas collide)
# Every rep uses fresh keys, created at 0 straight at the demo API before it starts; after it,
# the counters are read straight from the API and lost updates = commits - sum of counters.
# Reports commits/s (median of REPS), the ratio redis2/memory, lost updates, and from Redis
# (INFO commandstats, reset before each redis2 run) the script calls per commit and each
# command's usec_per_call under that load. Then each script alone on one hash
# (redis-benchmark, 20000 calls, 4 connections): the scripts' own cost with Redis kept busy.
# Raw rows: $OUT/shared_store.tsv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REPS=${REPS:-5}
DURATION=${DURATION:-5s}
WRITERS=${WRITERS:-16}
KEYS=${KEYS:-64}
OUT=${OUT:-$ROOT/bench/out}
PORT_REDIS=${PORT_REDIS:-16390}
PORT_API=${PORT_API:-13090}
PORT_MEM=${PORT_MEM:-18090}
PORT_R1=${PORT_R1:-18091}
PORT_R2=${PORT_R2:-18092}

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
  || ! command -v curl >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  log "installing redis-server and curl from Debian packages"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools curl >/dev/null
fi
command -v python3 >/dev/null || { echo "python3 is needed to read the storm reports" >&2; exit 1; }

if [ -n "${BIN:-}" ]; then
  log "using $BIN"
else
  log "building release"
  (cd "$ROOT" && cargo build --release --quiet --bin ifmatch)
  BIN=$TARGET_DIR/release/ifmatch
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  redis-cli -p "$PORT_REDIS" shutdown nosave >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_http() {
  for _ in $(seq 1 100); do
    curl -fso /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "nothing answers at $1" >&2
  exit 1
}

redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize yes --logfile "$WORK/redis.log" --dir "$WORK"
for _ in $(seq 1 50); do redis-cli -p "$PORT_REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN" demo --api-only --api-listen "127.0.0.1:$PORT_API" >"$WORK/api.log" 2>&1 &
PIDS+=($!)
API_PID=$!
REDIS_PID=$(redis-cli -p "$PORT_REDIS" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p')
wait_http "http://127.0.0.1:$PORT_API/items"
export RUST_LOG=${RUST_LOG:-warn}
PROXY_ARGS=()
if [ -n "${WORKERS:-}" ]; then
  printf '[server]\nworkers = %d\n' "$WORKERS" >"$WORK/workers.toml"
  PROXY_ARGS=(--config "$WORK/workers.toml")
fi
"$BIN" "${PROXY_ARGS[@]}" --upstream "http://127.0.0.1:$PORT_API" --listen "127.0.0.1:$PORT_MEM" \
  --admin-listen 127.0.0.1:0 >"$WORK/mem.log" 2>&1 &
PIDS+=($!)
MEM_PID=$!
REPLICA_PIDS=()
for port in "$PORT_R1" "$PORT_R2"; do
  "$BIN" "${PROXY_ARGS[@]}" --upstream "http://127.0.0.1:$PORT_API" --listen "127.0.0.1:$port" \
    --admin-listen 127.0.0.1:0 --store "redis://127.0.0.1:$PORT_REDIS" >"$WORK/r$port.log" 2>&1 &
  PIDS+=($!)
  REPLICA_PIDS+=($!)
done
for port in "$PORT_MEM" "$PORT_R1" "$PORT_R2"; do wait_http "http://127.0.0.1:$port/items"; done

# Creates KEYS items named $1<i> at 0, straight at the API.
create_keys() {
  for i in $(seq 0 $((KEYS - 1))); do
    curl -fso /dev/null -X PUT -H 'content-type: application/json' \
      --data '{"n":0}' "http://127.0.0.1:$PORT_API/items/$1$i"
  done
}

# Sum of the counters of the items named $1<i>, straight from the API.
sum_keys() {
  for i in $(seq 0 $((KEYS - 1))); do
    curl -fs "http://127.0.0.1:$PORT_API/items/$1$i"
    echo
  done | python3 -c 'import json,sys; print(sum(json.loads(l)["n"] for l in sys.stdin if l.strip()))'
}

# Commits in the storm reports given.
commits() {
  python3 -c 'import json,sys; print(sum(json.load(open(f))["commits"] for f in sys.argv[1:]))' "$@"
}

# HTTP requests (reads and write attempts) per commit in the storm reports given: a 409 costs
# a request and the read that follows it.
requests() {
  python3 -c 'import json,sys; r=[json.load(open(f)) for f in sys.argv[1:]]; print(round(sum(x["reads"]+x["attempts"] for x in r)/max(1,sum(x["commits"] for x in r)), 2))' "$@"
}

# CPU ticks (utime+stime) of the processes given, summed.
ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
# Microseconds of CPU per commit: ticks, commits.
per_commit() { python3 -c "print(round($1 * 1e6 / $HZ / max($2, 1)))"; }

storm() { # port writers prefix json
  "$BIN" storm --target "http://127.0.0.1:$1/items" --writers "$2" --keys "$KEYS" \
    --key-prefix "$3" --field n --create none --duration "$DURATION" --no-progress --allow-lost \
    --json "$4" >"$4.txt" 2>&1
}

secs=$(python3 -c "import sys; d=sys.argv[1]; print(float(d[:-2])/1000 if d.endswith('ms') else float(d[:-1]) if d.endswith('s') else float(d))" "$DURATION")
mkdir -p "$OUT"
TSV=$OUT/shared_store.tsv
printf 'rep\ttarget\tcommits\tcommits_per_s\tlost\tevalsha_per_commit\tevalsha_usec_per_call\tproxy_cpu_us_per_commit\tredis_cpu_us_per_commit\tapi_cpu_us_per_commit\trequests_per_commit\n' >"$TSV"

run_memory() {
  local prefix="m$1-"
  create_keys "$prefix"
  local p0 a0
  p0=$(ticks "$MEM_PID"); a0=$(ticks "$API_PID")
  storm "$PORT_MEM" "$WRITERS" "$prefix" "$WORK/m$1.json"
  local p1 a1 c s
  p1=$(ticks "$MEM_PID"); a1=$(ticks "$API_PID")
  c=$(commits "$WORK/m$1.json")
  s=$(sum_keys "$prefix")
  printf '%s\tmemory\t%s\t%s\t%s\t\t\t%s\t\t%s\t%s\n' "$1" "$c" "$(python3 -c "print(round($c/$secs))")" "$((c - s))" \
    "$(per_commit $((p1 - p0)) "$c")" "$(per_commit $((a1 - a0)) "$c")" "$(requests "$WORK/m$1.json")" >>"$TSV"
}

run_redis() {
  local prefix="r$1-" half=$((WRITERS / 2))
  create_keys "$prefix"
  redis-cli -p "$PORT_REDIS" config resetstat >/dev/null
  local p0 r0 a0
  p0=$(ticks "${REPLICA_PIDS[@]}"); r0=$(ticks "$REDIS_PID"); a0=$(ticks "$API_PID")
  storm "$PORT_R1" "$half" "$prefix" "$WORK/a$1.json" &
  local a=$!
  storm "$PORT_R2" "$((WRITERS - half))" "$prefix" "$WORK/b$1.json"
  wait "$a"
  local p1 r1 a1
  p1=$(ticks "${REPLICA_PIDS[@]}"); r1=$(ticks "$REDIS_PID"); a1=$(ticks "$API_PID")
  redis-cli -p "$PORT_REDIS" info commandstats >"$WORK/stats$1.txt"
  local c s calls usec
  c=$(commits "$WORK/a$1.json" "$WORK/b$1.json")
  s=$(sum_keys "$prefix")
  calls=$(sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' "$WORK/stats$1.txt")
  usec=$(sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\),.*/\1/p' "$WORK/stats$1.txt")
  printf '%s\tredis2\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$c" "$(python3 -c "print(round($c/$secs))")" \
    "$((c - s))" "$(python3 -c "print(round(${calls:-0}/max($c,1), 2))")" "${usec:-}" \
    "$(per_commit $((p1 - p0)) "$c")" "$(per_commit $((r1 - r0)) "$c")" "$(per_commit $((a1 - a0)) "$c")" \
    "$(requests "$WORK/a$1.json" "$WORK/b$1.json")" >>"$TSV"
  cp "$WORK/stats$1.txt" "$OUT/shared_store_commandstats_$1.txt"
}

if [ "${SCRIPTS_ONLY:-0}" != 1 ]; then
for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then
    log "rep $rep: memory, then redis2"; run_memory "$rep"; run_redis "$rep"
  else
    log "rep $rep: redis2, then memory"; run_redis "$rep"; run_memory "$rep"
  fi
done

python3 - "$TSV" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
def col(target, name):
    return [float(r[name]) for r in rows if r['target'] == target and r[name] != '']
mem, red = col('memory', 'commits_per_s'), col('redis2', 'commits_per_s')
def med(target, name):
    values = col(target, name)
    return f"{statistics.median(values):g}" if values else ""
print("| store | commits/s per rep | median commits/s | lost updates | EVALSHA per commit | EVALSHA usec_per_call under load | proxy CPU µs/commit | redis CPU µs/commit | API CPU µs/commit | HTTP requests per commit |")
print("|---|---|---|---|---|---|---|---|---|---|")
for target, name in [('memory', 'memory, one proxy'), ('redis2', 'redis, two replicas')]:
    values = col(target, 'commits_per_s')
    print(f"| {name} | {' / '.join(str(int(x)) for x in values)} | {statistics.median(values):.0f} | "
          f"{int(sum(col(target, 'lost')))} | {med(target, 'evalsha_per_commit')} | "
          f"{med(target, 'evalsha_usec_per_call')} | {med(target, 'proxy_cpu_us_per_commit')} | "
          f"{med(target, 'redis_cpu_us_per_commit')} | {med(target, 'api_cpu_us_per_commit')} | "
          f"{med(target, 'requests_per_commit')} |")
ratios = [r / m for m, r in zip(mem, red)]
print(f"\nredis2 / memory: median of the per-rep ratios {statistics.median(ratios):.2f}x "
      f"(per rep: {', '.join(f'{x:.2f}' for x in ratios)}); ratio of medians "
      f"{statistics.median(red) / statistics.median(mem):.2f}x")
PY
fi

[ "${SCRIPTS:-1}" != 0 ] || exit 0
# Each script alone, Redis kept busy by redis-benchmark: what a call costs Redis itself.
log "scripts alone (redis-benchmark)"
SCRIPTS=$(mktemp -d -p "$WORK")
python3 - "${SCRIPTS_RS:-$ROOT/src/store/redis/scripts.rs}" "$SCRIPTS" <<'PY'
import re, sys
source = open(sys.argv[1]).read()
def grab(name):
    return re.search(r'const ' + name + r': &str = r#"(.*?)"#;', source, re.S).group(1)
# The fragments (`@settle` ...) spliced in, in the order of FRAGMENTS, as `Scripts::new` does.
fragments = re.search(r'const FRAGMENTS[^=]*= \[(.*?)\];', source, re.S)
order = re.findall(r'\("(@\w+)", (\w+)\)', fragments.group(1)) if fragments else []
for name in ['LOAD', 'LEARN', 'ACQUIRE', 'COMPLETE']:
    text = grab('PRELUDE') + grab(name)
    for marker, const in order:
        text = text.replace(marker, grab(const))
    open(f"{sys.argv[2]}/{name}.lua", 'w').write(text)
PY
R="redis-cli -p $PORT_REDIS"
usec() { $R info commandstats | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\),.*/\1/p'; }
alone() { # script args...
  local sha
  sha=$($R script load "$(cat "$SCRIPTS/$1.lua")")
  shift
  $R config resetstat >/dev/null
  redis-benchmark -p "$PORT_REDIS" -n 20000 -c 4 -q evalsha "$sha" "$@" >/dev/null
  usec
}
# Each script measured alone; $2 is the other step, done by a plain command between calls.
piped() { # script first-line other-line
  local sha
  sha=$($R script load "$(cat "$SCRIPTS/$1.lua")")
  $R config resetstat >/dev/null
  for i in $(seq 1 4000); do
    echo "${2//ID/id$i}"
    echo "${3//ID/id$i}"
  done | sed "s/SHA/$sha/" | $R --pipe >/dev/null
  usec
}
key=bench:alone
ROWS=(empty load learn refused acqref held acquire complete)
declare -A NAMES=(
  [empty]="empty script (\`return 1\`), for scale"
  [load]="load"
  [learn]="learn, the validator known (a GET that confirms)"
  [refused]="learn, refused (the generation moved)"
  [acqref]="acquire, refused (stale If-Match)"
  [held]="acquire, held by another (a waiter's poll)"
  [acquire]="acquire, taken (a passing write's first call; HDEL between calls gives it back)"
  [complete]="complete, recorded (its second; HSET between calls hands a lease to it)"
)
SCRIPT_REPS=${SCRIPT_REPS:-5}
SCRIPT_TSV=$OUT/shared_store_scripts.tsv
printf 'rep\tscript\tusec_per_call\n' >"$SCRIPT_TSV"
for rep in $(seq 1 "$SCRIPT_REPS"); do
  $R del "$key" >/dev/null
  $R evalsha "$($R script load "$(cat "$SCRIPTS/LEARN.lua")")" 1 "$key" 300000 0 v 0000000000000001 abc "" >/dev/null
  gen=$($R hget "$key" g)
  declare -A V=()
  V[empty]=$(sha=$($R script load 'return 1'); $R config resetstat >/dev/null; redis-benchmark -p "$PORT_REDIS" -n 20000 -c 4 -q evalsha "$sha" 0 >/dev/null; usec)
  V[load]=$(alone LOAD 1 "$key" 300000)
  V[learn]=$(alone LEARN 1 "$key" 300000 "$gen" v 0000000000000001 abc '')
  V[refused]=$(alone LEARN 1 "$key" 300000 5 v 0000000000000001 abc '')
  V[acqref]=$(alone ACQUIRE 1 "$key" 300000 75000 id1 m 00000000 '' '' '' '' '' old)
  $R hset "$key" l other x 99999999999999 >/dev/null
  V[held]=$(alone ACQUIRE 1 "$key" 300000 75000 id1 m 00000000 '' '' '' '' '' abc)
  $R hdel "$key" l x >/dev/null
  V[acquire]=$(piped ACQUIRE "evalsha SHA 1 $key 300000 75000 ID m 00000000 \"\" \"\" \"\" \"\" \"\" abc" "hdel $key l x")
  V[complete]=$(piped COMPLETE "hset $key l ID x 99999999999999" \
    "evalsha SHA 1 $key 300000 ID r 0000000000000001 abc \"\"")
  for row in "${ROWS[@]}"; do printf '%s\t%s\t%s\n' "$rep" "$row" "${V[$row]}" >>"$SCRIPT_TSV"; done
done
echo
echo "| script (one hash; median of $SCRIPT_REPS runs) | usec_per_call | runs |"
echo "|---|---|---|"
for row in "${ROWS[@]}"; do
  values=$(awk -F'\t' -v r="$row" '$2 == r {print $3}' "$SCRIPT_TSV" | sort -n)
  median=$(echo "$values" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "| ${NAMES[$row]} | $median | $(echo $values | tr ' ' ',') |"
done
