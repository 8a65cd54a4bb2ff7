#!/usr/bin/env python3
"""test_redis_scenarios — a Redis that answers, but not what modelmux asked
for: error replies to the store's writes, and a handshake or a stream key it
refuses. What an operator of several instances relies on (DESIGN.md §6:
"nothing already acknowledged is lost"):

  1. a write Redis refuses (out of memory: maxmemory with noeviction) is kept
     and sent again until Redis takes it, never dropped; meanwhile routing
     goes on and the store says it is down (/readyz, modelmux_store_up), and
     once memory is freed every increment is in Redis exactly once;
  2. the sync script's first write records its sequence number, and the
     writes after it skip a command Redis refuses instead of stopping there,
     so a command refused in the middle (a hash field another tool overwrote
     with text, an ACL that forbids HINCRBYFLOAT) costs only its own
     increment, reported once, and never makes a retry count the rest twice;
  3. what keeps failing is logged once, with Redis's answer, and every store
     line carries the time and the process id (several workers share one
     stderr): a refused handshake retried with backoff, and a feedback stream
     key of another type.

Each test starts its own redis-server (they change its configuration), on a
free loopback port, stopped by PID.
"""
import os
import re
import signal
import time

import mmtest
from test_store_integration import (HOST, Redis, arm_figures, feedback, metric_value, readyz,
                                    send, view)

REDIS_SERVER = os.environ.get("MM_REDIS_SERVER", "redis-server")
SYNC_MS = 50
PREFIX = "mmrs"
ARMS = ("champion", "challenger")
# ten sync rounds and more: the old store dropped a write after 10 refusals
MANY_ROUNDS_S = 20 * SYNC_MS / 1000.0


