"""test_lifecycle — signals (DESIGN.md §2) and mirrored traffic (§4).

SIGHUP swaps in a new config without dropping connections, and a bad new
config changes nothing but the log. SIGTERM stops accepting, lets in-flight
requests finish (bounded by drain_timeout_ms) and exits 0. A shadow arm
receives mirrors but never delays, changes or fails the primary answer.

modelmux must exit 0 on SIGTERM with no sanitizer report in its log, in
every test (that is what the ASan build checks).
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

import mmtest

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def stats(port):
    status, _, body = mmtest.request(port, "GET", "/_stats")
    assert status == 200, status
    return json.loads(body)


def ab_config(port, champion, challenger, weights, **limits):
    lim = {"drain_timeout_ms": 3000}
    lim.update(limits)
    return mmtest.base_config(
        port, {"champion": champion, "challenger": challenger},
        [{"name": "ab", "match": {"path_prefix": "/"}, "policy": "ab", "arms": weights}], limits=lim)


def get(conn, path, headers=None):
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    return r.status, r.getheader("X-Modelmux-Arm"), body


class Lifecycle(mmtest.MMTestCase):
    def tearDown(self):
        super().tearDown()
        self.assertCleanExit()

    def held_upstream(self, release, arrived, body):
        """A Python upstream that holds every request until `release` is
        set, then answers 200 with the JSON `body`; each request appends to
        `arrived` once read (so a test knows it is in flight). Released and
        closed at cleanup."""
        class Held(mmtest.QuietHandler):
            def answer(self):
                n = int(self.headers.get("Content-Length", 0))
                if n:
                    self.rfile.read(n)
                arrived.append(1)
                release.wait(20)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_POST = answer

        up = mmtest.PyUpstream(Held)
        self.addCleanup(up.close)
        self.addCleanup(release.set)  # cleanups run last first: released, then closed
        return up

    def shadow_beside_ab(self, port, admin, shadow, **shadow_opts):
        """cfg(weight): a shadow experiment "sh" (champion primary, mirrored
        to `shadow`) beside an ab "ab" whose champion weight is `weight`, so
        a reload can change "ab" alone."""
        champion, challenger = self.two_servers()
        sh = {"name": "sh", "match": {"path_prefix": "/sh"}, "policy": "shadow", "primary": "champion",
              "shadows": ["shadow"], "timeout_ms": 20000}
        sh.update(shadow_opts)

        def cfg(weight):
            return mmtest.base_config(
                port, {"champion": champion.port, "challenger": challenger.port, "shadow": shadow.port},
                [sh, {"name": "ab", "match": {"path_prefix": "/ab"}, "policy": "ab",
                      "arms": {"champion": weight, "challenger": 1}}],
                admin_port=admin, limits={"drain_timeout_ms": 3000})
        return cfg

    def assertCleanExit(self):
        for p in self.cluster.procs:
            if not p.name.startswith("modelmux"):
                continue
            log = p.log()
            if not getattr(p, "exit_checked", False):  # else the test itself asserted it
                self.assertEqual(p.p.returncode, 0, "%s exit status after SIGTERM; log:\n%s" % (p.name, log[-3000:]))
            for m in SANITIZER_MARKERS:
                self.assertNotIn(m, log, log[-6000:])

    def sigterm_and_wait(self, mm, within):
        """SIGTERM; assert exit status 0 within `within` s; return the time it took."""
        mm.exit_checked = True
        t0 = time.time()
        mm.signal(signal.SIGTERM)
        try:
            code = mm.wait(within)
        except subprocess.TimeoutExpired:
            self.fail("modelmux still running %.1f s after SIGTERM; log:\n%s" % (within, mm.log()[-2000:]))
        self.assertEqual(code, 0, mm.log()[-2000:])
        return time.time() - t0

    def two_servers(self, *challenger_args):
        return self.cluster.model_server("champion"), self.cluster.model_server("challenger", *challenger_args)

    def ab_modelmux(self, weights, *args):
        """Two model servers and modelmux splitting between them by
        `weights`: (champion, challenger, port, mm)."""
        champion, challenger = self.two_servers()
        port = mmtest.free_port()
        mm = self.cluster.modelmux(ab_config(port, champion.port, challenger.port, weights), *args)
        return champion, challenger, port, mm

    def conn(self, port, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def wait_refused(self, port, timeout=2.0):
        """True once a new connection to port is refused."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except ConnectionRefusedError:
                return True
            except OSError:
                pass
            time.sleep(0.02)
        return False


