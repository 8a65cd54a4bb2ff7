"""The example scripts of examples/ (DESIGN.md §1), run as a user runs them.

  1. examples/quickstart.sh starts one model server per upstream of a config
     and modelmux, serves, and on SIGTERM stops all of them (by PID).
  2. examples/feedback_client.py posts a reward for a request id, a reward
     for an arm, an interleave click and a batch from stdin; modelmux counts
     each; a bad batch line is reported with its number and nothing is sent;
     an event modelmux does not apply, or no modelmux, exits 1.
  3. feedback_client.py --redis writes to the feedback stream, which
     modelmux consumes (with the suite's Redis).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import mmtest

EXAMPLES = os.path.join(mmtest.SOURCE_DIR, "examples")
CLIENT = [sys.executable, os.path.join(EXAMPLES, "feedback_client.py")]


def client(*args, stdin=None):
    p = subprocess.run(CLIENT + [str(a) for a in args], input=stdin, capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def view(admin, exp):
    st, _, body = mmtest.request(admin, "GET", "/experiments/" + exp)
    assert st == 200, body
    return {a["name"]: a for a in json.loads(body)["arms"]}


def feedback_count(admin, exp):
    return sum(a["feedback"] for a in view(admin, exp).values())


class Examples(mmtest.MMTestCase):

    def config(self, store=None):
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(port, {"champion": mmtest.free_port(),
                                        "challenger": mmtest.free_port()},
                                 [{"name": "recs", "match": {"path_prefix": "/recs"},
                                   "policy": "thompson", "arms": ["champion", "challenger"]},
                                  {"name": "il", "match": {"path_prefix": "/il"},
                                   "policy": "interleave", "arms": ["champion", "challenger"],
                                   "list_pointer": "/items"}],
                                 admin_port=admin)
        if store:
            cfg["store"] = store
        return cfg, port, admin

    def quickstart(self, cfg, args=None, cwd=None):
        path = self.cluster.write_config(cfg, "quickstart.json")
        env = dict(os.environ, MM_BUILD=os.path.dirname(os.path.abspath(mmtest.MM_BIN)))
        log = open(self.cluster.path("quickstart.log"), "w")
        p = subprocess.Popen(["bash", os.path.join(EXAMPLES, "quickstart.sh")] +
                             (["-c", path] if args is None else args),
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd)
        log.close()
        proc = mmtest.Proc(p, "quickstart", self.cluster.path("quickstart.log"))
        self.cluster.procs.append(proc)
        return proc

    # -- 1, 2

    def test_quickstart_and_feedback_client(self):
        if os.path.dirname(os.path.abspath(mmtest.MM_BIN)) != \
                os.path.dirname(os.path.abspath(mmtest.MODEL_SERVER)):
            self.skipTest("quickstart.sh needs modelmux and model_server in one directory")
        cfg, port, admin = self.config()
        qs = self.quickstart(cfg)
        mmtest.wait_port(port, qs.p)
        mmtest.wait_port(admin, qs.p)
        st, h, body = mmtest.request(port, "POST", "/recs/x", body=b'{"q":1}')
        self.assertEqual(st, 200, body)
        self.assertIn(h["x-modelmux-arm"], ("champion", "challenger"))
        rid = h["x-request-id"]
        target = "http://127.0.0.1:%d" % port

        rc, out, err = client("--target", target, "--request-id", rid, "--reward", 1)
        self.assertEqual((rc, json.loads(out)), (0, {"accepted": 1, "unknown": 0, "invalid": 0}),
                         err)
        rc, out, err = client("--target", target, "--experiment", "recs", "--arm", "challenger",
                              "--reward", 0)
        self.assertEqual((rc, json.loads(out)["accepted"]), (0, 1), err)
        mmtest.eventually(lambda: feedback_count(admin, "recs") == 2, timeout=5)

        # a batch on stdin: one post, every event counted
        lines = "\n".join(json.dumps({"experiment": "recs", "arm": "champion", "reward": r})
                          for r in (1, 0, 1)) + "\n\n"
        rc, out, err = client("--target", target, "--batch", "-", stdin=lines)
        self.assertEqual((rc, json.loads(out)["accepted"]), (0, 3), err)
        mmtest.eventually(lambda: feedback_count(admin, "recs") == 5, timeout=5)
        # a bad line: its number, and nothing sent
        rc, out, err = client("--target", target, "--batch", "-",
                              stdin=lines + "{not json\n")
        self.assertNotEqual(rc, 0)
        self.assertIn("-:5: not JSON", err)
        self.assertEqual(feedback_count(admin, "recs"), 5)
        # NaN and the infinities are not JSON, though Python's json reads
        # them (and 1e400 as inf): the line is reported and nothing sent (the
        # whole post was sent, and modelmux refused it: 400, the good lines
        # lost too)
        for const, why in (("NaN", "is not a JSON number"), ("Infinity", "is not a JSON number"),
                           ("-Infinity", "is not a JSON number"),
                           ("1e400", "is too large for a number")):
            rc, out, err = client("--target", target, "--batch", "-",
                                  stdin=lines + '{"experiment":"recs","arm":"champion",'
                                                '"reward":%s}\n' % const)
            self.assertEqual(rc, 1, (const, out, err))
            self.assertIn("-:5: not JSON: %s %s" % (const, why), err)
            self.assertEqual(out, "", const)
            self.assertEqual(feedback_count(admin, "recs"), 5, const)
        # a reward outside [0, 1] for bernoulli is not applied: exit 1, and why
        rc, out, err = client("--target", target, "--experiment", "recs", "--arm", "champion",
                              "--reward", 7)
        self.assertEqual((rc, json.loads(out)["invalid"]), (1, 1))
        self.assertIn("1 of 1 events not applied", err)
        # modelmux not there: exit 1
        rc, out, err = client("--target", "http://127.0.0.1:%d" % mmtest.free_port(),
                              "--request-id", rid, "--reward", 1)
        self.assertEqual(rc, 1)
        self.assertIn("cannot reach", err)

        # an interleave click, by the request id of an interleaved answer
        st, h, body = mmtest.request(port, "GET", "/il/q")
        self.assertEqual(st, 200, body)
        items = json.loads(body)["items"]
        rc, out, err = client("--target", target, "--request-id", h["x-request-id"],
                              "--item", items[0]["id"])
        self.assertEqual((rc, json.loads(out)["accepted"]), (0, 1), err)

        # SIGTERM to the script: it stops what it started, by PID, and exits 0
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", qs.log())]
        self.assertEqual(len(pids), 3, qs.log())
        qs.signal(signal.SIGTERM)
        self.assertEqual(qs.wait(timeout=20), 0, qs.log())
        for pid in pids:
            self.assertFalse(os.path.exists("/proc/%d" % pid) and
                             open("/proc/%d/stat" % pid).read().split(")")[1].split()[0] != "Z",
                             "pid %d still running" % pid)

    def test_quickstart_exits_0_on_a_second_sigterm_while_stopping(self):
        """A supervisor's repeated SIGTERM (or a second Ctrl-C) while the
        script stops its processes is ignored: it still stops every one by
        PID and exits 0 (the second one killed the script: 143, and left
        modelmux running). modelmux is kept draining for a while by a Redis
        store that is not there (its flush waits drain_timeout_ms)."""
        if os.path.dirname(os.path.abspath(mmtest.MM_BIN)) != \
                os.path.dirname(os.path.abspath(mmtest.MODEL_SERVER)):
            self.skipTest("quickstart.sh needs modelmux and model_server in one directory")
        cfg, port, admin = self.config({"type": "redis", "host": "127.0.0.1",
                                        "port": mmtest.free_port(), "sync_ms": 50})
        cfg["limits"] = {"drain_timeout_ms": 3000}
        qs = self.quickstart(cfg)
        mmtest.wait_port(port, qs.p)
        mmtest.wait_port(admin, qs.p)
        st, _, body = mmtest.request(port, "POST", "/recs/x", body=b"{}")
        self.assertEqual(st, 200, body)  # a pull the store has not been given
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", qs.log())]
        self.assertEqual(len(pids), 3, qs.log())

        def running(pid):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    return f.read().split(")")[1].split()[0] != "Z"
            except OSError:
                return False

        def kill_left_over():
            for pid in pids:
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
        self.addCleanup(kill_left_over)
        qs.signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(running(pids[-1]), "modelmux did not drain for long: no window")
        qs.signal(signal.SIGTERM)
        qs.signal(signal.SIGINT)
        self.assertEqual(qs.wait(timeout=20), 0, qs.log())
        for pid in pids:
            self.assertFalse(running(pid), "pid %d still running" % pid)

    def test_quickstart_refuses_a_busy_model_port(self):
        cfg, port, admin = self.config()
        busy = self.cluster.model_server("squatter")
        cfg["upstreams"]["challenger"] = {"url": "http://127.0.0.1:%d" % busy.port}
        qs = self.quickstart(cfg)
        self.assertEqual(qs.wait(timeout=20), 1, qs.log())
        self.assertIn("127.0.0.1:%d (challenger) is in use" % busy.port, qs.log())

    def test_quickstart_takes_a_config_path_relative_to_where_it_runs(self):
        """-c with a path relative to the caller's directory: modelmux runs in
        the repository's root, and was given the path as it was (it could not
        open it, and the script exited 0)."""
        if os.path.dirname(os.path.abspath(mmtest.MM_BIN)) != \
                os.path.dirname(os.path.abspath(mmtest.MODEL_SERVER)):
            self.skipTest("quickstart.sh needs modelmux and model_server in one directory")
        cfg, port, admin = self.config()
        qs = self.quickstart(cfg, args=["-c", "quickstart.json"], cwd=self.cluster.dir)
        mmtest.wait_port(port, qs.p)
        st, _, body = mmtest.request(port, "POST", "/recs/x", body=b"{}")
        self.assertEqual(st, 200, body)
        qs.signal(signal.SIGTERM)
        self.assertEqual(qs.wait(timeout=20), 0, qs.log())

    def test_quickstart_fails_when_modelmux_does(self):
        """modelmux cannot listen (its port is taken): the script stops the
        model servers and exits with modelmux's status, not 0."""
        if os.path.dirname(os.path.abspath(mmtest.MM_BIN)) != \
                os.path.dirname(os.path.abspath(mmtest.MODEL_SERVER)):
            self.skipTest("quickstart.sh needs modelmux and model_server in one directory")
        cfg, port, admin = self.config()
        squatter = self.cluster.model_server("squatter", port=port)
        self.assertEqual(squatter.port, port)
        qs = self.quickstart(cfg)
        self.assertEqual(qs.wait(timeout=30), 1, qs.log())
        self.assertIn("address already in use", qs.log())
        self.assertIn("a process ended (status 1)", qs.log())

    def test_quickstart_refuses_arguments_it_does_not_take(self):
        """A config given without -c was ignored (the default one ran)."""
        for args in (["config/thompson.json"], ["-c"], ["-c", "a.json", "b.json"]):
            qs = self.quickstart({}, args=args)
            self.assertEqual(qs.wait(timeout=20), 2, qs.log())
            self.assertIn("usage: examples/quickstart.sh [-c CONFIG]", qs.log())

    def test_feedback_client_usage_errors_exit_2(self):
        """Usage errors exit 2, as its docstring says (they exited 1); a click
        given a reward, which modelmux counts invalid, is one of them (the
        reward was dropped without a word)."""
        for args in ([], ["--item", "x"], ["--request-id", "r", "--item", "x", "--reward", 1],
                     ["--experiment", "recs", "--reward", 1],
                     ["--redis", "nohostport", "--request-id", "r", "--reward", 1]):
            rc, _, err = client(*args)
            self.assertEqual(rc, 2, (args, err))
            self.assertIn("error:", err)
            self.assertNotIn("Traceback", err)

    def test_feedback_client_takes_a_bracketed_redis_address(self):
        """--redis [HOST]:PORT, as URLs write an IPv6 address: the brackets
        were kept in the host name, which then did not resolve."""
        closed = mmtest.free_port()
        rc, _, err = client("--redis", "[127.0.0.1]:%d" % closed, "--request-id", "x",
                            "--reward", 1)
        self.assertEqual(rc, 1, err)
        self.assertIn("Connection refused", err)

    def test_feedback_client_reports_unreadable_batch_and_unreachable_redis(self):
        """Errors the user can cause are one line on stderr and exit 1, not a
        Python traceback."""
        rc, _, err = client("--batch", os.path.join(self.cluster.dir, "missing.jsonl"))
        self.assertEqual(rc, 1, err)
        self.assertIn("feedback_client: cannot read", err)
        self.assertNotIn("Traceback", err)
        closed = mmtest.free_port()  # nothing listens there
        rc, _, err = client("--redis", "127.0.0.1:%d" % closed, "--request-id", "x", "--reward", 1)
        self.assertEqual(rc, 1, err)
        self.assertIn("feedback_client: cannot reach redis", err)
        self.assertNotIn("Traceback", err)

    # -- 3

    def test_feedback_client_writes_the_redis_stream(self):
        redis_port = self.cluster.redis()
        prefix = "mmex%d" % os.getpid()
        cfg, port, admin = self.config({"type": "redis", "host": "127.0.0.1", "port": redis_port,
                                        "prefix": prefix, "sync_ms": 50})
        mm_upstreams = {name: self.cluster.model_server(name, port=int(u["url"].rsplit(":", 1)[1]))
                        for name, u in cfg["upstreams"].items()}
        self.assertEqual(len(mm_upstreams), 2)
        self.cluster.modelmux(cfg)
        st, h, _ = mmtest.request(port, "POST", "/recs/x", body=b"{}")
        self.assertEqual(st, 200)
        rc, out, err = client("--redis", "127.0.0.1:%d" % redis_port, "--prefix", prefix,
                              "--request-id", h["x-request-id"], "--reward", 1)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out.strip(), r"^\d+-\d+$")
        arm = h["x-modelmux-arm"]
        mmtest.eventually(lambda: view(admin, "recs")[arm]["feedback"] == 1, timeout=10)


if __name__ == "__main__":
    mmtest.main()
