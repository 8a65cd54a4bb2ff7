#!/usr/bin/env python3
"""test_request_log — request log fields a log reader relies on (DESIGN.md §7,
docs/admin-metrics-log.md "Request log"), black box.

  1. with log.bodies, a body above 64 KiB is logged as exactly its first
     64 KiB with "body_truncated": true, whether it came with a
     Content-Length or chunked (the read that crossed 64 KiB used to be left
     out, so the line held some 65 400 bytes);
  2. bytes_out of modelmux's own answer (502, 504) counts its JSON body in a
     shadow experiment as in any other (the shadow runtime's line said 0);
  3. an interleave experiment's lines carry the request body with log.bodies
     (the fan-out took the body, and every line had "body_b64": "" with
     "body_truncated": true, so a replay sent empty bodies);
  4. a shadow experiment's request whose body is too large to mirror is
     still logged with its body (its first 64 KiB): the line had an empty
     body_b64 whenever the body was over the shadow's max_body_bytes.
  5. SIGTERM exits, with status 0 and within about drain_timeout_ms, even
     when a write to the log never returns (a FIFO whose reader stopped
     reading): it used to wait for that write forever.
  6. a client that goes away in the middle of a request head (alone, or
     pipelined behind a whole request) is logged, as 499 with the target
     its request line had: it was left out, while the same head held until
     header_timeout_ms was logged (408).
  7. a reload applies the log's settings: a new log.requests path (new
     lines go there, the old file keeps what it had), log.sample and
     log.bodies. They used to be read at start only, and a reload that
     changed them was silently ignored; a path that cannot be opened keeps
     the previous file and is tried again at the next reload.
  8. a reload turns the log on (log.requests set where it was null) and off
     (null): lines start and stop with the reload, and a path that cannot be
     opened is logged, serves on, and is opened by a later reload. These
     used to wait for the next start.
  9. SIGTERM still exits 0 within about drain_timeout_ms when the log a
     reload turned off is stuck on a write that never returns.
 10. a head refused before it was read whole (431, 400) is logged with its
     arrival to the microsecond: lines of requests sent one after another
     are in the same order by ts (it came from the loop's coarse clock, up
     to a tick early, before the line of the request answered before it).
 11. rotation: SIGUSR1 reopens the log and re-reads nothing (it killed
     modelmux); a SIGHUP whose config is rejected still reopens it (the
     lines went on into the renamed file); with --workers, the parent passes
     SIGUSR1 on and every worker reopens. No line is lost or written twice.
"""
import base64
import datetime
import json
import os
import signal
import socket
import subprocess
import time
import types

import mmtest

KIB64 = 64 * 1024


def champion_logged(c, admin_port=None, limits=None, **log):
    """modelmux in cluster c in front of one model server, every /v1/
    request routed to it, the request log at c's requests.jsonl with `log`
    settings (and `limits`, if given): its data port, log path, config and
    process (.port, .log, .cfg, .proc)."""
    champ = c.model_server("champion")
    port = mmtest.free_port()
    path = c.path("requests.jsonl")
    extra = {"limits": limits} if limits else {}
    cfg = mmtest.base_config(port, {"champion": champ.port}, [
        {"name": "ab", "match": {"path_prefix": "/v1/"}, "policy": "ab",
         "arms": {"champion": 1}}], admin_port=admin_port, log=dict(requests=path, **log),
        **extra)
    return types.SimpleNamespace(port=port, log=path, cfg=cfg, proc=c.modelmux(cfg))

def read_log(path, n):
    """The log's lines, in file order, once it has at least n."""
    def read():
        try:
            with open(path) as f:
                lines = [json.loads(line) for line in f]
        except FileNotFoundError:
            return None
        return lines if len(lines) >= n else None
    return mmtest.eventually(read, timeout=10)


def log_lines(path, n):
    return {line["request_id"]: line for line in read_log(path, n)}