class RedisScenarios(mmtest.MMTestCase):

    def setUp(self):
        super().setUp()
        self.champion = self.cluster.model_server("champion")
        self.challenger = self.cluster.model_server("challenger")
        self.r = None

    def tearDown(self):
        if self.r is not None:
            self.r.close()
        super().tearDown()
        for p in self.cluster.procs:
            if p.name.startswith("modelmux"):
                self.assertEqual(p.p.returncode, 0, p.log()[-3000:])
                for m in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                    self.assertNotIn(m, p.log())

    def start_redis(self, *directives):
        port = mmtest.free_port()
        argv = [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", self.cluster.dir] + list(directives)
        proc = self.cluster._start(argv, "redis-%d" % port)
        mmtest.wait_port(port, proc.p)
        return port

    def start_mm(self, redis_port, name="modelmux", **store):
        port, admin = mmtest.free_port(), mmtest.free_port()
        st = {"type": "redis", "host": HOST, "port": redis_port, "prefix": PREFIX,
              "sync_ms": SYNC_MS}
        st.update(store)
        exps = [{"name": "ab", "match": {"path_prefix": "/ab"}, "policy": "ab",
                 "arms": {"champion": 50, "challenger": 50}}]
        cfg = mmtest.base_config(port, {"champion": self.champion.port,
                                        "challenger": self.challenger.port},
                                 exps, admin_port=admin, store=st,
                                 limits={"drain_timeout_ms": 3000})
        return self.cluster.modelmux(cfg, "--seed", 5, name=name)

    def stop(self, mm):
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def arm(self, name):
        h = self.r.hgetall("%s:{ab}:arm:%s" % (PREFIX, name))
        return {k: float(v) for k, v in h.items()}

    def pulls(self):
        return {a: self.arm(a).get("pulls", 0) for a in ARMS}

    def served(self, mm, tag, n):
        """n requests on /ab: {arm: count}; every one answered 200."""
        out = send(mm.port, "/ab/x", ["%s-%d" % (tag, i) for i in range(n)])
        self.assertEqual({st for st, _, _ in out}, {200})
        got = dict.fromkeys(ARMS, 0)
        for _, arm, _ in out:
            got[arm] += 1
        return got, [rid for _, _, rid in out]

    def store_state(self, mm):
        return readyz(mm)[1]["store"], metric_value(mm, "modelmux_store_up")

    # -- 1

    def test_writes_refused_for_lack_of_memory_are_kept_until_redis_takes_them(self):
        port = self.start_redis("--maxmemory-policy", "noeviction")
        self.r = Redis(port)
        mm = self.start_mm(port)
        mmtest.eventually(lambda: self.store_state(mm) == ("up", 1))
        before, _ = self.served(mm, "m1", 20)
        mmtest.eventually(lambda: self.pulls() == before, timeout=5, interval=0.02)

        self.r("CONFIG", "SET", "maxmemory", "1")  # every write: OOM
        during, ids = self.served(mm, "m2", 40)
        events = [{"experiment": "ab", "arm": "champion", "reward": 1},
                  {"experiment": "ab", "arm": "challenger", "reward": 0.5}] * 3
        self.assertEqual(feedback(mm.port, events),
                         (202, {"accepted": 6, "unknown": 0, "invalid": 0}))
        time.sleep(MANY_ROUNDS_S)
        # refused, not lost: the store says so, Redis has nothing new, and
        # this instance still counts what it served
        self.assertEqual(self.store_state(mm), ("down", 0))
        self.assertEqual(self.pulls(), before)
        v = arm_figures(view(mm, "ab"))
        self.assertEqual({a: v[a][:2] for a in ARMS},
                         {a: (before[a] + during[a], 3) for a in ARMS})
        self.assertRegex(mm.log(), r"write of experiment ab refused: OOM")

        self.r("CONFIG", "SET", "maxmemory", "0")
        mmtest.eventually(lambda: self.store_state(mm) == ("up", 1), timeout=5, interval=0.02)
        want = {a: before[a] + during[a] for a in ARMS}
        mmtest.eventually(lambda: self.pulls() == want, timeout=5, interval=0.02)
        time.sleep(4 * SYNC_MS / 1000.0)
        self.assertEqual(self.pulls(), want)  # once, not once per refusal
        for a, reward_sum in (("champion", 3), ("challenger", 1.5)):
            got = self.arm(a)
            self.assertEqual((got.get("feedback"), got.get("reward_sum")), (3, reward_sum), a)
        for rid in ids:  # request ids served meanwhile are written too
            self.assertIsNotNone(self.r("GET", "%s:req:%s" % (PREFIX, rid)), rid)
        self.assertIn("write of experiment ab accepted again", mm.log())
        self.stop(mm)

    def test_a_field_another_tool_overwrote_costs_only_its_own_increments(self):
        port = self.start_redis()
        self.r = Redis(port)
        mm = self.start_mm(port)
        mmtest.eventually(lambda: self.store_state(mm) == ("up", 1))
        before, _ = self.served(mm, "c1", 20)
        mmtest.eventually(lambda: self.pulls() == before, timeout=5, interval=0.02)

        key = "%s:{ab}:arm:challenger" % PREFIX
        self.r("HSET", key, "pulls", "many")
        during = dict.fromkeys(ARMS, 0)
        for k in range(3):  # several writes, each with the bad field in it
            served, _ = self.served(mm, "c2-%d" % k, 20)
            for a in ARMS:
                during[a] += served[a]
            time.sleep(MANY_ROUNDS_S / 3)
        self.assertTrue(during["challenger"], during)
        # the rest of each write is applied, once: the champion's pulls come
        # before the bad field (the old script applied them on every retry)
        self.assertEqual(self.arm("champion").get("pulls"), before["champion"] + during["champion"])
        self.assertEqual(self.r("HGET", key, "pulls"), "many")
        log = mm.log()
        self.assertEqual(log.count("write of experiment ab applied in part"), 1, log)
        self.assertIn("HINCRBY %s pulls: ERR hash value is not an integer" % key, log)

        # the operator repairs the field: counting goes on from there
        self.r("HSET", key, "pulls", 100)
        after, _ = self.served(mm, "c3", 20)
        want = {"champion": before["champion"] + during["champion"] + after["champion"],
                "challenger": 100 + after["challenger"]}
        mmtest.eventually(lambda: self.pulls() == want, timeout=5, interval=0.02)
        time.sleep(4 * SYNC_MS / 1000.0)
        self.assertEqual(self.pulls(), want)
        self.assertEqual(self.store_state(mm), ("up", 1))
        self.stop(mm)

    # -- 2

    def test_an_error_in_the_middle_of_a_write_never_counts_twice(self):
        # an ACL that lets the script run but refuses one of its commands:
        # HINCRBYFLOAT (the reward sums), which comes after the pulls' and
        # the feedback counts' HINCRBY
        port = self.start_redis("--user", "default", "off",
                                "--user", "mm", "on", ">pw", "~*", "&*", "+@all",
                                "-hincrbyfloat")
        self.r = Redis(port)
        self.r("AUTH", "mm", "pw")
        mm = self.start_mm(port, username="mm", password="pw")
        mmtest.eventually(lambda: self.store_state(mm)[0] == "up")
        want = dict.fromkeys(ARMS, 0)
        for tag in ("e1", "e2"):  # two writes with a refused command each
            served, _ = self.served(mm, tag, 20)
            events = [{"experiment": "ab", "arm": a, "reward": 1} for a in ARMS]
            self.assertEqual(feedback(mm.port, events)[1]["accepted"], 2)
            for a in ARMS:
                want[a] += served[a]
            mmtest.eventually(lambda: self.pulls() == want, timeout=5, interval=0.02)
        time.sleep(MANY_ROUNDS_S)
        # every command Redis took was applied once; the reward sums are lost
        self.assertEqual(self.pulls(), want)
        for a in ARMS:
            self.assertEqual(self.arm(a).get("feedback"), 2, a)
            self.assertNotIn("reward_sum", self.arm(a), a)
        log = mm.log()
        self.assertEqual(log.count("write of experiment ab applied in part"), 1, log)
        self.assertIn("can't run this command", log)  # Redis's answer
        self.stop(mm)

    # -- 3

    def test_a_refused_handshake_is_logged_once(self):
        port = self.start_redis("--requirepass", "right")
        mm = self.start_mm(port)  # no password
        # retries back off 100 ms, 200, 400, 800, 1600, 3200: six by now
        time.sleep(3.5)
        self.assertEqual(self.store_state(mm), ("down", 0))
        log = mm.log()
        self.assertEqual(len(re.findall(r"refused: NOAUTH", log)), 1, log)
        self.assertRegex(log, r"Z modelmux\[%d\]: store: redis %s:%d: PING refused: NOAUTH"
                         % (mm.pid, re.escape(HOST), port))
        # once Redis takes it, the store is up and says so once
        self.r = Redis(port)
        self.r("AUTH", "right")
        self.r("CONFIG", "SET", "requirepass", "")
        mmtest.eventually(lambda: self.store_state(mm) == ("up", 1), timeout=10)
        self.assertEqual(mm.log().count("store: redis %s:%d: up" % (HOST, port)), 1)
        self.stop(mm)

    def test_a_feedback_key_of_another_type_is_reported_once_and_then_used(self):
        port = self.start_redis()
        self.r = Redis(port)
        stream = PREFIX + ":feedback"
        self.r("SET", stream, "not a stream")
        mm = self.start_mm(port)
        mmtest.eventually(lambda: self.store_state(mm) == ("up", 1))
        served, _ = self.served(mm, "s1", 10)
        time.sleep(MANY_ROUNDS_S)
        self.assertEqual(self.pulls(), served)  # the rest of the store works
        log = mm.log()
        self.assertEqual(log.count("XGROUP CREATE %s" % stream), 1, log)
        self.assertIn("WRONGTYPE", log)
        # the key is fixed: the group is created and entries are applied
        self.r("DEL", stream)
        mmtest.eventually(lambda: self.r("EXISTS", stream) == 1, timeout=5, interval=0.02)
        self.r("XADD", stream, "*", "experiment", "ab", "arm", "champion", "reward", "1")
        mmtest.eventually(lambda: self.arm("champion").get("feedback") == 1, timeout=5,
                          interval=0.02)
        self.stop(mm)


if __name__ == "__main__":
    mmtest.main()
