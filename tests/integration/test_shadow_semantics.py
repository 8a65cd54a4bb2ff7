#!/usr/bin/env python3
"""test_shadow_semantics — what a Diffy user expects of `shadow`, black box.

Upstreams are small Python servers that answer crafted bodies per path, so
each request is one comparison case; its outcome is read from the request
log's `shadow` entry (DESIGN.md §7) and checked against the admin view and
`modelmux_shadow_total`, which must agree with it.

  1. the comparison rules at their edges: tolerance |a-b| <= t*max(1,|a|,|b|),
     1 vs 1.0, key order, array order, ignore pointers (nested, indices,
     ~0/~1, missing paths, subtrees), non-JSON bytes, status, empty and
     chunked bodies, and the secondary's noise;
  2. a primary that fails or times out leaves nothing to compare: its
     mirrors are `error` in the log, the metrics and the view alike (they
     were counted `mismatch` by the core and not at all by the view);
  3. stopping (SIGTERM) lets mirrors in flight finish or time out, and logs
     their requests (their lines used to be lost), also when the drain
     timeout cuts them (they end as errors);
  4. mirrors not sent (max_inflight, max_body_bytes) are `dropped` in the
     admin view too (it used to leave them out: a shadow that compared
     nothing under load gave no reason).
"""
import http.client
import json
import signal
import threading
import time

import mmtest


class CraftedUpstream(mmtest.PyUpstream):
    """answer(path) -> {"status", "body" (str), "chunked", "delay", "hang"}."""

    def __init__(self, answer):
        self.answer = answer
        self.seen = 0
        up = self

        class Handler(mmtest.QuietHandler):
            wbufsize = 65536  # one write per answer: no delayed-ACK stalls

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                up.seen += 1
                r = up.answer(self.path)
                if r.get("hang"):
                    time.sleep(r["hang"])
                    self.close_connection = True
                    return
                if r.get("delay"):
                    time.sleep(r["delay"])
                body = r.get("body", "").encode()
                self.send_response(r.get("status", 200))
                self.send_header("Content-Type", "application/json")
                if r.get("chunked"):
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 3):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i:i + 3]), body[i:i + 3]))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        super().__init__(Handler)


