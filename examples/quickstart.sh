#!/usr/bin/env bash
# examples/quickstart.sh — a config's whole stack in the foreground, to try
# things by hand: one example model server per upstream of the config (on the
# upstream's loopback port, named after it) and modelmux. With the default
# config/modelmux.json: champion on 127.0.0.1:7001, challenger on 7002,
# modelmux on 8080 (admin 9090). Each model server answers a score and a
# ranked list of 10 items (for interleave configs). Ctrl-C (or SIGTERM) stops them all, by PID.
# Build first (scripts/demo or scripts/test do; or
# cmake -S . -B build && cmake --build build).
#
#   examples/quickstart.sh                          # config/modelmux.json
#   examples/quickstart.sh -c config/thompson.json  # any config
#
# Then, in another shell (default config):
#   curl -si -X POST 127.0.0.1:8080/v1/rank -H 'X-User-Id: 42' -d '{"q":"shoes"}'
#   examples/feedback_client.py --request-id <X-Request-Id from above> --reward 1
#   curl -s 127.0.0.1:9090/experiments | python3 -m json.tool
#   curl -s 127.0.0.1:9090/metrics | grep modelmux_requests_total
# Env: MM_BUILD (default build/) — where modelmux and model_server are.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MM_BUILD:-$ROOT/build}
CONFIG=$ROOT/config/modelmux.json
if [ "${1:-}" = "-c" ] && [ -n "${2:-}" ]; then CONFIG=$2; fi
for bin in modelmux model_server; do
    [ -x "$BUILD/$bin" ] || { echo "quickstart: $BUILD/$bin is not built (run scripts/demo or build with cmake)" >&2; exit 2; }
done
"$BUILD/modelmux" --check -c "$CONFIG" >/dev/null || exit 1

# "NAME PORT" per upstream on a loopback address (others are left alone).
UPSTREAMS=$(python3 - "$CONFIG" <<'PY'
import json, sys, urllib.parse
for name, up in json.load(open(sys.argv[1]))["upstreams"].items():
    u = urllib.parse.urlsplit(up["url"])
    if u.hostname in ("127.0.0.1", "localhost", "::1"):
        print(name, u.port or 80)
    else:
        print("quickstart: upstream %s is not on this machine (%s): not started" % (name, up["url"]),
              file=sys.stderr)
PY
)
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
while read -r name port; do
    if port_busy "$port"; then echo "quickstart: 127.0.0.1:$port ($name) is in use" >&2; exit 1; fi
done <<<"$UPSTREAMS"

PIDS=()
stop() {
    trap - INT TERM EXIT
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

cd "$ROOT" # the config's request log path (logs/requests.jsonl) is relative
score=0.73 # the first upstream (usually the champion) scores higher
while read -r name port; do
    [ -n "$name" ] || continue
    "$BUILD/model_server" --port "$port" --name "$name" --score "$score" --latency-ms 2 --list 10 &
    PIDS+=($!)
    echo "quickstart: model server $name on 127.0.0.1:$port (pid $!)"
    score=0.41
done <<<"$UPSTREAMS"
"$BUILD/modelmux" -c "$CONFIG" &
PIDS+=($!)
echo "quickstart: modelmux with $CONFIG (pid $!); Ctrl-C stops everything"
# Until one of them ends, or a signal.
wait -n "${PIDS[@]}" || true
echo "quickstart: a process ended; stopping the others" >&2
