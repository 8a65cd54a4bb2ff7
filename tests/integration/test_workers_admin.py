#!/usr/bin/env python3
"""test_workers_admin — with --workers N, the admin API answers as one
instance would (DESIGN.md §5: "With --workers N every worker sees every
change and the same statistics"; a weight change "takes effect for the next
request").

The workers share the data and admin ports, so consecutive connections land
on different workers. Nothing here waits between an admin call and what it
checks: a change must be in force on every worker when its answer arrives,
a view must count the requests every worker served, and a reset must leave
nothing counted from before it. The memory store is used (the workers share
it through their private redis-server), so no Redis needs to be running.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time

import mmtest

TOKEN = "t0ken"
AUTH = {"Authorization": "Bearer " + TOKEN}


class WorkersAdmin(mmtest.MMTestCase):
    def setUp(self):
        super().setUp()
        c = self.cluster
        champion = c.model_server("champion")
        challenger = c.model_server("challenger")
        self.port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            self.port, {"champion": champion.port, "challenger": challenger.port},
            [{"name": "rank", "match": {"path_prefix": "/v1/rank"}, "policy": "ab",
              "arms": {"champion": 50, "challenger": 50}},
             {"name": "recs", "match": {"path_prefix": "/v1/recs"}, "policy": "thompson",
              "arms": ["champion", "challenger"], "reward": "bernoulli"},
             {"name": "sh", "match": {"path_prefix": "/v1/sh"}, "policy": "shadow",
              "primary": "champion", "shadows": ["challenger"]}],
            admin_port=admin)
        cfg["admin"]["token"] = TOKEN
        self.admin = admin
        self.mm = c.modelmux(cfg, "--workers", 2, "--seed", 4)

    def admin_call(self, method, path, body=None):
        st, _, data = mmtest.request(self.admin, method, path, body, headers=AUTH)
        self.assertEqual(st, 200, data)
        return json.loads(data)

    def served(self, path, n):
        """n requests, each on a fresh connection (the kernel spreads them
        over the workers): [(request id, arm)]."""
        out = []
        for _ in range(n):
            st, h, _ = mmtest.request(self.port, "POST", path, "{}")
            self.assertEqual(st, 200)
            out.append((h["x-request-id"], h["x-modelmux-arm"]))
        return out

    def totals(self, exp, field):
        return sum(a[field] for a in self.admin_call("GET", "/experiments/" + exp)["arms"])

    def test_weights_are_in_force_on_every_worker_when_answered(self):
        for i in range(8):
            arm = ("champion", "challenger")[i % 2]
            weights = {"champion": 0, "challenger": 0}
            weights[arm] = 1
            self.assertEqual(self.admin_call("PUT", "/experiments/rank/weights", weights)["weights"],
                             {k: float(v) for k, v in weights.items()})
            self.assertEqual(self.admin_call("GET", "/experiments/rank")["weights"],
                             {k: float(v) for k, v in weights.items()})
            self.assertEqual({a for _, a in self.served("/v1/rank", 6)}, {arm}, "round %d" % i)

    def test_promote_rollback_pause_are_seen_by_every_worker_at_once(self):
        for i in range(4):
            self.admin_call("POST", "/experiments/recs/promote", {"arm": "challenger"})
            self.assertEqual(self.admin_call("GET", "/experiments/recs")["state"], "promoted")
            self.assertEqual({a for _, a in self.served("/v1/recs", 6)}, {"challenger"})
            self.admin_call("POST", "/experiments/recs/rollback")
            self.assertEqual(self.admin_call("GET", "/experiments/recs")["state"], "rolled_back")
            self.assertEqual({a for _, a in self.served("/v1/recs", 6)}, {"champion"})
            self.admin_call("POST", "/experiments/recs/resume")
            self.admin_call("POST", "/experiments/recs/pause")
            self.assertEqual(self.admin_call("GET", "/experiments/recs")["state"], "paused")
            self.admin_call("POST", "/experiments/recs/resume")
            self.assertEqual(self.admin_call("GET", "/experiments/recs")["state"], "running")

    def test_a_view_counts_every_workers_requests_and_feedback(self):
        for i in range(6):
            before = self.totals("recs", "requests"), self.totals("recs", "feedback")
            served = self.served("/v1/recs", 7)
            self.assertEqual(self.totals("recs", "requests"), before[0] + 7, "round %d" % i)
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            for rid, _ in served:
                conn.request("POST", "/_modelmux/feedback",
                             body=json.dumps({"request_id": rid, "reward": 1}))
                r = conn.getresponse()
                self.assertEqual(json.loads(r.read())["accepted"], 1)
            conn.close()
            self.assertEqual(self.totals("recs", "feedback"), before[1] + 7, "round %d" % i)

    def test_a_reset_forgets_what_every_worker_counted_before_it(self):
        for i in range(6):
            self.served("/v1/recs", 5)
            v = self.admin_call("POST", "/experiments/recs/reset")
            self.assertEqual(sum(a["requests"] for a in v["arms"]), 0, "round %d" % i)
            self.assertEqual(self.totals("recs", "requests"), 0, "round %d" % i)

    def test_shadow_agreement_counts_every_workers_mirrors(self):
        """The shadow view's counts are the group's (pooled through the
        store like the arm statistics), whichever worker answers; a reset
        clears them on every worker."""
        def shadow():
            return self.admin_call("GET", "/experiments/sh")["policy_state"]["shadows"][0]
        for i in range(3):
            self.served("/v1/sh", 10)
            # A mirror's comparison ends after the client's answer.
            mmtest.eventually(lambda: shadow()["compared"] + shadow()["errors"] == 10, timeout=5)
            for _ in range(6):
                v = shadow()
                self.assertEqual((v["compared"] + v["errors"], v["dropped"]), (10, 0),
                                 "round %d: %s" % (i, v))
                self.assertEqual(sum(p["requests"] for p in v["paths"][:1]) > 0,
                                 v["mismatches"] > 0, v)
            self.admin_call("POST", "/experiments/sh/reset")
            for _ in range(4):
                self.assertEqual(shadow()["compared"], 0, "round %d" % i)

    def test_the_sync_path_is_private(self):
        st, _, _ = mmtest.request(self.admin, "POST", "/_modelmux/sync", headers=AUTH)
        self.assertEqual(st, 404)


class WorkersLifecycle(mmtest.MMTestCase):
    """The group's reloads and crashes, as one instance would behave: every
    worker serves the same config."""

    def setUp(self):
        super().setUp()
        c = self.cluster
        self.upstreams = {"champion": c.model_server("champion").port,
                          "challenger": c.model_server("challenger").port}
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()

    def config(self, champion, challenger):
        return mmtest.base_config(
            self.port, self.upstreams,
            [{"name": "ab", "match": {"path_prefix": "/ab"}, "policy": "ab",
              "arms": {"champion": champion, "challenger": challenger}}],
            admin_port=self.admin)

    def arms(self, n):
        return mmtest.arms_served(self.port, "/ab", n)

    def config_with_slow(self):
        """config(100, 0) and an experiment for /sleep/MS (the model
        server answers after MS ms)."""
        cfg = self.config(100, 0)
        cfg["experiments"].append({"name": "slow", "match": {"path_prefix": "/sleep"},
                                   "policy": "ab", "arms": {"champion": 1}})
        return cfg

    def slow_in_flight(self, n, stop):
        """n requests of 1 s each on fresh connections, stop() 0.3 s into
        them: their statuses."""
        slow = [None] * n

        def get(i):
            slow[i] = mmtest.request(self.port, "GET", "/sleep/1000", timeout=15)[0]
        threads = [threading.Thread(target=get, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        stop()
        for t in threads:
            t.join(timeout=20)
        return slow

    def test_a_replaced_worker_serves_the_config_its_siblings_serve(self):
        """A worker started in place of a crashed one serves the config the
        group reloaded to, also when the file was broken since (a reload the
        group rejected, keeping that config): not the start config."""
        mm = self.cluster.modelmux(self.config(100, 0), "--workers", 2, name="w")
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        mmtest.eventually(lambda: len(pids()) == 2, timeout=5)
        self.cluster.write_config(self.config(0, 100), "w.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 2, timeout=5)
        self.assertEqual(self.arms(20), {"challenger"})
        with open(mm.config_path, "w") as f:
            f.write('{"listen": ')  # a reload now is rejected: the group keeps serving the last
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("reload rejected") == 2, timeout=5)
        self.assertEqual(self.arms(20), {"challenger"})
        time.sleep(1.1)  # a worker that dies within a second of its start is not replaced
        os.kill(pids()[0], signal.SIGKILL)
        new = mmtest.eventually(lambda: pids()[2:], timeout=5)[0]
        mmtest.eventually(lambda: re.search(r"modelmux\[%d\]: (config reloaded|reload rejected)"
                                            % new, mm.log()), timeout=5)
        self.assertEqual(self.arms(40), {"challenger"}, mm.log())
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_reload_to_redis_moves_the_group_with_what_it_learned(self):
        """A group started on the memory store (its private redis-server)
        moves to the configured Redis at a reload, with what it learned, and
        goes on counting there; a reload back to the memory store takes a
        restart (logged by each worker), and the group stays on Redis."""
        mm = self.cluster.modelmux(self.config(50, 50), "--workers", 2, name="w")
        mmtest.eventually(lambda: mm.log().count("listening on") == 2, timeout=5)
        r = mmtest.Redis(self.cluster.redis())
        self.addCleanup(r.close)
        prefix = "wmove%d" % os.getpid()
        pulls = lambda: sum(int(r("HGET", "%s:{ab}:arm:%s" % (prefix, arm), "pulls") or 0)
                            for arm in ("champion", "challenger"))
        requests = lambda: sum(a["requests"] for a in json.loads(
            mmtest.request(self.admin, "GET", "/experiments/ab")[2])["arms"])

        self.arms(20)
        mmtest.eventually(lambda: requests() == 20, timeout=5)
        cfg = self.config(50, 50)
        cfg["store"] = {"type": "redis", "port": r.addr[1], "prefix": prefix, "sync_ms": 20}
        self.cluster.write_config(cfg, "w.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 2, timeout=5)
        mmtest.eventually(lambda: pulls() == 20)
        self.assertEqual(mm.log().count("reload: moving to 127.0.0.1:%d, db 0, prefix %s\n"
                                        % (r.addr[1], prefix)), 2)
        self.arms(10)
        mmtest.eventually(lambda: pulls() == 30)
        self.assertEqual(requests(), 30)
        # A worker started in place of a crashed one starts on Redis too.
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        time.sleep(1.1)  # a worker that dies within a second of its start is not replaced
        os.kill(pids()[0], signal.SIGKILL)
        new = mmtest.eventually(lambda: pids()[2:], timeout=5)[0]
        self.assertRegex(mm.log(), r"modelmux\[%d\]: listening on .*, store redis" % new)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 3, timeout=5)
        self.arms(10)
        mmtest.eventually(lambda: pulls() == 40)

        self.cluster.write_config(self.config(50, 50), "w.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 5, timeout=5)
        self.assertEqual(mm.log().count("reload: the store stays on Redis: a move to the memory "
                                        "store takes effect at the next restart"), 2)
        self.arms(5)
        mmtest.eventually(lambda: pulls() == 45)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_shadow_counts_start_over_at_every_change_of_definition(self):
        """A reload that changes a shadow experiment starts its pooled
        agreement counts at 0, also a reload back to an earlier definition,
        and a reset clears every definition's counts."""
        def config(ignore):
            cfg = self.config(100, 0)
            cfg["experiments"].append({"name": "sh", "match": {"path_prefix": "/sh"},
                                       "policy": "shadow", "primary": "champion",
                                       "shadows": ["challenger"],
                                       "compare": {"ignore": ignore}})
            return cfg

        def compared():
            s = json.loads(mmtest.request(self.admin, "GET", "/experiments/sh")[2])
            s = s["policy_state"]["shadows"][0]
            return s["compared"] + s["errors"]

        def reload_to(ignore, n):
            self.cluster.write_config(config(ignore), "w.json")
            mm.signal(signal.SIGHUP)
            mmtest.eventually(lambda: mm.log().count("config reloaded") == n, timeout=5)

        def mirrored(n, want):
            for i in range(n):
                self.assertEqual(mmtest.request(self.port, "POST", "/sh/%d" % i, "{}")[0], 200)
            mmtest.eventually(lambda: compared() == want, timeout=5)

        mm = self.cluster.modelmux(config([]), "--workers", 2, name="w")
        mmtest.eventually(lambda: mm.log().count("listening on") == 2, timeout=5)
        mirrored(10, 10)
        reload_to(["/model"], 2)
        self.assertEqual(compared(), 0)
        mirrored(4, 4)
        reload_to([], 4)  # back to the first definition: from 0, not 10
        self.assertEqual([compared() for _ in range(4)], [0] * 4)
        mirrored(3, 3)
        reload_to(["/model"], 6)
        mirrored(2, 2)
        st, _, body = mmtest.request(self.admin, "POST", "/experiments/sh/reset")
        self.assertEqual(st, 200, body)
        reload_to([], 8)  # the reset cleared the other definition's counts too
        self.assertEqual([compared() for _ in range(4)], [0] * 4)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_reload_moves_every_worker_and_a_replaced_worker_listens_where_they_do(self):
        mm = self.cluster.modelmux(self.config(100, 0), "--workers", 2, name="w")
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        mmtest.eventually(lambda: len(pids()) == 2, timeout=5)
        old, old_admin = self.port, self.admin
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        self.cluster.write_config(self.config(100, 0), "w.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 2, timeout=5)
        self.assertEqual(mm.log().count("reload: listening on 127.0.0.1:%d" % self.port), 2)
        self.assertEqual(mm.log().count("reload: admin on 127.0.0.1:%d" % self.admin), 2)
        for gone in (old, old_admin):
            with self.assertRaises(ConnectionRefusedError):
                mmtest.request(gone, "GET", "/ab")
        self.assertEqual(self.arms(20), {"champion"})
        time.sleep(1.1)  # a worker that dies within a second of its start is not replaced
        os.kill(pids()[0], signal.SIGKILL)
        new = mmtest.eventually(lambda: pids()[2:], timeout=5)[0]
        self.assertIn("modelmux[%d]: listening on 127.0.0.1:%d, admin on 127.0.0.1:%d"
                      % (new, self.port, self.admin), mm.log())
        mmtest.eventually(lambda: "modelmux[%d]: config reloaded" % new in mm.log(), timeout=5)
        with self.assertRaises(ConnectionRefusedError):
            mmtest.request(old, "GET", "/ab")
        self.assertEqual(self.arms(40), {"champion"})
        self.assertEqual(mmtest.request(self.admin, "GET", "/healthz")[0], 200)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_an_admin_listener_a_reload_adds_to_a_group_says_what_its_metrics_cover(self):
        """A group started without an admin listener has no private scrape
        sockets (no listener it did not ask for): a reload that adds one
        serves the admin API on every worker, and says that /metrics covers
        the worker a scrape reaches until a restart."""
        cfg = self.config(100, 0)
        del cfg["admin"]
        mm = self.cluster.modelmux(cfg, "--workers", 2, name="w")
        mmtest.eventually(lambda: mm.log().count("listening on") == 2, timeout=5)
        self.cluster.write_config(self.config(100, 0), "w.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 2, timeout=5)
        self.assertEqual(mm.log().count(
            "reload: admin on 127.0.0.1:%d (this --workers group started without one: /metrics "
            "reports the worker a scrape reaches until a restart)" % self.admin), 2)
        self.assertEqual(self.arms(10), {"champion"})
        for _ in range(4):
            self.assertEqual(mmtest.request(self.admin, "GET", "/metrics")[0], 200)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_worker_that_crashes_between_scrapes_keeps_its_counts(self):
        """Each worker keeps what it counted every second, not only when a
        scrape asks: a worker killed before any scrape still counts in the
        group's totals (it used to count for nothing)."""
        mm = self.cluster.modelmux(self.config(100, 0), "--workers", 2, name="w")
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        mmtest.eventually(lambda: len(pids()) == 2, timeout=5)
        n = 40  # on fresh connections: the kernel spreads them over both workers
        self.assertEqual([mmtest.request(self.port, "GET", "/ab/%d" % i)[0] for i in range(n)],
                         [200] * n)
        time.sleep(3.5)  # past the workers' 1 s ticks (and the second after the start)
        os.kill(pids()[0], signal.SIGKILL)
        mmtest.eventually(lambda: len(pids()) == 3, timeout=5)

        def requests_total():
            body = mmtest.request(self.admin, "GET", "/metrics")[2].decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                       if line.startswith("modelmux_requests_total{"))
        self.assertEqual(requests_total(), n)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_worker_stopped_by_sigterm_keeps_its_counts_to_the_end(self):
        """A worker stopped alone (SIGTERM: it drains, exits 0, and the
        group serves on) keeps what it counted up to its exit: the requests
        since its last 1 s tick and those it finished while draining stay
        in the group's counters, and so do its rewards (modelmux_reward_sum
        with modelmux_feedback_total, whose ratio is the mean reward)."""
        mm = self.cluster.modelmux(self.config_with_slow(), "--workers", 2, name="w")
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        mmtest.eventually(lambda: len(pids()) == 2, timeout=5)
        n = 40  # on fresh connections: the kernel spreads them over both workers
        self.assertEqual([mmtest.request(self.port, "GET", "/ab/%d" % i)[0] for i in range(n)],
                         [200] * n)
        for _ in range(10):
            st, _, body = mmtest.request(self.port, "POST", "/_modelmux/feedback", json.dumps(
                {"experiment": "ab", "arm": "champion", "reward": 1.5}))
            self.assertEqual(st, 202, body)
        # in flight when the worker is stopped: they end in its drain
        slow = self.slow_in_flight(6, lambda: os.kill(pids()[0], signal.SIGTERM))
        self.assertEqual(slow, [200] * len(slow))
        mmtest.eventually(lambda: "1 workers left" in mm.log(), timeout=10)

        def total(family):
            body = mmtest.request(self.admin, "GET", "/metrics")[2].decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                       if line.startswith(family + "{"))
        self.assertEqual(total("modelmux_requests_total"), n + len(slow))
        self.assertEqual(total("modelmux_feedback_total"), 10)
        self.assertEqual(total("modelmux_reward_sum"), 15)
        # The group is one worker now: its size says so, and scrapes and
        # admin syncs no longer ask (and log) the worker that is gone.
        body = mmtest.request(self.admin, "GET", "/metrics")[2].decode()
        self.assertIn("\nmodelmux_workers 1\n", body)
        self.assertIn("\nmodelmux_workers_reporting 1\n", body)
        self.assertEqual(mmtest.request(self.admin, "GET", "/experiments/ab")[0], 200)
        self.assertNotIn("did not answer the scrape", mm.log())
        self.assertNotIn("did not confirm a sync", mm.log())
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_ctrl_c_to_the_process_group_drains_with_the_store_up(self):
        """A terminal's Ctrl-C is a SIGINT to the whole foreground process
        group: the private redis-server is not in it, so the workers drain
        with their store up and the group stops at once (it used to die
        first, and each worker's drain waited drain_timeout_ms for it)."""
        cfg = self.config_with_slow()
        cfg["limits"] = {"drain_timeout_ms": 8000}
        path = self.cluster.write_config(cfg, "pg.json")
        log = open(os.path.join(self.cluster.dir, "pg.log"), "wb")
        p = subprocess.Popen([os.path.abspath(mmtest.MM_BIN), "-c", path, "--workers", "2"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            text = lambda: open(os.path.join(self.cluster.dir, "pg.log")).read()
            mmtest.eventually(lambda: text().count("listening on") == 2, timeout=10)
            self.assertEqual(mmtest.request(self.port, "GET", "/ab/1")[0], 200)
            # in flight at the Ctrl-C: their counts are written in the drain
            slow = self.slow_in_flight(4, lambda: os.killpg(p.pid, signal.SIGINT))
            self.assertEqual(slow, [200] * len(slow))
            self.assertEqual(p.wait(timeout=20), 0, text()[-3000:])
            self.assertNotIn("down", text())
            self.assertNotIn("gave up writing", text())
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()

    def test_a_replaced_worker_logs_where_the_group_logs(self):
        """A worker started in place of a crashed one opens the request log
        of the config in force, not the start config's: that one may not
        open any more (its directory replaced by a file since the reload),
        and the new worker then failed to start."""
        d = self.cluster.dir
        cfg = self.config(100, 0)
        cfg["log"] = {"requests": os.path.join(d, "logs1", "req.jsonl")}
        mm = self.cluster.modelmux(cfg, "--workers", 2, name="w")
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        mmtest.eventually(lambda: len(pids()) == 2, timeout=5)
        cfg["log"] = {"requests": os.path.join(d, "logs2", "req.jsonl")}
        self.cluster.write_config(cfg, "w.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 2, timeout=5)
        os.rename(os.path.join(d, "logs1"), os.path.join(d, "logs1.gone"))
        with open(os.path.join(d, "logs1"), "w") as f:
            f.write("not a directory\n")
        time.sleep(1.1)  # a worker that dies within a second of its start is not replaced
        os.kill(pids()[0], signal.SIGKILL)
        mmtest.eventually(lambda: len(pids()) == 3, timeout=5)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 3, timeout=5)
        self.assertNotIn("cannot open request log", mm.log())
        n = 20  # on fresh connections: both workers serve some, every one logged
        self.assertEqual([mmtest.request(self.port, "GET", "/ab/%d" % i)[0] for i in range(n)],
                         [200] * n)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])
        with open(os.path.join(d, "logs2", "req.jsonl")) as f:
            self.assertEqual(sum(1 for line in f if '"/ab/' in line), n)

    def start_with_path(self, bindir):
        """modelmux --workers 2 on the memory store, with PATH=bindir only:
        (exit status, stderr)."""
        path = self.cluster.write_config(self.config(1, 1), "path.json")
        p = subprocess.run([os.path.abspath(mmtest.MM_BIN), "-c", path, "--workers", "2"],
                           env={"PATH": bindir}, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stderr

    def test_a_private_redis_that_fails_is_not_reported_as_missing(self):
        """The memory store's private redis-server: one that is not installed
        is reported as such; one that is installed but exits at its start
        (its own message goes to /dev/null) is reported with its exit status
        and how to see why, not as missing."""
        bindir = self.cluster.path("bin")
        os.mkdir(bindir)
        code, err = self.start_with_path(bindir)
        self.assertEqual(code, 1, err)
        self.assertIn("redis-server could not be run (not installed?)", err)
        fake = os.path.join(bindir, "redis-server")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho '*** FATAL CONFIG FILE ERROR ***'\nexit 3\n")
        os.chmod(fake, 0o755)
        code, err = self.start_with_path(bindir)
        self.assertEqual(code, 1, err)
        self.assertIn("redis-server exited with status 3 at its start (to see why, run: "
                      "redis-server --port ", err)
        self.assertNotIn("not installed", err)


if __name__ == "__main__":
    mmtest.main()