def log_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ShadowSemantics(mmtest.MMTestCase):
    def upstream(self, answer):
        up = CraftedUpstream(answer)
        self.addCleanup(up.close)
        return up

    def start(self, ups, exp, up_opts=None, **extra):
        port, admin = mmtest.free_port(), mmtest.free_port()
        base = {"name": "sh", "match": {"path_prefix": "/"}, "policy": "shadow",
                "primary": "primary", "shadows": ["cand"]}
        base.update(exp)
        self.log = self.cluster.path("requests.jsonl")
        upstreams = {n: dict({"url": "http://127.0.0.1:%d" % u.port}, **(up_opts or {}))
                     for n, u in ups.items()}
        cfg = mmtest.base_config(port, upstreams, [base], admin_port=admin,
                                 log={"requests": self.log, "sample": 1.0}, **extra)
        return self.cluster.modelmux(cfg, "--seed", 1)

    def view(self, mm):
        st, _, body = mmtest.request(mm.admin_port, "GET", "/experiments/sh")
        self.assertEqual(st, 200)
        return json.loads(body)["policy_state"]

    def arms(self, mm):
        st, _, body = mmtest.request(mm.admin_port, "GET", "/experiments/sh")
        self.assertEqual(st, 200)
        return {a["name"]: (a["requests"], a["errors"]) for a in json.loads(body)["arms"]}

    def outcomes(self, mm):
        got = mmtest.metric_samples(mm.admin_port, "modelmux_shadow_total", "arm", "outcome")
        return {k: v for k, v in got.items() if v}

    # Each case: (primary answer, candidate answer, secondary answer or None,
    # expected candidate outcome). Tolerance 0.01; ignored: see IGNORE.
    IGNORE = ["/m/lat", "/arr/1/d", "/a~1b", "/c~0d", "/no/such/path", "/dbg"]
    CASES = {
        "tol_at_edge": ('{"x":1.0}', '{"x":1.01}', None, "match"),  # 0.01 <= 0.01*1.01
        "tol_floor_1": ('{"x":0}', '{"x":0.01}', None, "match"),  # 0.01 <= 0.01*max(1,..)
        "tol_past_floor": ('{"x":0}', '{"x":0.0101}', None, "mismatch"),
        "tol_relative": ('{"x":1000}', '{"x":1010}', None, "match"),  # 10 <= 10.1
        "tol_past_relative": ('{"x":1000}', '{"x":1010.2}', None, "mismatch"),  # 10.2 > 10.102
        "int_vs_real": ('{"x":1}', '{"x":1.0}', None, "match"),
        "int_vs_exponent": ('{"x":100}', '{"x":1e2}', None, "match"),
        "key_order": ('{"a":1,"b":[1,2]}', '{"b":[1,2],"a":1}', None, "match"),
        "array_order": ('{"a":[1,2]}', '{"a":[2,1]}', None, "mismatch"),
        "ignored_nested": ('{"m":{"lat":1,"v":1}}', '{"m":{"lat":2,"v":1}}', None, "match"),
        "ignored_index": ('{"arr":[{"d":1},{"d":1}]}', '{"arr":[{"d":1},{"d":2}]}', None, "match"),
        "other_index": ('{"arr":[{"d":1},{"d":1}]}', '{"arr":[{"d":2},{"d":1}]}', None, "mismatch"),
        "ignored_escapes": ('{"a/b":1,"c~d":1}', '{"a/b":2,"c~d":2}', None, "match"),
        "ignored_subtree": ('{"dbg":{"a":[1,2]},"v":1}', '{"dbg":"x","v":1}', None, "match"),
        "ignored_absent": ('{"dbg":{"a":1},"v":1}', '{"v":1}', None, "match"),
        "text_equal": ("hello", "hello", None, "match"),
        "text_differs": ("hello", "hellp", None, "mismatch"),
        "json_whitespace": ('{"a":1}', '{ "a" : 1 }\n', None, "match"),
        "status_differs": ('{"a":1}', ("201", '{"a":1}'), None, "mismatch"),
        "empty_both": ("", "", None, "match"),
        "empty_vs_json": ("", "{}", None, "mismatch"),
        "chunked_equal": ('{"a":[1,2,3],"b":"xyz"}', ("chunked", '{"a":[1,2,3],"b":"xyz"}'), None,
                          "match"),
        "null_vs_absent": ('{"a":null}', "{}", None, "mismatch"),
        "bool_vs_number": ('{"a":true}', '{"a":1}', None, "mismatch"),
        "noise_excused": ('{"ts":1,"v":1}', '{"ts":3,"v":1}', '{"ts":2,"v":1}', "match"),
        "stable_field_differs": ('{"ts":1,"v":1}', '{"ts":1,"v":2}', '{"ts":2,"v":1}', "mismatch"),
        "noise_and_real": ('{"ts":1,"v":1}', '{"ts":3,"v":2}', '{"ts":2,"v":1}', "mismatch"),
        "secondary_agrees": ('{"ts":1,"v":1}', '{"ts":3,"v":1}', '{"ts":1,"v":1}', "mismatch"),
    }

    def test_comparison_rules_per_request_and_in_every_view(self):
        names = sorted(self.CASES)

        def answer(col):
            def f(path):
                case = self.CASES[names[int(path.rsplit("/", 1)[1])]]
                a = case[col] if case[col] is not None else case[0]
                if isinstance(a, tuple):
                    return {"chunked": True, "body": a[1]} if a[0] == "chunked" else \
                        {"status": int(a[0]), "body": a[1]}
                return {"body": a}
            return f

        ups = {"primary": self.upstream(answer(0)), "cand": self.upstream(answer(1)),
               "sec": self.upstream(answer(2))}
        # Generous deadlines: the cases are about comparing answers, and the
        # Python upstreams share this process's one interpreter lock with
        # the client, so on a busy CI machine an answer (or even a connect,
        # 500 ms by default) can be slow enough to end a mirror as an error.
        mm = self.start(ups, {"secondary": "sec", "timeout_ms": 20000,
                              "compare": {"json_tolerance": 0.01, "ignore": self.IGNORE}},
                        up_opts={"connect_timeout_ms": 5000, "timeout_ms": 20000})
        for i, name in enumerate(names):
            st, _, _ = mmtest.request(mm.port, "POST", "/case/%d" % i, body="{}",
                                      headers={"X-Request-Id": "case-" + name})
            self.assertEqual(st, 200, name)
        expected = {name: self.CASES[name][3] for name in names}
        want = {("cand", o): float(sum(1 for v in expected.values() if v == o))
                for o in ("match", "mismatch")}
        # Every mirror ends with one outcome; wait for all of them, whichever
        # they are, so a wrong one shows in the comparison below.
        cand_outcomes = lambda: {k: v for k, v in self.outcomes(mm).items() if k[0] == "cand"}
        mmtest.eventually(lambda: sum(cand_outcomes().values()) >= len(names), timeout=30)
        got = cand_outcomes()
        self.assertEqual(got, {k: v for k, v in want.items() if v}, got)
        cand = self.view(mm)["shadows"][0]
        self.assertEqual((cand["matches"], cand["mismatches"], cand["errors"]),
                         (want[("cand", "match")], want[("cand", "mismatch")], 0))
        self.assertEqual(cand["noisy"], 1)  # noise_excused
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(15), 0)
        per_request = {}
        for line in log_lines(self.log):
            if line["request_id"].startswith("case-"):
                per_request[line["request_id"][5:]] = {s["arm"]: s["outcome"] for s in line["shadow"]}
        self.assertEqual({n: o["cand"] for n, o in per_request.items()}, expected)

    def test_a_failed_primary_makes_its_mirrors_errors_everywhere(self):
        ups = {"primary": self.upstream(lambda p: {"hang": 2}),
               "cand": self.upstream(lambda p: {"body": '{"a":1}'})}
        ups_cfg = {"primary": {"url": "http://127.0.0.1:%d" % ups["primary"].port, "timeout_ms": 200},
                   "cand": {"url": "http://127.0.0.1:%d" % ups["cand"].port}}
        port, admin = mmtest.free_port(), mmtest.free_port()
        self.log = self.cluster.path("requests.jsonl")
        cfg = mmtest.base_config(port, {}, [{"name": "sh", "match": {"path_prefix": "/"},
                                             "policy": "shadow", "primary": "primary",
                                             "shadows": ["cand"], "timeout_ms": 3000}],
                                 admin_port=admin, log={"requests": self.log, "sample": 1.0})
        cfg["upstreams"] = ups_cfg
        mm = self.cluster.modelmux(cfg, "--seed", 1)
        for _ in range(3):
            self.assertEqual(mmtest.request(port, "POST", "/x", body="{}")[0], 504)
        got = mmtest.eventually(lambda: (lambda o: o if sum(o.values()) >= 3 else None)(
            self.outcomes(mm)))
        self.assertEqual(got, {("cand", "error"): 3.0})  # not "mismatch"
        cand = self.view(mm)["shadows"][0]
        self.assertEqual((cand["compared"], cand["errors"]), (0, 3))
        # the primary's failures are its errors; the candidate answered
        self.assertEqual(self.arms(mm), {"primary": (3, 3), "cand": (0, 0)})
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(15), 0)
        self.assertEqual([s["outcome"] for line in log_lines(self.log) for s in line["shadow"]],
                         ["error"] * 3)

    def test_a_primary_answer_cut_off_mid_body_makes_its_mirrors_errors(self):
        # The client got the head and part of the body, then a closed
        # connection: the primary failed (its error), and the mirrors have
        # nothing whole to be compared with (not a mismatch).
        primary = mmtest.BreakingServer()
        self.addCleanup(primary.close)
        ups = {"primary": primary, "cand": self.upstream(lambda p: {"body": '{"a":1}'})}
        mm = self.start(ups, {"timeout_ms": 3000})
        for _ in range(3):
            c = http.client.HTTPConnection("127.0.0.1", mm.port, timeout=10)
            c.request("POST", "/x", body="{}")
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            with self.assertRaises(http.client.IncompleteRead):
                r.read()
            c.close()
        got = mmtest.eventually(lambda: (lambda o: o if sum(o.values()) >= 3 else None)(
            self.outcomes(mm)))
        self.assertEqual(got, {("cand", "error"): 3.0})
        cand = self.view(mm)["shadows"][0]
        self.assertEqual((cand["compared"], cand["errors"]), (0, 3))
        self.assertEqual(self.arms(mm), {"primary": (3, 3), "cand": (0, 0)})
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(15), 0)
        lines = log_lines(self.log)
        self.assertEqual([(line["status"], [s["outcome"] for s in line["shadow"]]) for line in lines],
                         [(200, ["error"])] * 3)

    def test_a_shadow_arms_failures_are_its_errors_without_requests(self):
        answers = {"0": {"status": 500, "body": "{}"}, "1": {"hang": 2}, "2": {"body": "{}"}}
        ups = {"primary": self.upstream(lambda p: {"body": "{}"}),
               "cand": self.upstream(lambda p: answers[p.rsplit("/", 1)[1]])}
        mm = self.start(ups, {"timeout_ms": 200})
        for i in range(3):
            self.assertEqual(mmtest.request(mm.port, "POST", "/e/%d" % i, body="{}")[0], 200)
        mmtest.eventually(lambda: sum(self.outcomes(mm).values()) >= 3)
        self.assertEqual(self.outcomes(mm), {("cand", "mismatch"): 1.0, ("cand", "error"): 1.0,
                                             ("cand", "match"): 1.0})
        # the 500 and the mirror past timeout_ms; the match is no error
        self.assertEqual(self.arms(mm), {"primary": (3, 0), "cand": (0, 2)})
        # the mirror past its timeout_ms is a failed exchange of the upstream
        # too, as a routed request's timeout is (it was in no kind at all)
        errs = mmtest.metric_samples(mm.admin_port, "modelmux_upstream_errors_total", "upstream",
                                     "kind")
        self.assertEqual({k: v for k, v in errs.items() if v}, {("cand", "timeout"): 1.0})

    def test_stopping_waits_for_mirrors_in_flight_and_logs_their_requests(self):
        ups = {"primary": self.upstream(lambda p: {"body": '{"a":1}'}),
               "cand": self.upstream(lambda p: {"hang": 5} if p == "/hang" else
                                     {"body": '{"a":1}', "delay": 0.5})}
        mm = self.start(ups, {"timeout_ms": 1000})
        t0 = time.time()
        for path in ("/slow", "/hang"):
            self.assertEqual(mmtest.request(mm.port, "POST", path, body="{}")[0], 200)
        self.assertLess(time.time() - t0, 0.4)  # the primary never waits for a mirror
        mmtest.eventually(lambda: ups["cand"].seen >= 2)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(15), 0)
        self.assertLess(time.time() - t0, 5)  # bounded by the mirrors' timeout_ms
        got = {line["path"]: [s["outcome"] for s in line["shadow"]] for line in log_lines(self.log)}
        self.assertEqual(got, {"/slow": ["match"], "/hang": ["error"]})

    def test_mirrors_cut_by_the_drain_timeout_are_logged_as_errors(self):
        ups = {"primary": self.upstream(lambda p: {"body": '{"a":1}'}),
               "cand": self.upstream(lambda p: {"hang": 8})}
        mm = self.start(ups, {"timeout_ms": 20000},
                        limits={"drain_timeout_ms": 300})
        for path in ("/a", "/b"):
            self.assertEqual(mmtest.request(mm.port, "POST", path, body="{}")[0], 200)
        mmtest.eventually(lambda: ups["cand"].seen >= 2)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(15), 0)
        lines = log_lines(self.log)
        got = {line["path"]: [(s["arm"], s["status"], s["outcome"]) for s in line["shadow"]]
               for line in lines}
        # Every request is logged (DESIGN.md §7), those whose mirrors the
        # drain timeout cut included: their mirrors ended as errors.
        self.assertEqual(got, {"/a": [("cand", 0, "error")], "/b": [("cand", 0, "error")]})
        self.assertIn("mirrors still in flight end as errors", mm.log())

    def test_a_log_opened_by_a_reload_while_mirrors_are_in_flight(self):
        # A request answered while no log was open gets no line, also when a
        # reload opens the log before its mirrors end: its line came out with
        # bytes_in 0, bytes_out 0 and the mirror's end as its arrival time.
        ups = {"primary": self.upstream(lambda p: {"body": '{"a":1}'}),
               "cand": self.upstream(lambda p: {"body": '{"a":1}', "delay": 1.0})}
        port, admin = mmtest.free_port(), mmtest.free_port()
        base = {"name": "sh", "match": {"path_prefix": "/"}, "policy": "shadow",
                "primary": "primary", "shadows": ["cand"], "timeout_ms": 5000}
        cfg = mmtest.base_config(port, {n: u.port for n, u in ups.items()}, [base],
                                 admin_port=admin)
        mm = self.cluster.modelmux(cfg, "--seed", 1)
        self.assertEqual(mmtest.request(port, "POST", "/early", body="1234567")[0], 200)
        mmtest.eventually(lambda: ups["cand"].seen >= 1)
        log = self.cluster.path("requests.jsonl")
        cfg["log"] = {"requests": log}
        with open(mm.config_path, "w") as f:
            json.dump(cfg, f)
        st, _, body = mmtest.request(admin, "POST", "/reload")
        self.assertEqual(st, 200, body)
        t0 = time.time()
        self.assertEqual(mmtest.request(port, "POST", "/late", body="1234567")[0], 200)
        mmtest.eventually(lambda: any(l["path"] == "/late" for l in log_lines(log)), timeout=10)
        lines = log_lines(log)
        self.assertEqual([l["path"] for l in lines], ["/late"])
        self.assertEqual((lines[0]["bytes_in"], lines[0]["bytes_out"]), (7, 7))
        self.assertEqual([s["outcome"] for s in lines[0]["shadow"]], ["match"])
        ts = lines[0]["ts"]  # the arrival, not the mirror's end a second later
        arrival = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        self.assertLess(abs(arrival + float("0" + ts[19:-1]) - t0), 0.5, ts)

    def test_dropped_mirrors_are_in_the_view_as_in_the_metrics_and_the_log(self):
        ups = {"primary": self.upstream(lambda p: {"body": '{"a":1}'}),
               "cand": self.upstream(lambda p: {"body": '{"a":1}', "delay": 1.2})}
        mm = self.start(ups, {"max_inflight": 2, "max_body_bytes": 10, "timeout_ms": 3000})
        # Bodies of 0 and 10 bytes are mirrored, larger ones are not.
        for n in (0, 10, 11, 5000):
            self.assertEqual(mmtest.request(mm.port, "POST", "/b", body="x" * n)[0], 200)
        # Two mirrors are still in flight (1.2 s): all six of these are dropped.
        threads = [threading.Thread(target=mmtest.request, args=(mm.port, "POST", "/c"),
                                    kwargs={"body": "{}"}) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = mmtest.eventually(lambda: (lambda o: o if o.get(("cand", "match"), 0) + o.get(("cand", "error"), 0) >= 2 else None)(
            self.outcomes(mm)))
        self.assertEqual(got, {("cand", "match"): 2.0, ("cand", "dropped"): 8.0})
        cand = self.view(mm)["shadows"][0]
        self.assertEqual((cand["compared"], cand["dropped"]), (2, 8))
        # reset forgets it, like the rest of the view (the counter stays).
        st, _, _ = mmtest.request(mm.admin_port, "POST", "/experiments/sh/reset")
        self.assertEqual(st, 200)
        cand = mmtest.eventually(lambda: (lambda c: c if c["compared"] == 0 else None)(
            self.view(mm)["shadows"][0]))
        self.assertEqual(cand["dropped"], 0)
        self.assertEqual(self.outcomes(mm)[("cand", "dropped")], 8.0)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(15), 0)
        outcomes = [s["outcome"] for line in log_lines(self.log) for s in line["shadow"]]
        self.assertEqual(sorted(outcomes), ["dropped"] * 8 + ["match"] * 2)


if __name__ == "__main__":
    mmtest.main()