class Reload(Lifecycle):
    def test_sighup_with_good_config_moves_traffic_without_dropping_connections(self):
        champion, challenger, port, mm = self.ab_modelmux({"champion": 100, "challenger": 0}, "--seed", 1)
        held = self.conn(port)  # a keep-alive connection across the reload
        for _ in range(20):
            self.assertEqual(get(held, "/v1/rank")[:2], (200, "champion"))
        self.cluster.write_config(ab_config(port, champion.port, challenger.port,
                                            {"champion": 0, "challenger": 100}), "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mmtest.request(port, "GET", "/v1/rank")[1]["x-modelmux-arm"] == "challenger",
                          timeout=5)
        for _ in range(30):  # after the reload, all traffic goes to the challenger
            self.assertEqual(get(held, "/v1/rank")[:2], (200, "challenger"))
        self.assertTrue(mm.alive())

    def test_sighup_with_bad_config_keeps_old_config_and_logs_position(self):
        champion, challenger, port, mm = self.ab_modelmux({"champion": 100, "challenger": 0}, "--seed", 1)
        good = ab_config(port, champion.port, challenger.port, {"champion": 0, "challenger": 100})
        # valid JSON with a negative weight; the error must point at it
        text = json.dumps(good, indent=2).replace('"challenger": 100', '"challenger": -100')
        line = next(i for i, l in enumerate(text.splitlines(), 1) if '"challenger": -100' in l)
        col = text.splitlines()[line - 1].index("-100") + 1
        with open(mm.config_path, "w") as f:
            f.write(text)
        mm.signal(signal.SIGHUP)
        where = "%s:%d:%d:" % (mm.config_path, line, col)
        mmtest.eventually(lambda: where in mm.log(), timeout=5)
        self.assertTrue(mm.alive())
        c = self.conn(port)
        for _ in range(30):  # the old config keeps serving
            self.assertEqual(get(c, "/v1/rank")[:2], (200, "champion"))

    def test_sighup_with_unparseable_config_keeps_serving(self):
        champion, challenger, port, mm = self.ab_modelmux({"champion": 100, "challenger": 0}, "--seed", 1)
        with open(mm.config_path, "w") as f:
            f.write('{\n  "listen": \n}\n')  # the '}' at line 3, column 1
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "%s:3:1:" % mm.config_path in mm.log(), timeout=5)
        self.assertTrue(mm.alive())
        self.assertEqual(get(self.conn(port), "/v1/rank")[:2], (200, "champion"))


    def moving_config(self, listen, admin):
        """The ab config (champion only) on port `listen`, admin on `admin`
        (None: no admin listener), with its two model servers made once."""
        if not hasattr(self, "servers"):
            self.servers = self.two_servers()
        champion, challenger = self.servers
        cfg = ab_config(listen, champion.port, challenger.port, {"champion": 1, "challenger": 0})
        if admin is not None:
            cfg["admin"] = {"listen": "127.0.0.1:%d" % admin}
        return cfg

    def reload_to(self, mm, cfg, n):
        """Write cfg, SIGHUP, and wait for the n-th reload's outcome line."""
        self.cluster.write_config(cfg, "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") + mm.log().count("reload rejected") == n)

    def test_a_reload_moves_the_listen_and_admin_addresses(self):
        # As an nginx reload does: the new addresses listen, the old ones
        # are closed, and a connection accepted before the move is served on.
        port, admin, port2, admin2 = (mmtest.free_port() for _ in range(4))
        mm = self.cluster.modelmux(self.moving_config(port, admin))
        mm.signal(signal.SIGHUP)  # the same addresses: nothing moves, nothing is said
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 1)
        self.assertNotIn("reload: listening on", mm.log())
        self.assertNotIn("reload: admin on", mm.log())
        before = self.conn(port)
        self.assertEqual(get(before, "/p")[:2], (200, "champion"))

        self.reload_to(mm, self.moving_config(port2, admin2), 2)
        self.assertIn("config reloaded", mm.log().splitlines()[-1])
        self.assertIn("reload: listening on 127.0.0.1:%d" % port2, mm.log())
        self.assertIn("reload: admin on 127.0.0.1:%d" % admin2, mm.log())
        self.assertTrue(self.wait_refused(port))
        self.assertTrue(self.wait_refused(admin))
        self.assertEqual(get(self.conn(port2), "/p")[:2], (200, "champion"))
        self.assertEqual(mmtest.request(admin2, "GET", "/healthz")[0], 200)
        self.assertEqual(get(before, "/p")[:2], (200, "champion"))  # kept alive across the move

        # The two addresses swap: each listener passes to the other role.
        self.reload_to(mm, self.moving_config(admin2, port2), 3)
        self.assertIn("config reloaded", mm.log().splitlines()[-1])
        self.assertEqual(get(self.conn(admin2), "/p")[:2], (200, "champion"))
        self.assertEqual(mmtest.request(port2, "GET", "/healthz")[0], 200)
        self.assertEqual(mmtest.request(port2, "GET", "/p")[0], 404)  # the admin API's answer
        self.sigterm_and_wait(mm, 10)

    def test_a_reload_adds_and_removes_the_admin_listener(self):
        port, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.cluster.modelmux(self.moving_config(port, None))
        self.assertTrue(self.wait_refused(admin))
        self.reload_to(mm, self.moving_config(port, admin), 1)
        self.assertIn("reload: admin on 127.0.0.1:%d" % admin, mm.log())
        self.assertEqual(mmtest.request(admin, "GET", "/healthz")[0], 200)
        # Closed by a reload asked for on it: the asking connection gets its answer.
        self.cluster.write_config(self.moving_config(port, None), "modelmux.json")
        status, _, body = mmtest.request(admin, "POST", "/reload")
        self.assertEqual((status, json.loads(body)["status"]), (200, "reloaded"))
        self.assertIn("reload: the admin listener is closed (no admin in the config)", mm.log())
        self.assertTrue(self.wait_refused(admin))
        self.assertEqual(get(self.conn(port), "/p")[:2], (200, "champion"))
        self.sigterm_and_wait(mm, 10)

    def test_a_reload_to_a_port_another_process_holds_is_rejected_and_changes_nothing(self):
        port, admin, admin2 = mmtest.free_port(), mmtest.free_port(), mmtest.free_port()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        held = taken.getsockname()[1]
        mm = self.cluster.modelmux(self.moving_config(port, admin))
        # The admin address is free, the listen one is not: neither moves.
        self.reload_to(mm, self.moving_config(held, admin2), 1)
        last = mm.log().splitlines()[-1]
        self.assertIn("reload rejected, the previous config keeps serving: cannot listen on "
                      "127.0.0.1:%d: address already in use" % held, last)
        self.assertTrue(self.wait_refused(admin2))
        self.assertEqual(get(self.conn(port), "/p")[:2], (200, "champion"))
        self.assertEqual(mmtest.request(admin, "GET", "/healthz")[0], 200)
        # Once the port is free, the same file moves both.
        taken.close()
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 1)
        self.assertEqual(get(self.conn(held), "/p")[:2], (200, "champion"))
        self.assertEqual(mmtest.request(admin2, "GET", "/healthz")[0], 200)
        self.assertTrue(self.wait_refused(port))
        self.sigterm_and_wait(mm, 10)

    def test_mirrors_in_flight_across_a_reload_count_for_the_unchanged_shadow(self):
        # A reload that leaves the shadow experiment as it was keeps its
        # agreement counts; the mirrors in flight during it were compared by
        # the replaced policy instance, and were missing from the view for
        # good (only modelmux_shadow_total had them).
        release, arrived = threading.Event(), []
        shadow = self.held_upstream(release, arrived, b'{"score": 0.5}')
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = self.shadow_beside_ab(port, admin, shadow)

        mm = self.cluster.modelmux(cfg(1))
        n = 6
        for i in range(n):
            self.assertEqual(mmtest.request(port, "POST", "/sh", {"i": i})[0], 200)
        mmtest.eventually(lambda: len(arrived) == n)  # every mirror is held by the shadow
        self.cluster.write_config(cfg(2), "modelmux.json")  # only "ab" changes
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log())
        release.set()
        total = lambda: sum(mmtest.metric_samples(admin, "modelmux_shadow_total", "outcome").values())
        mmtest.eventually(lambda: total() == n)

        def compared():
            view = json.loads(mmtest.request(admin, "GET", "/experiments/sh")[2])
            return view["policy_state"]["shadows"][0]["compared"]
        mmtest.eventually(lambda: compared() == n, timeout=5)
        self.sigterm_and_wait(mm, 10)

    def test_interleaved_requests_in_flight_across_a_reload_count_for_the_unchanged_experiment(self):
        # As for mirrors: an interleave merged after a reload that left its
        # experiment as it was used to be counted by the replaced instance,
        # and went missing from the view's this_instance counters.
        release, arrived = threading.Event(), []

        def ranker(name):
            body = json.dumps({"items": [{"id": "%s-%d" % (name, i)} for i in range(5)]}).encode()
            return self.held_upstream(release, arrived, body)

        a, b = ranker("a"), ranker("b")
        port, admin = mmtest.free_port(), mmtest.free_port()

        def cfg(weight):
            return mmtest.base_config(
                port, {"a": {"url": "http://127.0.0.1:%d" % a.port, "timeout_ms": 20000},
                       "b": {"url": "http://127.0.0.1:%d" % b.port, "timeout_ms": 20000}},
                [{"name": "il", "match": {"path_prefix": "/rank"}, "policy": "interleave", "arms": ["a", "b"],
                  "list_pointer": "/items", "id_field": "id", "k": 4},
                 {"name": "ab", "match": {"path_prefix": "/ab"}, "policy": "ab", "arms": {"a": weight, "b": 1}}],
                admin_port=admin, limits={"drain_timeout_ms": 3000})

        mm = self.cluster.modelmux(cfg(1))
        n = 4
        statuses = []
        clients = [threading.Thread(target=lambda: statuses.append(mmtest.request(port, "GET", "/rank", timeout=30)[0]))
                   for _ in range(n)]
        for t in clients:
            t.start()
        mmtest.eventually(lambda: len(arrived) == 2 * n)  # every ranker request is held
        self.cluster.write_config(cfg(2), "modelmux.json")  # only "ab" changes
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log())
        release.set()
        for t in clients:
            t.join(30)
        self.assertEqual(statuses, [200] * n)
        view = json.loads(mmtest.request(admin, "GET", "/experiments/il")[2])
        self.assertEqual(view["policy_state"]["this_instance"]["merged"], n, view["policy_state"])
        self.sigterm_and_wait(mm, 10)

    def test_primary_answers_in_flight_across_a_reload_count_for_the_unchanged_shadow(self):
        # The primary's own answers feed the shadow's primary_mean_latency_ms;
        # one in flight during a reload that left the experiment as it was
        # went to the replaced policy instance.
        release, arrived = threading.Event(), []
        primary = self.held_upstream(release, arrived, b'{"score": 0.5}')
        shadow = self.cluster.model_server("shadow")
        port, admin = mmtest.free_port(), mmtest.free_port()

        def cfg(salt):
            return mmtest.base_config(
                port, {"primary": {"url": "http://127.0.0.1:%d" % primary.port, "timeout_ms": 20000},
                       "shadow": shadow.port},
                [{"name": "sh", "match": {"path_prefix": "/sh"}, "policy": "shadow", "primary": "primary",
                  "shadows": ["shadow"]},
                 {"name": "ab", "match": {"path_prefix": "/ab"}, "policy": "ab", "arms": {"shadow": 1},
                  "sticky": {"header": "X-User"}, "salt": salt}],
                admin_port=admin, limits={"drain_timeout_ms": 3000})

        mm = self.cluster.modelmux(cfg("one"))
        got = []
        client = threading.Thread(target=lambda: got.append(mmtest.request(port, "GET", "/sh", timeout=30)[0]))
        client.start()
        mmtest.eventually(lambda: len(arrived) == 1)
        self.cluster.write_config(cfg("two"), "modelmux.json")  # only "ab" changes
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log())
        release.set()
        client.join(30)
        self.assertEqual(got, [200])
        view = json.loads(mmtest.request(admin, "GET", "/experiments/sh")[2])
        self.assertIsNotNone(view["policy_state"]["primary_mean_latency_ms"], view["policy_state"])
        self.sigterm_and_wait(mm, 10)

    def test_max_inflight_counts_the_mirrors_still_in_flight_from_before_a_reload(self):
        # The mirrors in flight were counted per router: after a reload the
        # new router started from 0, and a shadow arm got up to twice its
        # max_inflight (more with more reloads).
        release, arrived = threading.Event(), []
        shadow = self.held_upstream(release, arrived, b"{}")
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = self.shadow_beside_ab(port, admin, shadow, max_inflight=2)

        mm = self.cluster.modelmux(cfg(1))
        outcomes = lambda: mmtest.metric_samples(admin, "modelmux_shadow_total", "outcome")
        for i in range(2):
            self.assertEqual(mmtest.request(port, "POST", "/sh", {"i": i})[0], 200)
        mmtest.eventually(lambda: len(arrived) == 2)  # max_inflight reached
        self.cluster.write_config(cfg(2), "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log())
        for i in range(2):
            self.assertEqual(mmtest.request(port, "POST", "/sh", {"i": i})[0], 200)
        mmtest.eventually(lambda: outcomes().get(("dropped",)) == 2)
        self.assertEqual(len(arrived), 2)
        release.set()
        mmtest.eventually(lambda: sum(outcomes().values()) == 4)
        self.assertEqual(len(arrived), 2)
        self.sigterm_and_wait(mm, 10)

    def test_reload_removing_an_experiment_while_its_request_is_in_flight(self):
        # The request routed by the old config finishes after the reload that
        # removed its experiment: it still counts into that experiment's
        # state, which must outlive the reload (it was freed under it: a
        # use-after-free the ASan build reports).
        champion = self.cluster.model_server("champion")
        port = mmtest.free_port()

        def config(with_slow):
            exps = [{"name": "slow", "match": {"path_prefix": "/sleep"}, "policy": "ab",
                     "arms": {"champion": 1}}] if with_slow else []
            exps.append({"name": "rest", "match": {"path_prefix": "/"}, "policy": "ab",
                         "arms": {"champion": 1}})
            return mmtest.base_config(port, {"champion": champion.port}, exps,
                                      limits={"drain_timeout_ms": 3000})

        mm = self.cluster.modelmux(config(True))
        out = {}
        t = threading.Thread(target=lambda: out.update(r=mmtest.request(port, "GET", "/sleep/1500")))
        t.start()
        mmtest.eventually(lambda: stats(champion.port)["requests"] >= 1, timeout=5)
        self.cluster.write_config(config(False), "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log(), timeout=5)
        t.join(10)
        self.assertEqual(out["r"][0], 200)
        self.assertEqual(out["r"][1]["x-modelmux-experiment"], "slow")
        status, headers, _ = mmtest.request(port, "GET", "/sleep/1")
        self.assertEqual((status, headers["x-modelmux-experiment"]), (200, "rest"))
        self.assertTrue(mm.alive(), mm.log()[-3000:])


    def test_reload_removing_an_arm_keeps_its_counters(self):
        # Prometheus counters never go back: an arm a reload removed keeps
        # its modelmux_requests_total samples (they vanished, so sums fell).
        champion, challenger = self.two_servers()
        port, admin = mmtest.free_port(), mmtest.free_port()

        def config(weights):
            cfg = ab_config(port, champion.port, challenger.port, weights)
            cfg["admin"] = {"listen": "127.0.0.1:%d" % admin}
            return cfg

        mm = self.cluster.modelmux(config({"champion": 0, "challenger": 1}))
        for _ in range(3):
            self.assertEqual(mmtest.request(port, "GET", "/x")[1]["x-modelmux-arm"], "challenger")
        self.cluster.write_config(config({"champion": 1}), "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log(), timeout=5)
        self.assertEqual(mmtest.request(port, "GET", "/x")[1]["x-modelmux-arm"], "champion")
        got = mmtest.metric_samples(admin, "modelmux_requests_total", "arm", "code")
        self.assertEqual(got, {("challenger", "200"): 3, ("champion", "200"): 1})


    def test_request_in_flight_across_a_reload_that_reorders_arms_counts_for_its_arm(self):
        # The reload reorders the arms; the store's state follows the names,
        # so the old router's arm index now names the other arm: the request
        # routed to the challenger must still count as the challenger's.
        champion, challenger = self.two_servers()
        port, admin = mmtest.free_port(), mmtest.free_port()

        def config(arms):
            cfg = mmtest.base_config(port, {"champion": champion.port, "challenger": challenger.port},
                                     [{"name": "ab", "match": {"path_prefix": "/"}, "policy": "ab",
                                       "arms": arms}], admin_port=admin)
            cfg["limits"] = {"drain_timeout_ms": 3000}
            return cfg

        mm = self.cluster.modelmux(config({"champion": 0, "challenger": 1}))
        out = {}
        t = threading.Thread(target=lambda: out.update(r=mmtest.request(port, "GET", "/sleep/1500")))
        t.start()
        mmtest.eventually(lambda: stats(challenger.port)["requests"] >= 1, timeout=5)
        self.cluster.write_config(config({"challenger": 1, "champion": 0}), "modelmux.json")
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "config reloaded" in mm.log(), timeout=5)
        t.join(10)
        self.assertEqual((out["r"][0], out["r"][1]["x-modelmux-arm"]), (200, "challenger"))
        view = json.loads(mmtest.request(admin, "GET", "/experiments/ab")[2])
        self.assertEqual({a["name"]: a["requests"] for a in view["arms"]}, {"challenger": 1, "champion": 0})


class Shutdown(Lifecycle):
    def test_sigterm_before_any_request_exits_0_promptly(self):
        champion, challenger, port, mm = self.ab_modelmux({"champion": 1, "challenger": 1})
        self.assertLess(self.sigterm_and_wait(mm, 5), 1.0)

    def test_error_answered_at_the_head_does_not_parse_the_unread_body_as_a_request(self):
        # A 404 decided from the head while the body is still unread: the
        # body bytes used to be parsed on, the same head seen again, and the
        # request's router reference leaked (LeakSanitizer at exit).
        champion, _ = self.two_servers()
        port = mmtest.free_port()
        cfg = mmtest.base_config(port, {"champion": champion.port},
                                 [{"name": "only", "match": {"path_prefix": "/v1"}, "policy": "ab",
                                   "arms": {"champion": 1}}])
        mm = self.cluster.modelmux(cfg)
        got = mmtest.raw(port, b'POST /elsewhere HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\n{"a":1}',
                         timeout=5)
        self.assertEqual(got.count(b"HTTP/1.1 "), 1, got)
        self.assertTrue(got.startswith(b"HTTP/1.1 404"), got)
        self.assertIn(b'"no_route"', got)
        self.assertLess(self.sigterm_and_wait(mm, 5), 1.0)

    def test_sigterm_while_idle_exits_0_promptly(self):
        # idle after a request: the pool holds a keep-alive connection to a
        # model server that is still up, which must not keep modelmux alive
        champion, challenger, port, mm = self.ab_modelmux({"champion": 1, "challenger": 1})
        self.assertEqual(mmtest.request(port, "GET", "/v1/rank")[0], 200)
        self.assertLess(self.sigterm_and_wait(mm, 5), 1.0)

    def test_repeated_stop_signals_still_exit_0(self):
        # DESIGN §2: SIGTERM ... exit 0. A supervisor may repeat the signal: one
        # that came after the signal handles were closed (while the request log
        # closed) found the default action again and killed modelmux. Racy, so
        # signals are repeated as fast as possible through several stops.
        champion, challenger = self.two_servers()
        for i in range(8):
            port = mmtest.free_port()
            cfg = ab_config(port, champion.port, challenger.port, {"champion": 1, "challenger": 1})
            cfg["log"] = {"requests": os.path.join(self.cluster.dir, "stop-%d.jsonl" % i)}
            mm = self.cluster.modelmux(cfg)
            mm.exit_checked = True
            for _ in range(3):
                self.assertEqual(mmtest.request(port, "GET", "/v1/rank")[0], 200)
            deadline = time.time() + 10
            sig = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            n = 0
            while mm.alive() and time.time() < deadline:
                try:
                    os.kill(mm.pid, sig[n % 3] if n else signal.SIGTERM)
                except ProcessLookupError:
                    break
                n += 1
                time.sleep(0.0005)
            self.assertEqual(mm.wait(5), 0, mm.log()[-2000:])

    def test_sigterm_closes_idle_keepalive_connections_and_exits_promptly(self):
        champion, challenger, port, mm = self.ab_modelmux({"champion": 1, "challenger": 1})
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"GET /v1/rank HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertTrue(s.recv(65536).startswith(b"HTTP/1.1 200"))
        # an idle client connection does not hold the drain
        self.assertLess(self.sigterm_and_wait(mm, 5), 1.0)
        self.assertEqual(s.recv(65536), b"")

    def test_sigterm_closes_every_idle_upstream_connection_and_exits_promptly(self):
        """Several pooled upstream connections, all idle: every one of them is
        closed on SIGTERM (only the first used to be), so the exit is prompt."""
        champion, challenger, port, mm = self.ab_modelmux({"champion": 1, "challenger": 0})
        threads = [threading.Thread(target=lambda: mmtest.request(port, "GET", "/sleep/300"))
                   for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        stats = json.loads(mmtest.request(champion.port, "GET", "/_stats")[2])
        self.assertGreaterEqual(stats["connections_open"], 4, stats)  # a pool of several
        self.assertLess(self.sigterm_and_wait(mm, 5), 1.0)

    def test_sigterm_finishes_in_flight_request_refuses_new_ones_and_exits_0(self):
        champion, challenger = self.two_servers()
        port = mmtest.free_port()
        drain_ms = 3000
        mm = self.cluster.modelmux(ab_config(port, champion.port, challenger.port,
                                             {"champion": 1, "challenger": 1}, drain_timeout_ms=drain_ms))
        result = {}

        def slow():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                result["answer"] = get(c, "/sleep/800", {"X-Request-Id": "in-flight"})
                c.close()
            except Exception as e:  # reported by the assertion below
                result["error"] = repr(e)

        t = threading.Thread(target=slow)
        t.start()
        # the request has reached a model server
        mmtest.eventually(lambda: stats(champion.port)["requests"] + stats(challenger.port)["requests"] == 1,
                          timeout=5, interval=0.01)
        t0 = time.time()
        mm.exit_checked = True
        mm.signal(signal.SIGTERM)
        self.assertTrue(self.wait_refused(port, 0.5), "still accepting after SIGTERM")
        self.assertTrue(mm.alive(), "exited before the in-flight request finished")
        t.join(10)
        status, arm, body = result.get("answer", (None, None, result.get("error")))
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["request_id"], "in-flight")
        try:
            code = mm.wait(drain_ms / 1000.0 + 2)
        except subprocess.TimeoutExpired:
            self.fail("modelmux still running %.1f s after SIGTERM (drain_timeout_ms %d); log:\n%s"
                      % (time.time() - t0, drain_ms, mm.log()[-2000:]))
        self.assertEqual(code, 0, mm.log()[-2000:])
        self.assertLess(time.time() - t0, drain_ms / 1000.0)

    def test_sigterm_answer_reaches_a_client_that_pipelined_more_behind_it(self):
        """DESIGN §2: SIGTERM lets in-flight requests finish. The client has
        sent a second request (with a body larger than modelmux buffers)
        behind the one in flight: the first answer ends the connection, and
        closing it with those bytes unread made the kernel send a RST, which
        can destroy the answer before the client reads it ("connection
        reset"). Now modelmux lingers (FIN, reads and drops the rest) while
        draining too. The client reads only after modelmux has exited, so the
        close has happened whatever the timing."""
        champion, challenger, port, mm = self.ab_modelmux({"champion": 1, "challenger": 0})
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET /sleep/300 HTTP/1.1\r\nHost: t\r\nX-Request-Id: first\r\n\r\n")
        mmtest.eventually(lambda: stats(champion.port)["requests"] == 1, timeout=5, interval=0.01)
        body = b"x" * 300000
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.sigterm_and_wait(mm, 10)
        data = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        except ConnectionResetError:
            self.fail("connection reset (RST) instead of closed after the answer; got %d bytes: %r"
                      % (len(data), data[:200]))
        head, _, rest = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), data[:200])
        self.assertIn(b"\r\nConnection: close", head)
        self.assertIn(b"X-Request-Id: first", head)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        self.assertEqual(len(rest), length, data[:400])  # that answer alone, whole

    def test_sighup_while_draining_is_ignored(self):
        """README (Signals): a SIGHUP while modelmux drains is ignored and the
        drain goes on. It used to reload: a new router, new upstream pools
        and a reopened request log in the middle of the stop."""
        champion, challenger = self.two_servers()
        port = mmtest.free_port()
        cfg = ab_config(port, champion.port, challenger.port, {"champion": 1, "challenger": 0})
        mm = self.cluster.modelmux(cfg)
        result = {}

        def slow():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                result["answer"] = get(c, "/sleep/1500")
                c.close()
            except Exception as e:  # reported by the assertion below
                result["error"] = repr(e)

        t = threading.Thread(target=slow)
        t.start()
        mmtest.eventually(lambda: stats(champion.port)["requests"] == 1, timeout=5, interval=0.01)
        mm.signal(signal.SIGTERM)
        mmtest.eventually(lambda: "stopping: draining" in mm.log(), timeout=5, interval=0.01)
        cfg["experiments"][0]["arms"] = {"champion": 0, "challenger": 1}
        self.cluster.write_config(cfg)
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "reload rejected, the previous config keeps serving: shutting down"
                          in mm.log(), timeout=5, interval=0.01)
        t.join(10)
        self.assertEqual(result.get("answer", (None, None, result.get("error")))[:2], (200, "champion"))
        mm.exit_checked = True
        self.assertEqual(mm.wait(10), 0, mm.log()[-2000:])
        self.assertNotIn("config reloaded", mm.log())

    def test_drain_is_bounded_by_drain_timeout(self):
        champion, challenger = self.two_servers()
        port = mmtest.free_port()
        drain_ms = 500
        mm = self.cluster.modelmux(ab_config(port, champion.port, challenger.port,
                                             {"champion": 1, "challenger": 1}, drain_timeout_ms=drain_ms))
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET /sleep/8000 HTTP/1.1\r\nHost: t\r\n\r\n")
        mmtest.eventually(lambda: stats(champion.port)["requests"] + stats(challenger.port)["requests"] == 1,
                          timeout=5, interval=0.01)
        elapsed = self.sigterm_and_wait(mm, 5)
        self.assertGreaterEqual(elapsed, drain_ms / 1000.0 * 0.9)
        self.assertLess(elapsed, drain_ms / 1000.0 + 1.0)


