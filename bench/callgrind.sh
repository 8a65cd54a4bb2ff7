#!/usr/bin/env bash
# bench/callgrind.sh — instructions per request, deterministically.
#
# Why: wall-clock and CPU numbers on a shared VM move ±15 % from run to run;
# instruction counts under callgrind move by well under 1 %, so they tell
# whether a change to the hot path made it cheaper. Two runs of modelmux
# under `valgrind --tool=callgrind` serve N1 and N2 requests (POST, keep-alive,
# 4 connections, nginx as the upstream); (Ir2 - Ir1) / (N2 - N1) cancels the
# start-up and shutdown cost. The profile of the larger run is kept for
# callgrind_annotate.
#
#   bench/callgrind.sh split            # 90/10 ab split
#   bench/callgrind.sh shadow           # champion answers, challenger mirrored + compared
#   bench/callgrind.sh thompson
#   N1=500 N2=3000 METHOD=GET bench/callgrind.sh split
#
# Env: MODELMUX=build/modelmux  N1=1000 N2=6000  METHOD=POST
#      OUT=/tmp/mm-callgrind (profiles callgrind.N1.out / callgrind.N2.out, logs)
#      PORT=18480: loopback ports PORT+1, PORT+2 (upstreams), PORT+3 (modelmux)
# Processes are stopped by PID.
set -euo pipefail
export LC_ALL=C PATH=$PATH:/usr/sbin:/sbin
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROW=${1:-split}
MODELMUX=${MODELMUX:-build/modelmux}
N1=${N1:-1000} N2=${N2:-6000} METHOD=${METHOD:-POST}
OUT=${OUT:-/tmp/mm-callgrind}
PORT=${PORT:-18480}
[[ $PORT =~ ^[0-9]+$ ]] || { echo "PORT must be a number" >&2; exit 2; }
UP1=$((PORT + 1)) UP2=$((PORT + 2)) MM=$((PORT + 3))
for t in valgrind nginx python3 curl; do
  command -v $t >/dev/null || { echo "needs $t (apt-get install valgrind nginx python3 curl)" >&2; exit 2; }
done
[[ -x $MODELMUX ]] || { echo "$MODELMUX not built" >&2; exit 2; }
(( N2 > N1 )) || { echo "N2 must be larger than N1" >&2; exit 2; }

case $ROW in
  split)    EXP='"policy":"ab","arms":{"champion":90,"challenger":10}' ;;
  thompson) EXP='"policy":"thompson","arms":["champion","challenger"]' ;;
  shadow)   EXP='"policy":"shadow","primary":"champion","shadows":["challenger"],"max_inflight":4096' ;;
  *) echo "row: split | thompson | shadow" >&2; exit 2 ;;
esac

rm -rf "$OUT"; mkdir -p "$OUT"/up/{b,p,f,u,s}; chmod -R 777 "$OUT"/up
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

cat >"$OUT/up/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $OUT/up/nginx.pid; error_log $OUT/up/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  client_body_temp_path $OUT/up/b; proxy_temp_path $OUT/up/p; fastcgi_temp_path $OUT/up/f;
  uwsgi_temp_path $OUT/up/u; scgi_temp_path $OUT/up/s; default_type application/json;
  server { listen 127.0.0.1:$UP1; location / { return 200 '{"model":"champion","score":0.73}'; } }
  server { listen 127.0.0.1:$UP2; location / { return 200 '{"model":"challenger","score":0.41}'; } }
}
EOF
nginx -c "$OUT/up/nginx.conf" -p "$OUT/up" >"$OUT/up.log" 2>&1 &
PIDS+=($!)
cat >"$OUT/mm.json" <<EOF
{"listen":"127.0.0.1:$MM",
 "upstreams":{"champion":{"url":"http://127.0.0.1:$UP1","pool":64},
              "challenger":{"url":"http://127.0.0.1:$UP2","pool":64}},
 "experiments":[{"name":"$ROW","match":{"path_prefix":"/"},$EXP}]}
EOF
"$MODELMUX" --check -c "$OUT/mm.json" >/dev/null

wait_up() { for _ in $(seq 100); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done
            echo "no answer from $1" >&2; exit 1; }
wait_up http://127.0.0.1:$UP1/

load() {  # load N : N requests over 4 keep-alive connections, every answer read
  # Raw sockets: each request goes out in one send, as wrk sends it (Python's
  # http.client sends head and body separately, and an upstream that answers
  # before the body arrived makes modelmux close the client connection).
  python3 - "$1" "$METHOD" "$MM" <<'EOF'
import socket, sys
n, method, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
body = b'{"inputs":{"user":"u-1234","features":[0.12,3.4,5.6,0.78,9.1]}}' if method == "POST" else b""
req = (b"%s /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n" % (method.encode(), port)
       + (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" + body)
socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
bufs = [b""] * 4
for i in range(n):
    k = i % 4
    socks[k].sendall(req)
    buf = bufs[k]
    while b"\r\n\r\n" not in buf:
        chunk = socks[k].recv(65536)
        if not chunk: sys.exit("connection closed by modelmux")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"): sys.exit("answer: %r" % head[:40])
    clen = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(rest) < clen:
        chunk = socks[k].recv(65536)
        if not chunk: sys.exit("connection closed by modelmux")
        rest += chunk
    bufs[k] = rest[clen:]
EOF
}

run() {  # run N : Ir of a modelmux that served N requests
  local n=$1 pid
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$n.out" \
    "$MODELMUX" -c "$OUT/mm.json" --seed 1 >"$OUT/mm.$n.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_up http://127.0.0.1:$MM/
  load "$n"
  sleep 0.5  # let shadow mirrors finish
  kill -TERM "$pid"; wait "$pid" || true
  # the curl probes of wait_up are a handful of requests in both runs: they cancel out
  awk '/Collected :/ {print $NF}' "$OUT/mm.$n.log"
}
ir1=$(run "$N1"); ir2=$(run "$N2")
awk -v a="$ir1" -v b="$ir2" -v n1="$N1" -v n2="$N2" -v row="$ROW" -v m="$METHOD" \
  'BEGIN { printf "%s %s: %.0f instructions per request (Ir %d @ %d, %d @ %d)\n", row, m, (b-a)/(n2-n1), a, n1, b, n2 }'
echo "profile: callgrind_annotate $OUT/callgrind.$N2.out"
