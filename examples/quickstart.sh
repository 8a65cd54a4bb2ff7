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
# modelmux runs in the repository's root (the examples' request log path,
# logs/requests.jsonl, is relative): a relative path in your config, such as
# log.requests, is relative to it too. The config's own path may be relative
# to where you are. Exit status: 0 after Ctrl-C or SIGTERM; 2 for a usage
# error or no build; 1 for a bad config or a model port in use, or when a
# process ended on its own (modelmux failed to start, say) — then its status,
# if it was not 0.
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
usage() { echo "quickstart: $1 (usage: examples/quickstart.sh [-c CONFIG])" >&2; exit 2; }
if [ $# -gt 0 ]; then
    [ "$1" = "-c" ] || usage "unknown argument '$1'"
    [ -n "${2:-}" ] || usage "-c needs a config file"
    [ $# -eq 2 ] || usage "unexpected argument '$3'"
    # absolute, as modelmux runs in the repository's root (below)
    CONFIG=$(realpath -- "$2" 2>/dev/null) || { echo "quickstart: $2: no such file" >&2; exit 1; }
fi
for bin in modelmux model_server; do
    [ -x "$BUILD/$bin" ] || { echo "quickstart: $BUILD/$bin is not built (run scripts/demo or build with cmake)" >&2; exit 2; }
done
"$BUILD/modelmux" --check -c "$CONFIG" >/dev/null || exit 1

# "NAME HOST PORT" per upstream on a loopback address (others are left alone);
# localhost is taken as 127.0.0.1.
UPSTREAMS=$(python3 - "$CONFIG" <<'PY'
import json, sys, urllib.parse
for name, up in json.load(open(sys.argv[1]))["upstreams"].items():
    u = urllib.parse.urlsplit(up["url"])
    if u.hostname in ("127.0.0.1", "localhost", "::1"):
        print(name, "::1" if u.hostname == "::1" else "127.0.0.1", u.port or 80)
    else:
        print("quickstart: upstream %s is not on this machine (%s): not started" % (name, up["url"]),
              file=sys.stderr)
PY
)
port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
addr() { if [ "$1" = ::1 ]; then echo "[::1]:$2"; else echo "$1:$2"; fi; }
while read -r name host port; do
    [ -n "$name" ] || continue
    if port_busy "$host" "$port"; then echo "quickstart: $(addr "$host" "$port") ($name) is in use" >&2; exit 1; fi
done <<<"$UPSTREAMS"

PIDS=()
stop() {
    # A second Ctrl-C or SIGTERM while stopping (a supervisor repeating
    # itself) is ignored, not fatal: every child is still stopped by PID and
    # waited for, and the exit status stays 0. (Resetting INT and TERM to
    # their default here made such a signal kill the script: 143, with
    # modelmux left draining on its own.)
    trap '' INT TERM
    trap - EXIT
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

cd "$ROOT" # the config's request log path (logs/requests.jsonl) is relative
score=0.73 # the first upstream (usually the champion) scores higher
while read -r name host port; do
    [ -n "$name" ] || continue
    "$BUILD/model_server" --host "$host" --port "$port" --name "$name" --score "$score" \
        --latency-ms 2 --list 10 &
    PIDS+=($!)
    echo "quickstart: model server $name on $(addr "$host" "$port") (pid $!)"
    score=0.41
done <<<"$UPSTREAMS"
"$BUILD/modelmux" -c "$CONFIG" &
PIDS+=($!)
echo "quickstart: modelmux with $CONFIG (pid $!); Ctrl-C stops everything"
# Until one of them ends, or a signal (its trap exits 0).
rc=0
wait -n "${PIDS[@]}" || rc=$?
echo "quickstart: a process ended (status $rc); stopping the others" >&2
exit $((rc != 0 ? rc : 1))
