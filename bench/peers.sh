#!/usr/bin/env bash
# bench/peers.sh — modelmux next to its peers, on the same upstreams, in one run.
#
# Why: a number for modelmux means little alone. This script puts the same two
# upstreams behind nginx, HAProxy, a parse-nothing TCP relay (the floor) and
# modelmux, pins them the same way, and measures them side by side with wrk,
# so that rows compare like with like. Adapted from the team's peer-benchmark
# harness; everything it needs is in this repository.
#
#   bench/peers.sh                          # ~2.5 min: every row, POST and GET
#   DURATION=5 WARMUP=1 bench/peers.sh      # quick look
#   MODELMUX=/tmp/b/modelmux OUT=/tmp/p.tsv DURATION=30 CONNS=128 bench/peers.sh
#
# | port  | what                                                                   |
# |-------|------------------------------------------------------------------------|
# | 18081 | upstream "champion": {"model":"champion","score":0.73} (nginx)         |
# | 18082 | upstream "challenger": {"model":"challenger","score":0.41} (same nginx) |
# | 18089 | upstream stub_status: counts requests that reach the upstreams         |
# | 18090 | nginx, 90/10 weighted split, upstream keepalive                        |
# | 18091 | nginx, mirror: champion answers, every request copied to challenger    |
# | 18092 | HAProxy, nbthread 1, roundrobin weight 90/10, http-reuse always        |
# | 18093 | modelmux (one row at a time), 1 worker, memory store, no request log   |
# | 18094 | modelmux admin listener                                                |
# | 18095 | bench/peers/relay.c: epoll TCP relay to the champion (the floor)       |
#
# modelmux rows: each modelmux_row line below the configs registers one row:
# a row name and the experiment JSON; the script writes a full config around it
# (listen 127.0.0.1:18093, admin 127.0.0.1:18094, upstreams champion =
# http://127.0.0.1:18081 and challenger = http://127.0.0.1:18082, memory store,
# no request log) into its temp dir, checks it with --check, starts modelmux
# for the row, measures, and stops it. When $MODELMUX is not built, the rows
# print "modelmux: not built, row skipped" and the peers are still measured.
#
# Env knobs (defaults):
#   MODELMUX=build/modelmux          modelmux binary, relative to the repo root
#   MM_ARGS="--seed 1"               extra modelmux arguments
#   MM_POOL=max(128,CONNS)           upstream pool size in the generated configs
#   CONNS=64 DURATION=10 THREADS=1   wrk -c / -d (seconds) / -t
#   WARMUP=2                         unmeasured seconds of load before each row
#   METHODS="POST GET"               which request kinds to measure
#   URL_PATH=/predict                path requested
#   OUT=/tmp/peerbench.tsv           results table (TSV, header row)
#   PIN=1 WRK_CPU=1 PROXY_CPU=0 UPSTREAM_CPU=1   CPU pinning (PIN=0: none)
#   NICE=0                           e.g. -15: servers and wrk at higher priority (root)
#   FLOOR=1                          0: skip the relay floor row
#   IDLE_MAX=10                      "foreign" CPU (other processes) allowed, % of a core
#   WAIT_IDLE=60 RETRIES=1           wait (N s in total per run) for the box to go quiet
#                                    before a row; re-measure a row that saw foreign load
#   MAX_SECONDS=300                  no waits/retries once this budget would be exceeded
#   KEEP_TMP=0                       1: keep configs, logs and raw wrk output
#
# Output columns (TSV at $OUT; a table is printed at the end):
#   rps, p50_ms, p99_ms   from wrk --latency; ratio = rps / direct rps (same method)
#   errors                non-2xx answers plus socket errors; a row is valid only at 0
#   requests              requests wrk completed in the measured window
#   proxy_cpu_pct         user+sys CPU of the proxy's processes, % of one core
#   proxy_us_req          the same in µs per request: the number to compare
#   up_req_per_req        upstream hits per request (1.00 split, 2.00 mirror)
#   tcp_opens             system-wide TCP active opens during the row (wrk ~CONNS+1);
#                         close to the request count means no upstream reuse
#   core_busy_pct, steal_pct, foreign_pct, kthread_pct   the box during the row
#
# Needs nginx, haproxy, wrk, curl, gcc (installed with apt-get when missing).
# Loopback only; every process started here is tracked by PID and stopped by
# PID; every wrk run is bounded by `timeout`.
set -euo pipefail
export LC_ALL=C # "." decimals for awk and $EPOCHREALTIME
export PATH=$PATH:/usr/sbin:/sbin

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODELMUX=${MODELMUX:-build/modelmux}
MM_ARGS=${MM_ARGS:-"--seed 1"}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}; DURATION=${DURATION%s}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}; WARMUP=${WARMUP%s}
METHODS=${METHODS:-"POST GET"}
URL_PATH=${URL_PATH:-/predict}
OUT=${OUT:-/tmp/peerbench.tsv}
PIN=${PIN:-1} NICE=${NICE:-0}
WRK_CPU=${WRK_CPU:-1} PROXY_CPU=${PROXY_CPU:-0} UPSTREAM_CPU=${UPSTREAM_CPU:-1}
FLOOR=${FLOOR:-1}
IDLE_MAX=${IDLE_MAX:-10} WAIT_IDLE=${WAIT_IDLE:-60} RETRIES=${RETRIES:-1}
MAX_SECONDS=${MAX_SECONDS:-300}
KEEP_TMP=${KEEP_TMP:-0}

