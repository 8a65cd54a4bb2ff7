#!/usr/bin/env python3
"""feedback_client.py — send reward feedback to modelmux (DESIGN.md §4 Feedback).

What an application does after a prediction: tell modelmux how it went, by the
request id modelmux returned in X-Request-Id. Python 3 standard library only.

  # one reward for the request that served the user
  feedback_client.py --target http://127.0.0.1:8080 --request-id 9f1c... --reward 1
  # a reward for an arm directly (no request id)
  feedback_client.py --experiment recs --arm challenger --reward 0.5
  # an interleave click
  feedback_client.py --request-id 9f1c... --item doc-42
  # many events: JSON lines on stdin (or a file), posted in batches
  printf '%s\\n' '{"request_id":"a1","reward":1}' | feedback_client.py --batch -
  # through the Redis stream PREFIX:feedback instead of HTTP
  feedback_client.py --redis 127.0.0.1:6379 --prefix modelmux --request-id 9f1c... --reward 1
  # ... to a Redis with AUTH (store.username/password) and a database (store.db)
  REDIS_PW=... feedback_client.py --redis 127.0.0.1:6379 --redis-user mm \\
      --redis-password-env REDIS_PW --redis-db 3 --experiment recs --arm champion --reward 1

Over HTTP it prints modelmux's answer per post ({"accepted": N, "unknown": M,
"invalid": K}, or its JSON error) and exits 0 when modelmux applied every
event, 1 when it did not (an event unknown or invalid, a refused post, modelmux
unreachable), 2 on a usage error. Over Redis it prints the stream ids XADD
returned (modelmux applies them when it reads the stream).
"""
import argparse
import json
import math
import os
import socket
import sys
import urllib.error
import urllib.request

FEEDBACK_PATH = "/_modelmux/feedback"


def number(text):
    """A finite reward, as modelmux requires."""
    v = float(text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError("the reward must be a finite number")
    return int(v) if v == int(v) and "." not in text and "e" not in text.lower() else v


def event_from_args(a, usage):
    """The one event the options describe; usage(message) for a usage error
    (argparse's error: exit status 2)."""
    if a.item is not None:
        if a.request_id is None:
            usage("--item needs --request-id")
        if a.reward is not None:  # modelmux counts such an event invalid
            usage("a click (--item) carries no reward: give --item or --reward, not both")
        return {"request_id": a.request_id, "item": a.item}
    if a.reward is None:
        usage("give --reward (or --item for a click, or --batch)")
    if a.request_id is not None:
        return {"request_id": a.request_id, "reward": a.reward}
    if a.experiment is None or a.arm is None:
        usage("give --request-id, or --experiment and --arm")
    return {"experiment": a.experiment, "arm": a.arm, "reward": a.reward}


def not_json_constant(name):
    """json.loads reads NaN, Infinity and -Infinity, which JSON does not
    have: modelmux refuses a post holding one (400), the good events with
    it, so such a line is a bad line like any other."""
    raise ValueError("%s is not a JSON number" % name)


def finite_float(text):
    """A number too large for a double (1e400) reads as inf, and would be
    sent as Infinity: refused the same way."""
    v = float(text)
    if not math.isfinite(v):
        raise ValueError("%s is too large for a number" % text)
    return v


def read_batch(path):
    """JSON objects, one per line; blank lines skipped; a bad line (NaN and
    the infinities included) is fatal with its number (nothing is sent for a
    file that does not parse)."""
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    events = []
    with f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line, parse_constant=not_json_constant,
                                parse_float=finite_float)
            except ValueError as e:
                raise SystemExit("feedback_client: %s:%d: not JSON: %s" % (path, no, e))
            if not isinstance(ev, dict):
                raise SystemExit("feedback_client: %s:%d: not a JSON object" % (path, no))
            events.append(ev)
    return events