class LoggedBodies(mmtest.MMTestCase):
    def test_body_over_64_kib_is_logged_as_its_first_64_kib(self):
        m = champion_logged(self.cluster, bodies=True)
        port, log = m.port, m.log
        body = bytes((i * 7 + i // 251) % 256 for i in range(200000))
        sent = {}
        for rid, size in (("cl-200000", 200000), ("cl-70000", 70000), ("cl-65536", KIB64)):
            st, _, _ = mmtest.request(port, "POST", "/v1/rank", body[:size],
                                      {"X-Request-Id": rid})
            self.assertEqual(st, 200)
            sent[rid] = size
        # chunked, 10 000-byte chunks: 64 KiB falls inside the seventh
        chunks = b"".join(b"%x\r\n%s\r\n" % (10000, body[i:i + 10000])
                          for i in range(0, 100000, 10000))
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"X-Request-Id: chunked-100000\r\nConnection: close\r\n\r\n" + chunks +
                  b"0\r\n\r\n")
        while s.recv(65536):
            pass
        s.close()
        sent["chunked-100000"] = 100000

        lines = log_lines(log, len(sent))
        for rid, size in sent.items():
            line = lines[rid]
            logged = base64.b64decode(line["body_b64"])
            self.assertEqual(line["bytes_in"], size, rid)
            self.assertEqual(len(logged), min(size, KIB64), rid)
            self.assertEqual(logged, body[:len(logged)], rid)
            self.assertEqual(line.get("body_truncated"), True if size > KIB64 else None, rid)


    def test_a_body_read_and_dropped_before_a_404_is_logged(self):
        m = champion_logged(self.cluster, bodies=True)
        st, _, _ = mmtest.request(m.port, "POST", "/nothere", b"hello-404",
                                  {"X-Request-Id": "no-route-body"})
        self.assertEqual(st, 404)
        line = log_lines(m.log, 1)["no-route-body"]
        self.assertEqual((line["bytes_in"], base64.b64decode(line["body_b64"])), (9, b"hello-404"))
        self.assertNotIn("body_truncated", line)


class ShadowOwnAnswers(mmtest.MMTestCase):
    def test_bytes_out_of_a_502_counts_its_body_in_a_shadow_experiment(self):
        c = self.cluster
        chal = c.model_server("challenger")
        port = mmtest.free_port()
        dead = mmtest.free_port()  # nothing listens: the primary is a 502
        log = c.path("requests.jsonl")
        cfg = mmtest.base_config(port, {"champion": dead, "challenger": chal.port}, [
            {"name": "sh", "match": {"path_prefix": "/v1/sh"}, "policy": "shadow",
             "primary": "champion", "shadows": ["challenger"]},
            {"name": "ab", "match": {"path_prefix": "/v1/ab"}, "policy": "ab",
             "arms": {"champion": 1}}], log={"requests": log})
        c.modelmux(cfg)
        got = {}
        for path in ("/v1/sh", "/v1/ab"):
            st, hdrs, data = mmtest.request(port, "GET", path)
            self.assertEqual(st, 502)
            got[hdrs["x-request-id"]] = len(data)
        lines = log_lines(log, 2)
        for rid, size in got.items():
            self.assertEqual((lines[rid]["status"], lines[rid]["bytes_out"]), (502, size),
                             lines[rid])
        sh = [lines[rid] for rid in got if lines[rid]["experiment"] == "sh"][0]
        self.assertEqual([(m["arm"], m["outcome"]) for m in sh["shadow"]],
                         [("challenger", "error")])


class InterleavedBodies(mmtest.MMTestCase):
    def test_interleaved_request_bodies_are_logged(self):
        c = self.cluster
        a = c.model_server("a", "--list", "3")
        b = c.model_server("b", "--list", "3", "--seed", "4")
        port = mmtest.free_port()
        log = c.path("requests.jsonl")
        cfg = mmtest.base_config(port, {"a": a.port, "b": b.port}, [
            {"name": "il", "match": {"path_prefix": "/v1/rank"}, "policy": "interleave",
             "arms": ["a", "b"], "list_pointer": "/items"}],
            log={"requests": log, "bodies": True})
        c.modelmux(cfg)
        small = b'{"query": "shoes", "user": 42}'
        big = bytes(i % 251 for i in range(100000))
        for rid, body in (("small", small), ("big", big)):
            st, hdrs, _ = mmtest.request(port, "POST", "/v1/rank", body, {"X-Request-Id": rid})
            self.assertEqual((st, hdrs["x-modelmux-arm"]), (200, "interleave"))
        lines = log_lines(log, 2)
        self.assertEqual(base64.b64decode(lines["small"]["body_b64"]), small)
        self.assertNotIn("body_truncated", lines["small"])
        self.assertEqual(base64.b64decode(lines["big"]["body_b64"]), big[:KIB64])
        self.assertIs(lines["big"]["body_truncated"], True)
        self.assertEqual(lines["big"]["bytes_in"], len(big))


class ShadowUnmirroredBodies(mmtest.MMTestCase):
    def test_a_body_too_large_to_mirror_is_still_logged(self):
        c = self.cluster
        a = c.model_server("a")
        b = c.model_server("b")
        port = mmtest.free_port()
        admin = mmtest.free_port()
        log = c.path("requests.jsonl")
        cfg = mmtest.base_config(port, {"champion": a.port, "challenger": b.port}, [
            {"name": "sh", "match": {"path_prefix": "/v1/sh"}, "policy": "shadow",
             "primary": "champion", "shadows": ["challenger"]},
            {"name": "small", "match": {"path_prefix": "/v1/small"}, "policy": "shadow",
             "primary": "champion", "shadows": ["challenger"], "max_body_bytes": 10}],
            admin_port=admin, log={"requests": log, "bodies": True})
        c.modelmux(cfg)
        big = bytes(i % 251 for i in range(2 * 1024 * 1024))  # over the default 1 MiB
        cases = {"big": ("/v1/sh", big), "fits": ("/v1/small", b"0123456789"),
                 "over": ("/v1/small", b"x" * 50)}
        for rid, (path, body) in cases.items():
            st, _, _ = mmtest.request(port, "POST", path, body, {"X-Request-Id": rid})
            self.assertEqual(st, 200)
        lines = log_lines(log, len(cases))
        for rid, (path, body) in cases.items():
            line = lines[rid]
            self.assertEqual(base64.b64decode(line["body_b64"]), body[:KIB64], rid)
            self.assertEqual(line.get("body_truncated"), True if len(body) > KIB64 else None)
            # the 10-byte body is mirrored (the two models answer differently)
            self.assertEqual([m["outcome"] for m in line["shadow"]],
                             ["mismatch" if rid == "fits" else "dropped"], rid)
        dropped = mmtest.metric_samples(admin, "modelmux_shadow_total", "experiment", "outcome")
        self.assertEqual((dropped[("sh", "dropped")], dropped[("small", "dropped")]), (1, 1))


class HeadCutShort(mmtest.MMTestCase):
    def test_a_client_gone_mid_head_is_logged_as_499(self):
        m = champion_logged(self.cluster)
        port, log = m.port, m.log
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /v1/rank?cut=alone HTTP/1.1\r\nHo")
        s.close()
        # a whole request, then a cut one, then EOF: the first is answered
        answer = mmtest.raw(port, b"GET /v1/rank?whole=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                            b"POST /v1/rank?cut=pipelined HTTP/1.1\r\nHost: x\r\nContent-Le",
                            timeout=10, shutdown=True)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)

        def lines():
            try:
                with open(log) as f:
                    got = {json.loads(line)["path"]: json.loads(line) for line in f}
            except FileNotFoundError:
                return None
            return got if len(got) >= 3 else None
        got = mmtest.eventually(lines, timeout=10)
        self.assertEqual(got["/v1/rank?whole=1"]["status"], 200)
        for path, method in (("/v1/rank?cut=alone", "GET"), ("/v1/rank?cut=pipelined", "POST")):
            line = got[path]
            self.assertEqual((line["method"], line["status"], line["experiment"], line["arm"],
                              line["bytes_in"], line["bytes_out"]),
                             (method, 499, None, None, 0, 0), line)
            self.assertRegex(line["request_id"], "^[0-9a-f]{32}$")


    def test_a_head_not_read_whole_is_timed_from_its_first_byte(self):
        """A 408 lasted header_timeout_ms and a 499 as long as the client
        took to go away: their latency_us and ts say so, from the head's
        first byte, not the moment of the error."""
        m = champion_logged(self.cluster, limits={"header_timeout_ms": 1000})
        port, log = m.port, m.log
        t0 = time.time()
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow.sendall(b"GET /v1/rank?slow=1 HTTP/1.1\r\nHo")
        gone = socket.create_connection(("127.0.0.1", port), timeout=10)
        gone.sendall(b"GET /v1/rank?gone=1 HTTP/1.1\r\nHo")
        time.sleep(0.6)
        gone.close()
        self.assertTrue(slow.recv(4096).startswith(b"HTTP/1.1 408 "))
        slow.close()
        got = {line["path"]: line for line in read_log(log, 2)}
        for path, status, least in (("/v1/rank?slow=1", 408, 1.0), ("/v1/rank?gone=1", 499, 0.6)):
            line = got[path]
            self.assertEqual(line["status"], status, line)
            self.assertGreaterEqual(line["latency_us"], (least - 0.02) * 1e6, line)
            ts = datetime.datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            self.assertLess(abs(ts - t0), 0.5, line)  # when it began, not when it ended

    def test_a_refused_head_is_logged_after_the_request_answered_before_it(self):
        """The arrival of a head refused before it was read whole (a 431, a
        400) is to the microsecond, as every other line's: requests sent one
        after another, each answered before the next is sent, are logged in
        that order of ts. It came from the loop's coarse clock, up to a
        clock tick (4 ms) early, and such lines came before the line of the
        request answered before them (1 in 3 did), which a replay, sorting
        by ts, then sends in the wrong order."""
        m = champion_logged(self.cluster, limits={"max_header_bytes": 4096})
        port, log = m.port, m.log
        sent = []
        for i in range(30):
            ok = mmtest.raw(port, b"GET /v1/ok%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                            % i, timeout=10)
            self.assertTrue(ok.startswith(b"HTTP/1.1 200 "), ok)
            if i % 2:
                bad = mmtest.raw(port, b"GET /v1/big%d HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n"
                                 % (i, b"b" * 5000), timeout=10)
                self.assertTrue(bad.startswith(b"HTTP/1.1 431 "), bad)
            else:
                bad = mmtest.raw(port, b"GET /v1/bad%d HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n" % i,
                                 timeout=10)
                self.assertTrue(bad.startswith(b"HTTP/1.1 400 "), bad)
            sent += ["/v1/ok%d" % i, "/v1/%s%d" % ("big" if i % 2 else "bad", i)]
        lines = read_log(log, len(sent))
        self.assertEqual([line["path"] for line in lines if line["path"] in sent], sent)
        by_ts = sorted(lines, key=lambda line: line["ts"])
        self.assertEqual([line["path"] for line in by_ts], [line["path"] for line in lines],
                         [(line["path"], line["ts"]) for line in lines])


class ReloadedSettings(mmtest.MMTestCase):
    def test_a_reload_applies_the_log_path_sample_and_bodies(self):
        c = self.cluster
        admin = mmtest.free_port()
        m = champion_logged(c, admin_port=admin)
        port, first, cfg, mm = m.port, m.log, m.cfg, m.proc
        second = c.path("second/requests.jsonl")

        def send(tag, n=1):
            for i in range(n):
                st, _, _ = mmtest.request(port, "POST", "/v1/rank?%s=%d" % (tag, i), b"abc")
                self.assertEqual(st, 200)

        def reload(log):
            cfg["log"] = log
            c.write_config(cfg, "modelmux.json")
            st, _, body = mmtest.request(admin, "POST", "/reload")
            self.assertEqual(st, 200, body)


        send("before")
        self.assertEqual([l["path"] for l in read_log(first, 1)], ["/v1/rank?before=0"])
        reload({"requests": second, "bodies": True})
        send("moved")
        line, = read_log(second, 1)
        self.assertEqual((line["path"], base64.b64decode(line["body_b64"])),
                         ("/v1/rank?moved=0", b"abc"))
        reload({"requests": second, "sample": 0})
        send("unsampled", 5)
        reload({"requests": second})
        send("sampled")
        got = [l["path"] for l in read_log(second, 2)]
        self.assertEqual(got, ["/v1/rank?moved=0", "/v1/rank?sampled=0"])
        self.assertNotIn("body_b64", read_log(second, 2)[1])
        with open(first) as f:
            self.assertEqual([json.loads(l)["path"] for l in f], ["/v1/rank?before=0"])
        # a path that cannot be opened: the previous file goes on
        blocker = c.path("blocker")
        with open(blocker, "w"):
            pass
        reload({"requests": os.path.join(blocker, "requests.jsonl")})
        send("kept")
        self.assertEqual([l["path"] for l in read_log(second, 3)][2], "/v1/rank?kept=0")
        mmtest.eventually(lambda: "reopen failed" in mm.log(), timeout=10)


def log_counter(admin, what):
    """modelmux_requestlog_<what>_total from /metrics (None: not exported)."""
    name = "modelmux_requestlog_%s_total " % what
    text = mmtest.request(admin, "GET", "/metrics")[2].decode()
    got = [float(l[len(name):]) for l in text.splitlines() if l.startswith(name)]
    return got[0] if got else None


class ReloadedOnOff(mmtest.MMTestCase):
    def test_a_reload_turns_the_log_on_and_off(self):
        c = self.cluster
        admin = mmtest.free_port()
        m = champion_logged(c, admin_port=admin)
        port, path, cfg, mm = m.port, m.log, m.cfg, m.proc

        def send(tag, n=1):
            for i in range(n):
                self.assertEqual(mmtest.request(port, "GET", "/v1/rank?%s=%d" % (tag, i))[0], 200)

        def reload(requests):
            cfg["log"] = {"requests": requests}
            c.write_config(cfg, "modelmux.json")
            st, _, body = mmtest.request(admin, "POST", "/reload")
            self.assertEqual(st, 200, body)

        send("on")
        read_log(path, 1)
        reload(None)
        self.assertIn("request log: off (the lines in hand are written first)", mm.log())
        send("off", 3)
        blocker = c.path("blocker")
        with open(blocker, "w"):
            pass
        reload(os.path.join(blocker, "requests.jsonl"))  # cannot be opened: serves on
        mmtest.eventually(lambda: "cannot open: Not a directory; its lines are dropped" in mm.log())
        send("unopened", 2)
        reload(path)  # the next reload opens it
        send("again", 2)
        # The counters go on across the three logs: 1 + 2 lines written, the
        # 2 sent while the path could not be opened dropped, that open failed.
        mmtest.eventually(lambda: log_counter(admin, "written") == 3)
        self.assertEqual((log_counter(admin, "dropped"), log_counter(admin, "errors")), (2, 1))
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log())
        with open(path) as f:
            got = [json.loads(line)["path"] for line in f]
        self.assertEqual(got, ["/v1/rank?on=0", "/v1/rank?again=0", "/v1/rank?again=1"])

    def test_a_log_turned_on_by_a_reload_writes_from_then_on(self):
        c = self.cluster
        champ = c.model_server("champion")
        port, admin = mmtest.free_port(), mmtest.free_port()
        path = c.path("later/requests.jsonl")
        cfg = mmtest.base_config(port, {"champion": champ.port}, [
            {"name": "ab", "match": {"path_prefix": "/v1/"}, "policy": "ab",
             "arms": {"champion": 1}}], admin_port=admin)
        mm = c.modelmux(cfg)
        self.assertEqual(mmtest.request(port, "GET", "/v1/rank?before")[0], 200)
        cfg["log"] = {"requests": path, "bodies": True}
        c.write_config(cfg, "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log())
        self.assertIn("request log: on, writing to %s" % path, mm.log())
        self.assertEqual(mmtest.request(port, "POST", "/v1/rank?after", b"xyz")[0], 200)
        line, = read_log(path, 1)
        self.assertEqual((line["path"], base64.b64decode(line["body_b64"])),
                         ("/v1/rank?after", b"xyz"))
        mmtest.eventually(lambda: log_counter(admin, "written") == 1)


class StalledLog(mmtest.MMTestCase):
    def stalled(self):
        """modelmux logging to a FIFO whose reader never reads, with some
        540 KB of lines sent: once the pipe's 64 KiB are full, the log's
        write blocks in libuv's thread pool. (mm, cfg)."""
        c = self.cluster
        champ = c.model_server("champion")
        port = mmtest.free_port()
        fifo = c.path("requests.fifo")
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        cfg = mmtest.base_config(port, {"champion": champ.port}, [
            {"name": "ab", "match": {"path_prefix": "/v1/"}, "policy": "ab",
             "arms": {"champion": 1}}], log={"requests": fifo, "bodies": True},
            limits={"drain_timeout_ms": 500})
        mm = c.modelmux(cfg)
        body = b"x" * 4000
        for _ in range(100):
            self.assertEqual(mmtest.request(port, "POST", "/v1/rank", body)[0], 200)
        return mm, cfg

    def assertStopsWith0(self, mm):
        mm.signal(signal.SIGTERM)
        try:
            status = mm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.fail("modelmux still running 10 s after SIGTERM; log:\n" + mm.log())
        self.assertEqual(status, 0, mm.log())

    def test_sigterm_exits_0_when_a_log_write_never_returns(self):
        mm, _ = self.stalled()
        time.sleep(0.5)  # a flush is due every 200 ms: one is now blocked
        self.assertStopsWith0(mm)
        self.assertIn("request log", mm.log())

    def test_sigterm_exits_0_when_the_log_a_reload_turned_off_is_stuck(self):
        mm, cfg = self.stalled()
        cfg["log"] = {"requests": None}
        self.cluster.write_config(cfg, "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "request log: off" in mm.log())
        self.assertStopsWith0(mm)
        self.assertIn("request log: a write has not returned", mm.log())



def logged_ids(path):
    """The request ids in the file (none if it does not exist)."""
    try:
        with open(path) as f:
            return [json.loads(line)["request_id"] for line in f]
    except FileNotFoundError:
        return []


class Rotation(mmtest.MMTestCase):
    def rotate(self, workers=1):
        """modelmux with a request log, one request "pre" logged, then the
        file renamed: (mm, port, log path, renamed path)."""
        c = self.cluster
        champ = c.model_server("champion")
        port = mmtest.free_port()
        path = c.path("requests.jsonl")
        cfg = mmtest.base_config(port, {"champion": champ.port}, [
            {"name": "ab", "match": {"path_prefix": "/v1/"}, "policy": "ab",
             "arms": {"champion": 1}}], log={"requests": path})
        mm = c.modelmux(cfg, *(["--workers", workers] if workers > 1 else []))
        self.sent = ["pre"]
        self.assertEqual(self.send(port, "pre"), 200)
        read_log(path, 1)
        renamed = path + ".1"
        os.rename(path, renamed)
        return mm, port, path, renamed

    def send(self, port, rid):
        return mmtest.request(port, "GET", "/v1/rank", headers={"X-Request-Id": rid})[0]

    def send_until_in(self, port, path, batch=1, rounds=3):
        """Send batches of requests (each on a connection of its own) until
        `rounds` batches in a row were all logged in `path`, the reopened
        file: lines of a process that did not reopen go on into the renamed
        one. Bounded: 200 batches."""
        in_a_row = 0
        for i in range(200):
            ids = ["post-%d-%d" % (i, j) for j in range(batch)]
            for rid in ids:
                self.assertEqual(self.send(port, rid), 200)
            self.sent += ids
            # every line of the batch is written (somewhere) within 10 s
            mmtest.eventually(lambda: set(ids) <= set(logged_ids(path) +
                                                      logged_ids(path + ".1")), timeout=10)
            in_a_row = in_a_row + 1 if set(ids) <= set(logged_ids(path)) else 0
            if in_a_row == rounds:
                return
        self.fail("the log was not reopened at %s" % path)

    def assertNothingLost(self, path, renamed):
        old, new = logged_ids(renamed), logged_ids(path)
        self.assertIn("pre", old)
        self.assertEqual(sorted(old + new), sorted(self.sent))

    def test_sigusr1_reopens_the_log_and_rereads_nothing(self):
        mm, port, path, renamed = self.rotate()
        with open(mm.config_path, "w") as f:
            f.write("{ broken")  # a re-read would be rejected, and say so
        mm.signal(signal.SIGUSR1)
        self.send_until_in(port, path)
        self.assertTrue(mm.alive(), mm.log())
        self.assertNotIn("reload", mm.log())
        self.assertNothingLost(path, renamed)

    def test_a_rejected_reload_still_reopens_the_log(self):
        mm, port, path, renamed = self.rotate()
        with open(mm.config_path, "w") as f:
            f.write("{ broken")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "reload rejected" in mm.log())
        self.send_until_in(port, path)
        self.assertNothingLost(path, renamed)

    def test_the_workers_parent_passes_sigusr1_on(self):
        mm, port, path, renamed = self.rotate(workers=2)
        mm.signal(signal.SIGUSR1)
        # ten connections a batch: the kernel spreads them over both workers
        self.send_until_in(port, path, batch=10)
        self.assertTrue(mm.alive(), mm.log())
        self.assertNothingLost(path, renamed)


if __name__ == "__main__":
    mmtest.main()