[[ $NICE =~ ^-?[0-9]+$ ]] || { echo "NICE must be an integer" >&2; exit 2; }
for v in CONNS DURATION THREADS WARMUP WAIT_IDLE IDLE_MAX RETRIES MAX_SECONDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be an integer (got '${!v}')" >&2; exit 2; }
done
(( CONNS > 0 && DURATION > 0 )) || { echo "CONNS and DURATION must be > 0" >&2; exit 2; }
MM_POOL=${MM_POOL:-$(( CONNS > 128 ? CONNS : 128 ))}
[[ $MM_POOL =~ ^[0-9]+$ ]] || { echo "MM_POOL must be an integer" >&2; exit 2; }

UP_A=18081 UP_B=18082 UP_STATUS=18089 NGX_SPLIT=18090 NGX_MIRROR=18091 HAP_SPLIT=18092
MM_PORT=18093 MM_ADMIN_PORT=18094 FLOOR_PORT=18095
LUA=$ROOT/bench/post.lua
RELAY_SRC=$ROOT/bench/peers/relay.c

# ---------------------------------------------------------------- tools
ensure_tools() {  # install (apt-get) the packages of whatever command is missing
  local -A pkg=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [curl]=curl [gcc]=gcc
                [taskset]=util-linux [ss]=iproute2 [timeout]=coreutils)
  local missing=() t sudo=
  for t in "${!pkg[@]}"; do command -v "$t" >/dev/null || missing+=("${pkg[$t]}"); done
  (( ${#missing[@]} )) || return 0
  echo "installing: ${missing[*]}"
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  for t in "${!pkg[@]}"; do
    command -v "$t" >/dev/null || { echo "still missing after install: $t" >&2; exit 2; }
  done
}
ensure_tools
CLK_TCK=$(getconf CLK_TCK)

# command prefixes: priority, then CPU pinning (nice and taskset both exec, so PIDs hold)
ON_WRK=(nice -n "$NICE") ON_PROXY=(nice -n "$NICE") ON_UP=(nice -n "$NICE")
if [[ $PIN == 1 ]]; then
  ON_WRK+=(taskset -c "$WRK_CPU") ON_PROXY+=(taskset -c "$PROXY_CPU") ON_UP+=(taskset -c "$UPSTREAM_CPU")
fi

# ---------------------------------------------------------------- lifecycle
TMP=$(mktemp -d /tmp/peers.XXXXXX)
chmod 755 "$TMP"  # nginx workers run as nobody
PIDS=()           # running servers, in start order
declare -A PID    # the same, by name: up ngx hap floor mm
WRK_PID=

ppid_of() { awk '{sub(/^.*\) /, ""); print $2}' /proc/"$1"/stat 2>/dev/null || true; }
running() { local st; st=$(awk '{sub(/^.*\) /, ""); print $1}' /proc/"$1"/stat 2>/dev/null)
            [[ -n $st && $st != Z ]]; }  # alive and not a zombie

cleanup() {
  local rc=$? pid k kids=()
  trap - EXIT INT TERM
  if [[ -n $WRK_PID ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
  for pid in "${PIDS[@]}"; do  # remember nginx workers before their master goes
    for k in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do kids+=("$k"); done
  done
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}" "${kids[@]}"; do running "$pid" && alive=1; done
    (( alive )) || break; sleep 0.1
  done
  for k in "${kids[@]}"; do  # stragglers: workers only while their master is ours
    [[ " ${PIDS[*]} " == *" $(ppid_of "$k") "* ]] && kill -KILL "$k" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done  # unreaped: safe
  wait 2>/dev/null || true
  if [[ $KEEP_TMP == 1 ]]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME LOG CMD... : run CMD in background, record its PID
  local name=$1 log=$2; shift 2
  "$@" >"$log" 2>&1 &
  PIDS+=($!) PID[$name]=$!
}

stop() {  # stop NAME : SIGTERM by PID, wait (bounded), SIGKILL, reap, forget the PID
  local name=$1 pid=${PID[$1]:-} p keep=()
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
  running "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}"); unset "PID[$name]"
}

http_up() {  # http_up URL PID : until URL gives any HTTP answer (0) or PID dies / 5 s (1)
  for _ in $(seq 50); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    running "$2" || return 1
    sleep 0.1
  done
  return 1
}
wait_http() {  # wait_http URL PID LOG : the same, but a failure ends the run
  http_up "$1" "$2" && return 0
  echo "no answer from $1 (pid $2); log:" >&2; cat "$3" >&2; exit 1
}

for p in $UP_A $UP_B $UP_STATUS $NGX_SPLIT $NGX_MIRROR $HAP_SPLIT $MM_PORT $MM_ADMIN_PORT $FLOOR_PORT; do
  [[ -z $(ss -Hltn "sport = :$p") ]] || { echo "port $p already in use" >&2; exit 1; }
done

# ---------------------------------------------------------------- configs
nginx_common() {  # shared nginx main/http settings; $1 = instance dir
  cat <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;     # default 1000 would force periodic reconnects
  keepalive_timeout 75s;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
EOF
}

mkdir -p "$TMP/up" "$TMP/ngx" "$TMP/hap" "$TMP/wrk" "$TMP/mm"

{ nginx_common "$TMP/up"; cat <<EOF
  default_type application/json;
  server { listen 127.0.0.1:$UP_A backlog=4096;
           location / { return 200 '{"model":"champion","score":0.73}'; } }
  server { listen 127.0.0.1:$UP_B backlog=4096;
           location / { return 200 '{"model":"challenger","score":0.41}'; } }
  server { listen 127.0.0.1:$UP_STATUS; location / { stub_status; } }
}
EOF
} >"$TMP/up/nginx.conf"

{ nginx_common "$TMP/ngx"; cat <<EOF
  proxy_http_version 1.1;         # needed for upstream keepalive
  proxy_set_header Connection "";
  upstream split {                # smooth weighted round robin, 90/10
    server 127.0.0.1:$UP_A weight=9;
    server 127.0.0.1:$UP_B weight=1;
    keepalive 128; keepalive_requests 1000000;
  }
  upstream champion   { server 127.0.0.1:$UP_A; keepalive 128; keepalive_requests 1000000; }
  upstream challenger { server 127.0.0.1:$UP_B; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGX_SPLIT backlog=4096;
           location / { proxy_pass http://split; } }
  # shadow mode: champion answers, every request is also copied to challenger
  server { listen 127.0.0.1:$NGX_MIRROR backlog=4096;
           location / { mirror /_shadow; proxy_pass http://champion; }
           location = /_shadow { internal; proxy_pass http://challenger\$request_uri; } }
}
EOF
} >"$TMP/ngx/nginx.conf"

cat >"$TMP/hap/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$HAP_SPLIT
  default_backend split
backend split
  balance roundrobin
  http-reuse always               # share idle server connections across clients
  server champion   127.0.0.1:$UP_A weight 90
  server challenger 127.0.0.1:$UP_B weight 10
EOF

mm_config() {  # mm_config EXPERIMENT_JSON : a full modelmux config around one experiment
  cat <<EOF
{
  "listen": "127.0.0.1:$MM_PORT",
  "admin": {"listen": "127.0.0.1:$MM_ADMIN_PORT"},
  "store": {"type": "memory"},
  "log": {"requests": null},
  "limits": {"drain_timeout_ms": 2000},
  "upstreams": {
    "champion":   {"url": "http://127.0.0.1:$UP_A", "pool": $MM_POOL},
    "challenger": {"url": "http://127.0.0.1:$UP_B", "pool": $MM_POOL}
  },
  "experiments": [
    $1
  ]
}
EOF
}

# ---------------------------------------------------------------- modelmux rows
MM_ROWS=()        # row names, in order
declare -A MM_EXP # row name -> experiment JSON
modelmux_row() {  # modelmux_row NAME EXPERIMENT_JSON : register one modelmux row
  MM_ROWS+=("$1"); MM_EXP[$1]=$2
}
# One line per row: the plain split (vs nginx/HAProxy split), Thompson
# sampling (vs the split: the bandit's routing cost), shadow (vs nginx mirror).
modelmux_row modelmux-split '{"name":"split","match":{"path_prefix":"/"},"policy":"ab","arms":{"champion":90,"challenger":10}}'
modelmux_row modelmux-thompson '{"name":"bandit","match":{"path_prefix":"/"},"policy":"thompson","arms":["champion","challenger"]}'
modelmux_row modelmux-shadow '{"name":"shadow","match":{"path_prefix":"/"},"policy":"shadow","primary":"champion","shadows":["challenger"],"max_inflight":4096}'

declare -A MM_SKIP  # row name -> reason it is skipped (reported once)
mm_built() { [[ -f $MODELMUX && -x $MODELMUX ]]; }

mm_start() {  # mm_start ROW : write the config, check it, start modelmux; 1 = row skipped
  local row=$1 cfg=$TMP/mm/$1.json log=$TMP/mm/$1.log
  [[ -z ${MM_SKIP[$row]:-} ]] || return 1
  if ! mm_built; then
    MM_SKIP[$row]="not built"
    echo "modelmux: not built, row skipped ($row; no executable at $MODELMUX)"
    return 1
  fi
  mm_config "${MM_EXP[$row]}" >"$cfg"
  if ! "$MODELMUX" --check -c "$cfg" >"$log" 2>&1; then
    MM_SKIP[$row]="config rejected"
    echo "modelmux: config rejected, row skipped ($row):"; sed 's/^/    /' "$log"
    return 1
  fi
  # shellcheck disable=SC2086 # MM_ARGS is a list of words
  start mm "$log" "${ON_PROXY[@]}" "$MODELMUX" -c "$cfg" $MM_ARGS
  if ! http_up "http://127.0.0.1:$MM_PORT$URL_PATH" "${PID[mm]}"; then
    MM_SKIP[$row]="did not start"
    echo "modelmux: did not start, row skipped ($row); log:"; tail -n 20 "$log" | sed 's/^/    /'
    stop mm
    return 1
  fi
}

# ---------------------------------------------------------------- start
start up  "$TMP/up/out.log"  "${ON_UP[@]}"    nginx -p "$TMP/up/"  -c "$TMP/up/nginx.conf"
start ngx "$TMP/ngx/out.log" "${ON_PROXY[@]}" nginx -p "$TMP/ngx/" -c "$TMP/ngx/nginx.conf"
start hap "$TMP/hap/out.log" "${ON_PROXY[@]}" haproxy -db -f "$TMP/hap/haproxy.cfg"
wait_http "http://127.0.0.1:$UP_A/"       "${PID[up]}"  "$TMP/up/error.log"
wait_http "http://127.0.0.1:$UP_B/"       "${PID[up]}"  "$TMP/up/error.log"
wait_http "http://127.0.0.1:$NGX_SPLIT/"  "${PID[ngx]}" "$TMP/ngx/error.log"
wait_http "http://127.0.0.1:$NGX_MIRROR/" "${PID[ngx]}" "$TMP/ngx/error.log"
wait_http "http://127.0.0.1:$HAP_SPLIT/"  "${PID[hap]}" "$TMP/hap/out.log"
if [[ $FLOOR == 1 ]]; then
  gcc -O2 -o "$TMP/relay" "$RELAY_SRC" || { echo "cannot build $RELAY_SRC" >&2; exit 1; }
  start floor "$TMP/floor.log" "${ON_PROXY[@]}" "$TMP/relay" "$FLOOR_PORT" "$UP_A"
  wait_http "http://127.0.0.1:$FLOOR_PORT/" "${PID[floor]}" "$TMP/floor.log"
fi

# ---------------------------------------------------------------- helpers
up_requests() {  # requests the upstream nginx has served (stub_status)
  { curl -s --max-time 2 "http://127.0.0.1:$UP_STATUS/" || true; } | awk 'NR==3 {print $3 + 0}'
}

proc_ticks() {  # utime+stime (clock ticks) of the given PIDs and their children
  local t=0 p c v
  for p in "$@"; do
    for c in $p $(cat /proc/"$p"/task/*/children 2>/dev/null || true); do
      v=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' /proc/"$c"/stat 2>/dev/null || echo 0)
      t=$((t + ${v:-0}))
    done
  done
  echo "$t"
}

cpu_snap() { awk '/^cpu[0-9]/ {printf "%d %d %d ", $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }

# "Foreign" CPU: ticks used by processes that are neither ours (this script,
# the servers it started, their children) nor kernel threads. The box may be
# shared; a busy neighbour silently skews every number.
# snap: "pid ticks kind"; ticks include reaped children (cutime+cstime), so
# short-lived processes are seen through their parent; kind k = kernel thread.
# (A process that exits between the glob and the read makes cat fail: ignored.)
snap() { { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{p = $1; sub(/^.*\) /, "")
           print p, $12 + $13 + $14 + $15, (p == 2 || $2 == 2) ? "k" : "u"}'; }
ours() {
  local p
  for p in $$ "${PIDS[@]}"; do
    echo "$p"; cat /proc/"$p"/task/*/children 2>/dev/null | tr ' ' '\n' || true
  done
}
foreign_ticks() {  # foreign_ticks SNAP0 SNAP1 -> "foreign_ticks kernel_thread_ticks"
  awk -v ours="$(ours | tr '\n' ' ')" '
    BEGIN { n = split(ours, o, " "); for (i = 1; i <= n; i++) mine[o[i]] = 1 }
    FNR == NR { t0[$1] = $2; next }
    !($1 in mine) { d = $2 - t0[$1]; if (d < 0) d = $2; sum[$3] += d }
    END { print sum["u"] + 0, sum["k"] + 0 }' "$1" "$2"
}
foreign_now() {  # foreign load over a short sample, % of a core
  snap >"$TMP/idle0"; sleep "$1"; snap >"$TMP/idle1"
  local f; f=$(foreign_ticks "$TMP/idle0" "$TMP/idle1")
  echo $(( ${f% *} * 1000 / CLK_TCK / 10#${1/./} ))  # $1: seconds as s.d
}
budget_ok() { (( SECONDS + WARMUP + DURATION + 5 < MAX_SECONDS )); }
WAITED=0
wait_idle() {  # until foreign load < IDLE_MAX, or WAIT_IDLE (per run) / budget runs out
  local t f
  while t=$SECONDS; f=$(foreign_now 1.0); (( f >= IDLE_MAX )); do
    if (( WAITED >= WAIT_IDLE )) || ! budget_ok; then
      echo "  WARNING: foreign load ${f}% of a core; measuring anyway (results skewed)"
      return 0
    fi
    echo "  waiting: foreign load ${f}% of a core ..."; sleep 2
    WAITED=$((WAITED + SECONDS - t))
  done
}

mix_check() {  # mix_check URL : model mix over 100 keep-alive POSTs + upstream hits
  local before after mix urls=()
  for _ in $(seq 100); do urls+=("$1"); done
  before=$(up_requests)
  mix=$(curl -s --max-time 20 -H 'Content-Type: application/json' -d '{"x":1}' "${urls[@]}" \
        | grep -o '"model":"[a-z]*"' | sort | uniq -c \
        | awk '{gsub(/"model":|"/, "", $2); printf "%s=%s ", $2, $1}' || true)
  after=$(up_requests)
  echo "${mix}upstream_hits=$((after - before - 1))"  # -1: the status request itself
}

# ---------------------------------------------------------------- bench
declare -A DIRECT_RPS
printf 'name\tmethod\trps\tp50_ms\tp99_ms\tratio\terrors\trequests\tproxy_cpu_pct\tproxy_us_req\tup_req_per_req\ttcp_opens\tcore_busy_pct\tsteal_pct\tforeign_pct\tkthread_pct\n' >"$OUT"

tcp_opens() { awk '/^Tcp:/ && $6 ~ /^[0-9]+$/ {print $6}' /proc/net/snmp; }  # ActiveOpens

measure() {  # measure NAME URL METHOD [PROXY_PIDS...] : prints one TSV row
  local name=$1 url=$2 method=$3; shift 3
  local raw="$TMP/wrk/$name.$method.txt" script=() t0 t1 c0 c1 u0 u1 o0 o1 fr w0 w1
  [[ $method == POST ]] && script=(-s "$LUA")
  # warm-up: fills client and upstream keep-alive pools, warms caches
  if (( WARMUP > 0 )); then
    timeout -k 2 $((WARMUP + 15)) "${ON_WRK[@]}" wrk -t"$THREADS" -c"$CONNS" \
      -d"${WARMUP}s" "${script[@]}" "$url" >/dev/null 2>&1 || true
  fi
  u0=$(up_requests); snap >"$TMP/snap0"; o0=$(tcp_opens)
  t0=$(proc_ticks "$@"); c0=$(cpu_snap); w0=$EPOCHREALTIME
  timeout -k 2 $((DURATION + 15)) "${ON_WRK[@]}" wrk -t"$THREADS" -c"$CONNS" \
      -d"${DURATION}s" --latency "${script[@]}" "$url" >"$raw" 2>&1 &
  WRK_PID=$!; wait "$WRK_PID" || true; WRK_PID=
  w1=$EPOCHREALTIME; c1=$(cpu_snap); t1=$(proc_ticks "$@")
  o1=$(tcp_opens); snap >"$TMP/snap1"; u1=$(up_requests)
  fr=$(foreign_ticks "$TMP/snap0" "$TMP/snap1")

  awk -v name="$name" -v method="$method" -v base="${DIRECT_RPS[$method]:-}" \
      -v dt=$((t1 - t0)) -v hz="$CLK_TCK" -v w0="$w0" -v w1="$w1" -v haspid=$# \
      -v dup=$((u1 - u0 - 1)) -v opens=$((o1 - o0)) -v fr="$fr" -v c0="$c0" -v c1="$c1" '
    function min(x, y) { return x < y ? x : y }
    function ms(v, n) { n = v + 0
      if (v ~ /us$/) return n / 1000; if (v ~ /ms$/) return n
      if (v ~ /m$/)  return n * 60000; if (v ~ /s$/)  return n * 1000; return n }
    /^ +50%/ { p50 = ms($2) }  /^ +99%/ { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx/ { err += $NF }
    /Socket errors:/ { for (i = 3; i <= NF; i++) err += $i + 0 }
    END {
      if (rps == "") { rps = 0; reqs = 0 }
      dur = w1 - w0                                  # wall time of the sampled window
      ratio = (base > 0) ? sprintf("%.3f", rps / base) : "-"
      pct = haspid ? sprintf("%.1f", 100 * dt / hz / dur) : "-"
      us  = (haspid && reqs > 0) ? sprintf("%.2f", 1e6 * dt / hz / reqs) : "-"
      upr = (reqs > 0) ? sprintf("%.2f", dup / reqs) : "-"
      n = split(c0, a, " "); split(c1, b, " "); busy = ""; st = 0; tot = 0
      for (i = 1; i <= n; i += 3) {
        d = b[i+1] - a[i+1]
        busy = busy (busy == "" ? "" : ",") sprintf("%.0f", d > 0 ? 100 * (b[i] - a[i]) / d : 0)
        st += b[i+2] - a[i+2]; tot += d }
      steal = (tot > 0) ? 100 * st / tot : 0
      split(fr, f, " ")
      printf "%s\t%s\t%.0f\t%.3f\t%.3f\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%s\t%.1f\t%.1f\t%.1f\n",
        name, method, rps, p50, p99, ratio, err, reqs, pct, us, upr, opens, busy, steal,
        min(100 * f[1] / hz / dur, 100 * n / 3), 100 * f[2] / hz / dur   # cap: all cores
    }' "$raw"
}

bench() {  # bench NAME URL METHOD [PROXY_PIDS...] : measure, retry if disturbed, record
  local row f try
  for ((try = 0; ; try++)); do
    f=$(foreign_now 0.5); (( f < IDLE_MAX )) || wait_idle
    measure "$@" >"$TMP/row"  # not $(...): keeps wrk interruptible by the trap
    row=$(<"$TMP/row"); f=$(cut -f15 <<<"$row"); f=${f%.*}
    if (( f < IDLE_MAX || try >= RETRIES )) || ! budget_ok; then break; fi
    echo "  ($1 $3: foreign load ${f}% of a core, re-measuring)"
  done
  printf '%s\n' "$row" >>"$OUT"
  cut -f1-7 <<<"$row" | tr '\t' ' '
  [[ $1 == direct ]] && DIRECT_RPS[$3]=$(cut -f3 <<<"$row")
  return 0
}

mm_bench() {  # mm_bench ROW METHOD : one modelmux row, on an instance of its own
  mm_start "$1" || return 0
  bench "$1" "http://127.0.0.1:$MM_PORT$URL_PATH" "$2" "${PID[mm]}"
  stop mm
}

echo "peers: wrk -t$THREADS -c$CONNS -d${DURATION}s (+${WARMUP}s warm-up), methods: $METHODS"
if [[ $PIN == 1 ]]; then
  echo "pinning: wrk->cpu$WRK_CPU proxy->cpu$PROXY_CPU upstream->cpu$UPSTREAM_CPU"
else echo "pinning: off"; fi
(( NICE == 0 )) || echo "priority: nice $NICE for servers and wrk"
mmv="modelmux not built ($MODELMUX)"
mm_built && mmv=$("$MODELMUX" --version 2>&1 | head -n 1 || true)
echo "versions: $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | awk 'NR==1 {print "haproxy/" $3}')," \
     "$(wrk -v 2>&1 | awk 'NR==1 {print "wrk/" $2}'), $mmv; tcp_tw_reuse=$(</proc/sys/net/ipv4/tcp_tw_reuse)"
echo "sanity (100 keep-alive POSTs each):"
printf '  %-16s %s\n' direct        "$(mix_check "http://127.0.0.1:$UP_A$URL_PATH")" \
                 nginx-split   "$(mix_check "http://127.0.0.1:$NGX_SPLIT$URL_PATH")" \
                 haproxy-split "$(mix_check "http://127.0.0.1:$HAP_SPLIT$URL_PATH")" \
                 nginx-mirror  "$(mix_check "http://127.0.0.1:$NGX_MIRROR$URL_PATH")"
for r in "${MM_ROWS[@]}"; do
  mm_start "$r" || continue
  printf '  %-16s %s\n' "$r" "$(mix_check "http://127.0.0.1:$MM_PORT$URL_PATH")"
  stop mm
done

for m in $METHODS; do
  bench direct        "http://127.0.0.1:$UP_A$URL_PATH"      "$m"
  bench nginx-split   "http://127.0.0.1:$NGX_SPLIT$URL_PATH" "$m" "${PID[ngx]}"
  bench haproxy-split "http://127.0.0.1:$HAP_SPLIT$URL_PATH" "$m" "${PID[hap]}"
  if [[ $FLOOR == 1 ]]; then bench relay-floor "http://127.0.0.1:$FLOOR_PORT$URL_PATH" "$m" "${PID[floor]}"; fi
  for r in "${MM_ROWS[@]}"; do mm_bench "$r" "$m"; done
done
# nginx mirror last: it opens one upstream TCP connection per request, and the
# TIME_WAIT sockets it leaves should not disturb other rows.
for m in $METHODS; do
  bench nginx-mirror "http://127.0.0.1:$NGX_MIRROR$URL_PATH" "$m" "${PID[ngx]}"
done

echo
if command -v column >/dev/null; then column -t -s $'\t' "$OUT"; else cat "$OUT"; fi
echo "results: $OUT"
for r in "${MM_ROWS[@]}"; do
  [[ -z ${MM_SKIP[$r]:-} ]] || echo "modelmux: $r skipped (${MM_SKIP[$r]})"
done
awk -F'\t' -v max="$IDLE_MAX" 'NR > 1 && $15 > max { bad = bad " " $1 "/" $2 }
  END { if (bad != "") print "WARNING: foreign CPU load above " max "% during:" bad }' "$OUT"
