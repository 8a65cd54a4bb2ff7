#!/usr/bin/env bash
# bench/feedback_ingest.sh — how many reward events per second one modelmux
# (pinned to one core) takes in over HTTP and lands in Redis.
#
# Starts a private redis-server and modelmux (Redis store, a Thompson
# experiment) on free loopback ports, drives POST /_modelmux/feedback with
# wrk (batches of BATCH explicit {"experiment","arm","reward"} events), then
# waits for the last sync round and checks that the `feedback` counters in
# Redis equal the events modelmux acknowledged. Prints events/s accepted and
# events/s in Redis. Every process it starts is stopped by PID.
#
#   bench/feedback_ingest.sh                    # 10 s, 64 connections, batches of 100
#   DURATION=5 CONNS=16 BATCH=10 bench/feedback_ingest.sh
#   MODELMUX=build/modelmux PIN=0 bench/feedback_ingest.sh
#   MODE=stream EVENTS=200000 bench/feedback_ingest.sh   # the Redis stream instead
#
# MODE=stream writes EVENTS entries ({experiment, arm, reward}) to
# PREFIX:feedback with one `redis-cli --pipe` while modelmux runs, and times
# how long modelmux takes until Redis holds every one of them applied (the
# arms' `feedback` counters) and the group has nothing pending.
set -euo pipefail
export LC_ALL=C   # "." decimals for awk and $EPOCHREALTIME
cd "$(dirname "$0")/.."
MODELMUX=${MODELMUX:-build/modelmux}
DURATION=${DURATION:-10} CONNS=${CONNS:-64} BATCH=${BATCH:-100} PIN=${PIN:-1}
MODE=${MODE:-http} EVENTS=${EVENTS:-200000}
[[ $MODE == http || $MODE == stream ]] || { echo "MODE must be http or stream" >&2; exit 2; }
for v in DURATION CONNS BATCH EVENTS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
for t in wrk redis-server redis-cli python3; do
  command -v "$t" >/dev/null || { apt-get install -y -qq wrk redis-server redis-tools python3 >/dev/null; break; }