def post(target, body, timeout):
    req = urllib.request.Request(target.rstrip("/") + FEEDBACK_PATH,
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def resp_command(*args):
    """A Redis command in RESP (what redis-cli sends)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def read_reply(f):
    line = f.readline()
    if not line:
        raise SystemExit("feedback_client: Redis closed the connection")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"-":
        raise SystemExit("feedback_client: Redis: %s" % rest.decode())
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    return rest.decode()


def xadd_all(addr, prefix, events, timeout, user=None, password=None, db=0):
    host, _, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # [::1]:6379, as URLs write IPv6
        host = host[1:-1]
    s = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
    f = s.makefile("rb")
    ids = []
    try:
        if password:  # as the modelmux store does: AUTH [user] password, then SELECT
            s.sendall(resp_command("AUTH", *([user] if user else []), password))
            read_reply(f)
        if db:
            s.sendall(resp_command("SELECT", db))
            read_reply(f)
        for ev in events:
            fields = []
            for k in ("request_id", "experiment", "arm", "reward", "item"):
                if k in ev:
                    fields += [k, json.dumps(ev[k]) if k == "reward" else str(ev[k])]
            s.sendall(resp_command("XADD", prefix + ":feedback", "*", *fields))
            ids.append(read_reply(f))
    finally:
        s.close()
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description="Send reward feedback to modelmux.")
    p.add_argument("--target", default="http://127.0.0.1:8080",
                   help="modelmux's data listener (default %(default)s)")
    p.add_argument("--request-id", help="the X-Request-Id modelmux returned")
    p.add_argument("--reward", type=number, help="a finite number ([0, 1] for bernoulli)")
    p.add_argument("--experiment", help="with --arm: credit an arm directly")
    p.add_argument("--arm")
    p.add_argument("--item", help="interleave: the clicked item's id")
    p.add_argument("--batch", metavar="FILE", help="JSON lines of events ('-': stdin)")
    p.add_argument("--batch-size", type=int, default=500, help="events per post (default 500)")
    p.add_argument("--redis", metavar="HOST:PORT",
                   help="write to the Redis stream PREFIX:feedback instead of posting "
                   "(an IPv6 address in brackets: [::1]:6379)")
    p.add_argument("--prefix", default="modelmux", help="the store's Redis prefix")
    p.add_argument("--redis-user", help="ACL user name for AUTH (needs a password)")
    p.add_argument("--redis-password-env", metavar="VAR",
                   help="environment variable holding the Redis password (kept off the "
                        "command line, where ps would show it)")
    p.add_argument("--redis-db", type=int, default=0, help="database number (SELECT)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per post")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch-size must be at least 1")
    try:
        events = read_batch(a.batch) if a.batch else [event_from_args(a, p.error)]
    except OSError as e:
        print("feedback_client: cannot read %s: %s" % (a.batch, e.strerror or e), file=sys.stderr)
        return 1
    if not events:
        print("feedback_client: no events", file=sys.stderr)
        return 0
    password = None
    if a.redis_password_env:
        password = os.environ.get(a.redis_password_env)
        if not password:
            p.error("the environment variable %s is not set or empty" % a.redis_password_env)
    if a.redis_user and not password:
        p.error("--redis-user needs --redis-password-env")
    if a.redis and not a.redis.rpartition(":")[2].isdigit():
        p.error("--redis takes HOST:PORT, got %r" % a.redis)
    if a.redis:
        try:
            for stream_id in xadd_all(a.redis, a.prefix, events, a.timeout, a.redis_user,
                                      password, a.redis_db):
                print(stream_id)
        except OSError as e:
            print("feedback_client: cannot reach redis %s: %s" % (a.redis, e), file=sys.stderr)
            return 1
        return 0
    ok = True
    if not a.batch:
        chunks = [events[0]]
    else:
        chunks = [{"events": events[i:i + a.batch_size]}
                  for i in range(0, len(events), a.batch_size)]
    for body in chunks:
        sent = len(body.get("events", [body]))
        try:
            status, text = post(a.target, body, a.timeout)
        except OSError as e:
            print("feedback_client: cannot reach %s: %s" % (a.target, e), file=sys.stderr)
            return 1
        print(text)
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {}
        if status != 202:
            print("feedback_client: refused (%d)" % status, file=sys.stderr)
            ok = False
        elif answer.get("accepted") != sent:
            print("feedback_client: %s of %d events not applied (unknown %s, invalid %s)" %
                  (sent - answer.get("accepted", 0), sent, answer.get("unknown"),
                   answer.get("invalid")), file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