# ---------------------------------------------------------------- shadow

SHADOW_LATENCY_MS = 400


class Startup(Lifecycle):
    """Signals that come while modelmux is still starting (reading its
    config): a supervisor's SIGHUP or SIGTERM right after the start must get
    the action §2 gives them, never the default one (death by signal)."""

    def open_fifo_writer(self, path, proc, timeout=10.0):
        """Open the FIFO for writing once modelmux has opened it for reading
        (so it is inside config_load); fails if it exits first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.assertIsNone(proc.p.poll(), "modelmux exited before reading its config:\n" + proc.log())
            try:
                return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.01)
        self.fail("modelmux never opened its config")

    def start_reading_config_from_fifo(self):
        """modelmux started on a FIFO as its config, blocked reading it:
        (proc, fifo path, config text, port)."""
        champion, challenger = self.two_servers()
        port = mmtest.free_port()
        text = json.dumps(ab_config(port, champion.port, challenger.port, {"champion": 1, "challenger": 0}))
        fifo = self.cluster.path("config.fifo")
        os.mkfifo(fifo)
        mm = self.cluster.modelmux(fifo, wait=False)
        return mm, fifo, text, port

    def feed(self, fd, text):
        os.set_blocking(fd, True)
        os.write(fd, text.encode())
        os.close(fd)

    def test_a_failed_start_exits_1_with_its_reason_and_frees_everything(self):
        """A start that fails past reading the config (the port held by
        another process, a request log that cannot be opened, a listen name
        that does not resolve; with the memory store and with a Redis that
        is down) exits 1 with the reason, and under the sanitizer build
        leaves nothing for LeakSanitizer to report."""
        champion, challenger = self.two_servers()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        held = taken.getsockname()[1]
        blocker = self.cluster.path("a-file")
        open(blocker, "w").close()
        port = mmtest.free_port()
        redis = {"type": "redis", "host": "127.0.0.1", "port": mmtest.free_port()}
        cases = [
            ("port", {"listen": "127.0.0.1:%d" % held},
             "cannot listen on 127.0.0.1:%d: address already in use" % held),
            ("log", {"log": {"requests": os.path.join(blocker, "r.jsonl")}}, "r.jsonl"),
            ("name", {"listen": "no-such-host.invalid:%d" % port}, "does not resolve"),
            ("redis-port", {"listen": "127.0.0.1:%d" % held, "store": redis,
                            "log": {"requests": self.cluster.path("r.jsonl")}},
             "address already in use"),
        ]
        for name, extra, reason in cases:
            cfg = ab_config(port, champion.port, challenger.port, {"champion": 1, "challenger": 0})
            cfg.update(extra)
            path = self.cluster.write_config(cfg, "fail-%s.json" % name)
            r = subprocess.run([mmtest.MM_BIN, "-c", path], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(r.returncode, 1, (name, r.stderr[-3000:]))
            self.assertIn(reason, r.stderr, name)
            for m in SANITIZER_MARKERS:
                self.assertNotIn(m, r.stderr, (name, r.stderr[-4000:]))

    def test_sighup_while_the_config_is_read_at_start_reloads_once_started(self):
        mm, fifo, text, port = self.start_reading_config_from_fifo()
        fd = self.open_fifo_writer(fifo, mm)
        mm.signal(signal.SIGHUP)  # modelmux is inside config_load
        self.feed(fd, text)
        # Listening: the start has read the FIFO and closed it. The SIGHUP is
        # a reload, done once the handlers are in place: it reads the file
        # (the FIFO) again.
        mmtest.wait_port(port, mm.p)
        self.feed(self.open_fifo_writer(fifo, mm), text)
        mmtest.eventually(lambda: "config reloaded" in mm.log())
        self.assertEqual(mmtest.request(port, "GET", "/v1/rank")[0], 200)
        self.sigterm_and_wait(mm, 10)

    def test_stop_signal_while_the_config_is_read_at_start_exits_0(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            mm, fifo, text, port = self.start_reading_config_from_fifo()
            mm.exit_checked = True
            fd = self.open_fifo_writer(fifo, mm)
            mm.signal(sig)
            self.feed(fd, text)
            self.assertEqual(mm.wait(10), 0, "%s: %s" % (sig.name, mm.log()[-2000:]))
            self.assertIn("stopping", mm.log())
            os.unlink(fifo)

    def test_stop_signal_while_the_workers_parent_reads_the_config_exits_0(self):
        champion, challenger = self.two_servers()
        port = mmtest.free_port()
        text = json.dumps(ab_config(port, champion.port, challenger.port, {"champion": 1, "challenger": 0}))
        fifo = self.cluster.path("workers.fifo")
        os.mkfifo(fifo)
        mm = self.cluster.modelmux(fifo, "--workers", 2, wait=False)
        mm.exit_checked = True
        fd = self.open_fifo_writer(fifo, mm)
        mm.signal(signal.SIGTERM)  # the parent is inside config_load
        self.feed(fd, text)
        self.assertEqual(mm.wait(15), 0, mm.log()[-2000:])


def shadow_config(port, champion_port, shadow_port):
    """config/shadow.json with our ports, without admin and request log."""
    with open(os.path.join(mmtest.SOURCE_DIR, "config", "shadow.json")) as f:
        cfg = json.load(f)
    cfg.pop("admin", None)
    cfg.pop("log", None)
    cfg["listen"] = "127.0.0.1:%d" % port
    primary = cfg["experiments"][0]["primary"]
    (shadow,) = cfg["experiments"][0]["shadows"]
    cfg["upstreams"][primary]["url"] = "http://127.0.0.1:%d" % champion_port
    cfg["upstreams"][shadow]["url"] = "http://127.0.0.1:%d" % shadow_port
    cfg["limits"] = {"drain_timeout_ms": 3000}
    return cfg, cfg["experiments"][0]["match"]["path_prefix"]


class Shadow(Lifecycle):
    def test_mirrors_arrive_and_never_delay_the_primary(self):
        champion = self.cluster.model_server("champion")
        shadow = self.cluster.model_server("challenger", "--latency-ms", SHADOW_LATENCY_MS)
        port = mmtest.free_port()
        cfg, prefix = shadow_config(port, champion.port, shadow.port)
        self.cluster.modelmux(cfg, "--seed", 1)
        c = self.conn(port)
        n = 20
        slowest = 0.0
        for i in range(n):
            t0 = time.time()
            status, arm, body = get(c, prefix + "?i=%d" % i, {"X-Request-Id": "m-%d" % i})
            slowest = max(slowest, time.time() - t0)
            self.assertEqual((status, arm), (200, "champion"))
            self.assertEqual(json.loads(body)["model"], "champion")
        self.assertLess(slowest, SHADOW_LATENCY_MS / 1000.0 / 2,
                        "a primary answer waited for its mirror")
        # every mirror arrived (timeout_ms 1000 > latency 400, sample 1.0)
        mmtest.eventually(lambda: stats(shadow.port)["requests"] == n, timeout=5)
        self.assertEqual(stats(champion.port)["requests"], n)

    def test_mirrors_in_flight_across_a_reload_there_and_back_are_not_pooled(self):
        """A reload that changes the shadow experiment and one back to its
        first definition while mirrors are in flight: the counts start over
        at each, and those mirrors (they started before) are counted in
        modelmux_shadow_total only, not in the view's counts."""
        champion = self.cluster.model_server("champion")
        shadow = self.cluster.model_server("challenger", "--latency-ms", SHADOW_LATENCY_MS)
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg, prefix = shadow_config(port, champion.port, shadow.port)
        cfg["admin"] = {"listen": "127.0.0.1:%d" % admin}
        name = cfg["experiments"][0]["name"]
        changed = json.loads(json.dumps(cfg))
        changed["experiments"][0].setdefault("compare", {})["json_tolerance"] = 0.25
        mm = self.cluster.modelmux(cfg, "--seed", 1)

        def counts():
            v = json.loads(mmtest.request(admin, "GET", "/experiments/" + name)[2])
            s = v["policy_state"]["shadows"][0]
            return s["compared"] + s["errors"]

        def mirrored():
            text = mmtest.request(admin, "GET", "/metrics")[2].decode()
            return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                       if l.startswith("modelmux_shadow_total{"))
        def reload_to(c, n):
            self.cluster.write_config(c, os.path.basename(mm.config_path))
            mm.signal(signal.SIGHUP)
            mmtest.eventually(lambda: mm.log().count("config reloaded") == n)
        for i in range(3):
            self.assertEqual(get(self.conn(port), prefix + "?i=%d" % i)[0], 200)
        reload_to(changed, 1)
        reload_to(cfg, 2)
        mmtest.eventually(lambda: mirrored() == 3, timeout=5)
        self.assertEqual(counts(), 0)
        # After the reloads, counting goes on as usual.
        self.assertEqual(get(self.conn(port), prefix + "?i=9")[0], 200)
        mmtest.eventually(lambda: counts() == 1, timeout=5)

    def test_mirror_does_not_hold_a_closing_client_connection_open(self):
        champion = self.cluster.model_server("champion")
        shadow = self.cluster.model_server("challenger", "--latency-ms", SHADOW_LATENCY_MS)
        port = mmtest.free_port()
        cfg, prefix = shadow_config(port, champion.port, shadow.port)
        self.cluster.modelmux(cfg, "--seed", 1)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(s.close)
        t0 = time.time()
        s.sendall(b"GET " + prefix.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
        self.assertLess(time.time() - t0, SHADOW_LATENCY_MS / 1000.0 / 2, "closed only after the mirror")

    def test_dead_shadow_changes_nothing_for_the_client(self):
        champion = self.cluster.model_server("champion")
        live_shadow = self.cluster.model_server("challenger")
        live_port, dead_port = mmtest.free_port(), mmtest.free_port()
        live_cfg, prefix = shadow_config(live_port, champion.port, live_shadow.port)
        dead_cfg, _ = shadow_config(dead_port, champion.port, mmtest.free_port())
        self.cluster.modelmux(live_cfg, "--seed", 1, name="modelmux-live")
        self.cluster.modelmux(dead_cfg, "--seed", 1, name="modelmux-dead")
        live, dead = self.conn(live_port), self.conn(dead_port)
        for i in range(20):
            rid = {"X-Request-Id": "same-%d" % i}
            for c in (live, dead):
                c.request("POST", prefix, body=b'{"q": %d}' % i, headers=rid)
            answers = []
            for c in (live, dead):
                r = c.getresponse()
                answers.append((r.status, sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() != "date"),
                                r.read()))
            self.assertEqual(answers[0], answers[1])
            self.assertEqual(answers[1][0], 200)

    def test_mirrors_timing_out_in_reused_groups_are_counted_once_at_their_own_timeout(self):
        """Waves of concurrent mirrors, most of them failing or timing out, in
        two experiments with different mirror timeouts: every mirror is
        counted exactly once, a mirror times out at its own experiment's
        timeout_ms (the short ones do not wait for the long ones, the long
        ones are not cut at the short deadline), the groups reused from wave
        to wave leave no sanitizer report, and the exit stays prompt."""
        c = self.cluster
        champion = c.model_server("champion")
        slow = c.model_server("slow", "--latency-ms", 1500)
        fast = c.model_server("fast")
        port, admin = mmtest.free_port(), mmtest.free_port()
        log_path = c.path("requests.jsonl")
        short_ms, long_ms = 100, 800
        mirror = {"policy": "shadow", "primary": "champion", "max_inflight": 1000,
                  "compare": {"ignore": ["/model"]}}
        cfg = mmtest.base_config(
            port, {"champion": champion.port, "slow": {"url": "http://127.0.0.1:%d" % slow.port, "pool": 500},
                   "fast": fast.port, "dead": mmtest.free_port()},
            [dict(mirror, name="short", match={"path_prefix": "/short"},
                  shadows=["slow", "fast", "dead"], timeout_ms=short_ms),
             dict(mirror, name="long", match={"path_prefix": "/long"},
                  shadows=["slow", "fast"], timeout_ms=long_ms)],
            admin_port=admin, log={"requests": log_path}, limits={"drain_timeout_ms": 3000})
        mm = c.modelmux(cfg, "--seed", 1)
        threads, per_thread = 6, 10
        failures = []

        def client(k):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                for i in range(per_thread):
                    path = "/short" if (i + k) % 2 else "/long"
                    conn.request("POST", "%s?k=%d&i=%d" % (path, k, i), body=b'{"x": 1}',
                                 headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        failures.append(r.status)
            finally:
                conn.close()

        def outcomes():
            samples = mmtest.metric_samples(admin, "modelmux_shadow_total", "experiment", "arm", "outcome")
            return {k: int(v) for k, v in samples.items() if v}

        half = threads * per_thread // 2
        for wave in (1, 2):  # the second wave runs on groups the first one left for reuse
            ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            self.assertEqual(failures, [])
            n = wave * half
            want = {("short", "slow", "error"): n, ("short", "fast", "match"): n,
                    ("short", "dead", "error"): n,
                    ("long", "slow", "error"): n, ("long", "fast", "match"): n}
            mmtest.eventually(lambda: outcomes() == want, timeout=10)
        self.assertLess(self.sigterm_and_wait(mm, 5), 1.0)

        with open(log_path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(len(lines), 4 * half)
        for e in lines:
            (slow_leg,) = [s for s in e["shadow"] if s["arm"] == "slow"]
            self.assertEqual((slow_leg["status"], slow_leg["outcome"]), (0, "error"), e)
            ms = slow_leg["latency_us"] / 1000.0
            if e["path"].startswith("/short"):
                self.assertLess(ms, long_ms * 0.9, e)  # not held until a long deadline
            else:
                self.assertGreaterEqual(ms, long_ms * 0.9, e)  # not cut at a short one


if __name__ == "__main__":
    mmtest.main()