done
[[ -x $MODELMUX ]] || { echo "no modelmux at $MODELMUX (build first: cmake -S . -B build && cmake --build build)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/mm-feedback.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }

RPORT=$(free_port); MPORT=$(free_port); UPORT=$(free_port); APORT=$(free_port)
ON_MM=(); ON_WRK=()
if [[ $PIN == 1 ]]; then ON_MM=(taskset -c 0); ON_WRK=(taskset -c 1); fi

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
RDPID=$!
PIDS+=($RDPID)
wait_port "$RPORT"
cat >"$TMP/mm.json" <<EOF
{"listen": "127.0.0.1:$MPORT", "admin": {"listen": "127.0.0.1:$APORT"},
 "store": {"type": "redis", "host": "127.0.0.1", "port": $RPORT, "prefix": "ingest", "sync_ms": 100},
 "upstreams": {"champion": {"url": "http://127.0.0.1:$UPORT"}, "challenger": {"url": "http://127.0.0.1:$UPORT"}},
 "experiments": [{"name": "recs", "match": {"path_prefix": "/"}, "policy": "thompson",
                  "arms": ["champion", "challenger"]}]}
EOF
"${ON_MM[@]}" "$MODELMUX" -c "$TMP/mm.json" --seed 1 >"$TMP/mm.log" 2>&1 &
MMPID=$!
PIDS+=($MMPID)
wait_port "$MPORT"
wait_port "$APORT"

ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' /proc/"${1:-$MMPID}"/stat; }
in_redis() {
  local n=0 v arm
  for arm in champion challenger; do
    v=$(redis-cli -p "$RPORT" HGET "ingest:{recs}:arm:$arm" feedback); n=$((n + ${v:-0}))
  done
  echo "$n"
}

if [[ $MODE == stream ]]; then
  # RESP for EVENTS XADDs, written before the clock starts
  python3 - "$EVENTS" >"$TMP/xadd.resp" <<'PY'
import sys
out = sys.stdout
for i in range(int(sys.argv[1])):
    args = ["XADD", "ingest:feedback", "*", "experiment", "recs",
            "arm", ("champion", "challenger")[i % 2], "reward", str((i // 2) % 2)]
    out.write("*%d\r\n" % len(args))
    for a in args:
        out.write("$%d\r\n%s\r\n" % (len(a), a))
PY
  t0=$(ticks) r0=$(ticks "$RDPID") s0=$EPOCHREALTIME
  redis-cli -p "$RPORT" --pipe <"$TMP/xadd.resp" >"$TMP/pipe.txt"
  deadline=$((SECONDS + 600))
  while :; do
    got=$(in_redis)
    pend=$(redis-cli -p "$RPORT" XPENDING ingest:feedback modelmux | head -1)
    [[ $got -ge $EVENTS && ${pend:-0} -eq 0 ]] && break
    (( SECONDS < deadline )) || { echo "gave up after 600 s: $got of $EVENTS in Redis" >&2; exit 1; }
    sleep 0.05
  done
  s1=$EPOCHREALTIME t1=$(ticks) r1=$(ticks "$RDPID")
  awk -v n="$EVENTS" -v got="$got" -v s0="$s0" -v s1="$s1" -v dt=$((t1 - t0)) -v rt=$((r1 - r0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
    el = s1 - s0
    printf "feedback stream: %d entries written, %d applied and in Redis (%s) after %.2f s\n", n, got, (got == n) ? "exact" : "MISMATCH", el
    printf "  consumed %.0f events/s\n", n / el
    printf "  modelmux CPU %.0f %% of a core, %.2f us per event\n", 100 * dt / hz / el, 1e6 * dt / hz / n
    printf "  redis-server CPU %.0f %% of a core (the XADDs included)\n", 100 * rt / hz / el
  }'
  exit 0
fi

# one batch: BATCH events alternating arms, rewards 0/1 alternating
python3 - "$BATCH" >"$TMP/post.lua" <<'PY'
import json, sys
n = int(sys.argv[1])
ev = [{"experiment": "recs", "arm": ("champion", "challenger")[i % 2], "reward": (i // 2) % 2}
      for i in range(n)]
body = json.dumps({"events": ev}, separators=(",", ":"))
print('wrk.method = "POST"')
print('wrk.body = %s' % json.dumps(body))
print('wrk.headers["Content-Type"] = "application/json"')
PY
t0=$(ticks)
"${ON_WRK[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$TMP/post.lua" "http://127.0.0.1:$MPORT/_modelmux/feedback" >"$TMP/wrk.txt" 2>&1
t1=$(ticks)
sleep 1   # a few sync rounds
posts=$(awk '/ requests in /{print $1}' "$TMP/wrk.txt")
rps=$(awk '/^Requests\/sec:/{print $2}' "$TMP/wrk.txt")
non2xx=$(awk '/Non-2xx/{print $NF}' "$TMP/wrk.txt"); non2xx=${non2xx:-0}
in_redis=$(in_redis)
# what modelmux itself applied (wrk does not count the requests still in
# flight when it stops; modelmux finished and applied those too)
applied=$(python3 - "$APORT" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1]).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
              if l.startswith("modelmux_feedback_total{"))))
PY
)
hz=$(getconf CLK_TCK)
awk -v posts="$posts" -v rps="$rps" -v batch="$BATCH" -v red="$in_redis" -v bad="$non2xx" \
    -v app="$applied" -v dt=$((t1 - t0)) -v hz="$hz" -v dur="$DURATION" 'BEGIN {
  printf "feedback ingestion: %d POSTs of %d events answered in %d s (%d non-2xx)\n", posts, batch, dur, bad
  printf "  accepted  %.0f events/s (%.0f POST/s)\n", rps * batch, rps
  printf "  applied by modelmux %d events; in Redis %d (%s)\n", app, red, (red == app) ? "exact" : "MISMATCH"
  printf "  modelmux CPU %.0f %% of a core, %.2f us per event\n", 100 * dt / hz / dur, 1e6 * dt / hz / app
}'
