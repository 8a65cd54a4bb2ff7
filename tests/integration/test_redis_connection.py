"""How the Redis store connects: AUTH with a password (from the config or from
the environment), AUTH with an ACL user, SELECT of a database, a refused AUTH
(reported, routing goes on, the password never logged), and a host name
resolved off the event loop (an unresolvable one is reported and retried),
and a failover: an address that leads to a replica (READONLY) is connected
again until it leads to the primary. With store.sentinel the primary is the
one a Sentinel names (a node that does not answer is skipped), and a
failover the Sentinel makes is followed. A reload moves the store to
another Redis, to Sentinels and back, with what it learned.
Each test starts its own redis-server, since the suite's shared one has no
password."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import mmtest

REDIS_SERVER = os.environ.get("MM_REDIS_SERVER", "redis-server")
REDIS_CLI = os.path.join(os.path.dirname(REDIS_SERVER), "redis-cli") \
    if os.path.dirname(REDIS_SERVER) else "redis-cli"


class SwitchingRelay:
    """A TCP relay on a loopback port that sends each new connection to the
    current target port: what a DNS name or a virtual IP does when a
    failover moves the primary. Connections already made stay where they
    are."""

    def __init__(self, target):
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.sock.close()
        for s in self.conns:
            s.close()


class RedisConnection(mmtest.MMTestCase):
    def start_redis(self, *directives):
        port = mmtest.free_port()
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.cluster.dir] + list(directives)
        proc = self.cluster._start(argv, "redis-" + str(port))
        mmtest.wait_port(port, proc.p)
        return port

    def cli(self, port, auth, *args, db=0):
        argv = [REDIS_CLI, "-p", str(port), "-n", str(db), "--no-auth-warning"] + auth + list(args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.split()

    def start_mm(self, store, **experiment):
        ups = {"champion": self.cluster.model_server("champion").port,
               "challenger": self.cluster.model_server("challenger").port}
        port, admin = mmtest.free_port(), mmtest.free_port()
        if store.get("type") != "memory":
            store = dict({"type": "redis", "sync_ms": 20}, **store)
        cfg = mmtest.base_config(port, ups, [dict({"name": "split", "match": {"path_prefix": "/"},
                                                   "policy": "ab",
                                                   "arms": {"champion": 50, "challenger": 50}},
                                                  **experiment)],
                                 admin_port=admin, store=store)
        return self.cluster.modelmux(cfg, "--seed", 1)

    def readyz_store(self, mm):
        return json.loads(mmtest.request(mm.admin_port, "GET", "/readyz")[2])["store"]

    def pulls(self, port, auth, db=0):
        total = 0
        for arm in ("champion", "challenger"):
            got = self.cli(port, auth, "HGET", "modelmux:{split}:arm:" + arm, "pulls", db=db)
            total += int(got[0]) if got else 0
        return total

    def send(self, mm, n):
        for _ in range(n):
            self.assertEqual(mmtest.request(mm.port, "POST", "/predict", body={"x": 1})[0], 200)

    def test_password_from_the_config(self):
        port = self.start_redis("--requirepass", "s3cret pass")
        mm = self.start_mm({"port": port, "password": "s3cret pass"})
        mmtest.eventually(lambda: self.readyz_store(mm) == "up")
        self.send(mm, 20)
        mmtest.eventually(lambda: self.pulls(port, ["-a", "s3cret pass"]) == 20)

    def test_acl_user_password_from_the_environment_and_a_database(self):
        port = self.start_redis("--user", "default", "off",
                                "--user", "mm", "on", ">mm-pw", "~*", "&*", "+@all")
        os.environ["MM_TEST_REDIS_PASSWORD"] = "mm-pw"
        try:
            mm = self.start_mm({"port": port, "username": "mm",
                                "password_env": "MM_TEST_REDIS_PASSWORD", "db": 3})
        finally:
            del os.environ["MM_TEST_REDIS_PASSWORD"]
        mmtest.eventually(lambda: self.readyz_store(mm) == "up")
        self.send(mm, 12)
        auth = ["--user", "mm", "--pass", "mm-pw"]
        mmtest.eventually(lambda: self.pulls(port, auth, db=3) == 12)
        self.assertEqual(self.cli(port, auth, "DBSIZE", db=0), ["0"], "nothing written to db 0")
        # The feedback stream is read through the same authenticated connection.
        client = os.path.join(mmtest.SOURCE_DIR, "examples", "feedback_client.py")
        env = dict(os.environ, MM_PW="mm-pw")
        out = subprocess.run(["python3", client, "--redis", "127.0.0.1:%d" % port,
                              "--redis-user", "mm", "--redis-password-env", "MM_PW",
                              "--redis-db", "3", "--experiment", "split", "--arm", "champion",
                              "--reward", "1"], capture_output=True, text=True, env=env,
                             timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        mmtest.eventually(lambda: self.cli(port, auth, "HGET", "modelmux:{split}:arm:champion",
                                           "feedback", db=3) == ["1"])

    def test_refused_auth_is_reported_and_routing_goes_on(self):
        port = self.start_redis("--requirepass", "right")
        mm = self.start_mm({"port": port, "password": "wrong-secret"})
        time.sleep(0.5)
        self.assertEqual(self.readyz_store(mm), "down")
        self.send(mm, 5)  # routing goes on while the store is unreachable
        log = mmtest.eventually(lambda: "AUTH refused" in mm.log() and mm.log())
        self.assertIn("WRONGPASS", log)
        self.assertNotIn("wrong-secret", log)
        self.assertEqual(self.pulls(port, ["-a", "right"]), 0)

    def test_host_name(self):
        port = self.start_redis("--requirepass", "pw")
        mm = self.start_mm({"host": "localhost", "port": port, "password": "pw"})
        mmtest.eventually(lambda: self.readyz_store(mm) == "up")
        self.send(mm, 7)
        mmtest.eventually(lambda: self.pulls(port, ["-a", "pw"]) == 7)

    def test_unresolvable_host_name_is_reported_and_routing_goes_on(self):
        mm = self.start_mm({"host": "no-such-host.invalid", "port": 6379})
        self.send(mm, 5)
        self.assertEqual(self.readyz_store(mm), "down")
        mmtest.eventually(lambda: "cannot resolve no-such-host.invalid" in mm.log(), timeout=30)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=30), 0)

    def test_a_replica_is_left_for_the_primary_the_address_leads_to_after_a_failover(self):
        primary = self.start_redis()
        replica = self.start_redis("--replicaof", "127.0.0.1", str(primary))
        mmtest.eventually(lambda: "master_link_status:up" in
                          " ".join(self.cli(replica, [], "INFO", "replication")))
        relay = SwitchingRelay(replica)  # the address leads to the replica for now
        self.addCleanup(relay.close)
        mm = self.start_mm({"port": relay.port})
        self.send(mm, 10)
        mmtest.eventually(lambda: "read-only replica (READONLY)" in mm.log())
        time.sleep(1.5)  # several reconnects: logged once, not once each
        log = mm.log()
        self.assertEqual(log.count("read-only replica (READONLY)"), 1, log)
        self.assertLessEqual(log.count("down ("), 1, log)
        self.assertEqual(self.readyz_store(mm), "down")
        self.assertEqual(self.pulls(primary, []), 0)
        relay.target = primary  # the failover: the address now leads to the primary
        mmtest.eventually(lambda: self.pulls(primary, []) == 10, timeout=20)
        mmtest.eventually(lambda: self.readyz_store(mm) == "up")
        self.assertIn("accepted again", mm.log())
        self.send(mm, 5)
        mmtest.eventually(lambda: self.pulls(primary, []) == 15)

    def start_sentinel(self, primary, extra=""):
        """A Sentinel watching `primary` as master "mm" (quorum 1), with the
        `extra` lines of config: its port."""
        port = mmtest.free_port()
        conf = self.cluster.path("sentinel-%d.conf" % port)  # Sentinel rewrites its file
        with open(conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\n"
                    "sentinel monitor mm 127.0.0.1 %d 1\n"
                    "sentinel down-after-milliseconds mm 1000\n"
                    "sentinel failover-timeout mm 5000\n%s" % (port, self.cluster.dir, primary,
                                                                 extra))
        proc = self.cluster._start([REDIS_SERVER, conf, "--sentinel"], "sentinel-" + str(port))
        mmtest.wait_port(port, proc.p)
        return port

    def test_sentinel_names_the_primary_and_a_failover_is_followed(self):
        primary = self.start_redis()
        replica = self.start_redis("--replicaof", "127.0.0.1", str(primary))
        sentinel = self.start_sentinel(primary)
        mmtest.eventually(lambda: "master_link_status:up" in
                          " ".join(self.cli(replica, [], "INFO", "replication")))
        mmtest.eventually(lambda: str(replica) in " ".join(
            self.cli(sentinel, [], "SENTINEL", "replicas", "mm")), timeout=20)
        dead = mmtest.free_port()  # a node that does not answer is skipped
        mm = self.start_mm({"sentinel": {"master": "mm", "nodes": [
            "127.0.0.1:%d" % dead, "127.0.0.1:%d" % sentinel]}})
        self.send(mm, 10)
        mmtest.eventually(lambda: self.pulls(primary, []) == 10)
        self.assertEqual(self.readyz_store(mm), "up")
        self.assertIn("store: redis mm (Sentinel) at 127.0.0.1:%d: the Sentinels name this the "
                      "primary" % primary, mm.log())

        self.assertEqual(self.cli(sentinel, [], "SENTINEL", "FAILOVER", "mm"), ["OK"])
        # The old primary is made a replica: its READONLY sends modelmux back
        # to the Sentinels, which name the new one.
        mmtest.eventually(lambda: "at 127.0.0.1:%d: the Sentinels name this the primary"
                          % replica in mm.log(), timeout=30)
        self.send(mm, 5)
        mmtest.eventually(lambda: self.pulls(replica, []) == 15, timeout=20)
        mmtest.eventually(lambda: self.readyz_store(mm) == "up")
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_sentinels_with_a_password(self):
        primary = self.start_redis()
        sentinel = self.start_sentinel(primary, "requirepass s3nt\n")
        os.environ["MM_TEST_SENTINEL_PW"] = "s3nt"  # read when the config is loaded
        self.addCleanup(os.environ.pop, "MM_TEST_SENTINEL_PW")
        mm = self.start_mm({"sentinel": {"master": "mm", "nodes": ["127.0.0.1:%d" % sentinel],
                                         "password_env": "MM_TEST_SENTINEL_PW"}})
        self.send(mm, 4)
        mmtest.eventually(lambda: self.pulls(primary, []) == 4)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])
        wrong = self.start_mm({"sentinel": {"master": "mm", "nodes": ["127.0.0.1:%d" % sentinel],
                                            "password": "nope"}})
        mmtest.eventually(lambda: "no Sentinel named the primary: 127.0.0.1:%d: AUTH refused: "
                          "WRONGPASS" % sentinel in wrong.log())
        self.assertNotIn("nope", wrong.log())
        self.assertEqual(self.readyz_store(wrong), "down")
        wrong.signal(signal.SIGTERM)
        self.assertEqual(wrong.wait(timeout=15), 0, wrong.log()[-3000:])

    def test_no_sentinel_answering_is_reported_and_routing_goes_on(self):
        dead = mmtest.free_port()
        mm = self.start_mm({"sentinel": {"master": "mm", "nodes": ["127.0.0.1:%d" % dead]}})
        self.send(mm, 5)
        mmtest.eventually(lambda: "store: redis mm (Sentinel): down (no Sentinel named the "
                          "primary: 127.0.0.1:%d: Connection refused); retrying" % dead
                          in mm.log())
        self.assertEqual(self.readyz_store(mm), "down")
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])


    def reload_store(self, mm, store):
        """Rewrite mm's config with these store settings and POST /reload."""
        with open(mm.config_path) as f:
            cfg = json.load(f)
        cfg["store"] = dict({"type": "redis", "sync_ms": 20}, **store)
        with open(mm.config_path, "w") as f:
            json.dump(cfg, f)
        st, _, body = mmtest.request(mm.admin_port, "POST", "/reload")
        self.assertEqual((st, json.loads(body)), (200, {"status": "reloaded"}))

    def weights(self, port, auth):
        got = self.cli(port, auth, "HGET", "modelmux:{split}:control", "weights")
        return json.loads(got[0]) if got else None

    def test_an_unusable_control_field_is_logged_once(self):
        """A control field written by hand that modelmux cannot use keeps the
        instance's own value (docs/store.md), and says so once: an instance
        started since keeps its config's, and the fleet would diverge
        without a word."""
        port = self.start_redis()
        mm = self.start_mm({"port": port})
        mmtest.eventually(lambda: self.cli(port, [], "HGET", "modelmux:{split}:control",
                                           "version") != [])
        self.cli(port, [], "HSET", "modelmux:{split}:control", "weights", "notjson", "state",
                 "bogus")
        line = ("store: experiment split: Redis's control holds unusable fields (weights, "
                "state); this instance keeps its own values for them (an operator's change "
                "through the admin API writes them anew)\n")
        mmtest.eventually(lambda: line in mm.log(), timeout=5)
        time.sleep(0.3)  # some 15 sync rounds more
        self.assertEqual(mm.log().count(line), 1)
        # an operator's change writes them anew, the ones it did not change too
        st, _, _ = mmtest.request(mm.admin_port, "PUT", "/experiments/split/weights",
                                  {"champion": 30, "challenger": 70})
        self.assertEqual(st, 200)
        self.assertEqual(self.weights(port, []), {"champion": 30, "challenger": 70})
        self.assertEqual(self.cli(port, [], "HGET", "modelmux:{split}:control", "state"),
                         ["running"])
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_reload_moves_the_store_with_what_it_learned(self):
        """A reload to another Redis (first with a wrong password: reported,
        routing goes on) takes what this instance learned there, the
        operator's weights and the increments counted meanwhile included,
        and leaves the old Redis alone."""
        old = self.start_redis()
        new = self.start_redis("--requirepass", "n3w")
        mm = self.start_mm({"port": old})
        self.send(mm, 20)
        st, _, body = mmtest.request(mm.admin_port, "PUT", "/experiments/split/weights",
                                     body={"champion": 100, "challenger": 0})
        self.assertEqual(st, 200, body)
        mmtest.eventually(lambda: self.pulls(old, []) == 20 and
                          self.weights(old, []) == {"champion": 100, "challenger": 0})

        self.reload_store(mm, {"port": new, "password": "wrong"})
        mmtest.eventually(lambda: "store: redis 127.0.0.1:%d: AUTH refused: WRONGPASS" % new
                          in mm.log())
        self.assertEqual(self.readyz_store(mm), "down")
        self.assertEqual(mmtest.arms_served(mm.port, "/predict", 5), {"champion"})

        self.reload_store(mm, {"port": new, "password": "n3w"})
        mmtest.eventually(lambda: self.pulls(new, ["-a", "n3w"]) == 25)
        self.assertEqual(self.weights(new, ["-a", "n3w"]), {"champion": 100, "challenger": 0})
        mmtest.eventually(lambda: self.readyz_store(mm) == "up")
        self.assertEqual(self.pulls(old, []), 20)
        log = mm.log()
        self.assertIn("store: redis 127.0.0.1:%d: reload: moving to 127.0.0.1:%d, db 0, prefix "
                      "modelmux\n" % (old, new), log)
        self.assertIn("store: redis 127.0.0.1:%d: up\n" % new, log)
        self.assertNotIn("n3w", log)
        self.assertNotIn("wrong", log)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_reload_from_the_memory_store_to_redis(self):
        """A process started on the memory store moves to Redis at a reload,
        with what it learned, and then consumes the feedback stream."""
        port = self.start_redis()
        mm = self.start_mm({"type": "memory"}, policy="thompson",
                           arms=["champion", "challenger"], reward="bernoulli")
        self.send(mm, 12)
        view = lambda: json.loads(mmtest.request(mm.admin_port, "GET", "/experiments/split")[2])
        self.assertEqual(sum(a["requests"] for a in view()["arms"]), 12)

        self.reload_store(mm, {"port": port})
        mmtest.eventually(lambda: self.pulls(port, []) == 12)
        self.assertIn("store: reload: moving from memory to redis 127.0.0.1:%d, db 0, prefix "
                      "modelmux\n" % port, mm.log())
        self.assertEqual(self.readyz_store(mm), "up")
        self.cli(port, [], "XADD", "modelmux:feedback", "*", "experiment", "split", "arm",
                 "challenger", "reward", "1")
        mmtest.eventually(lambda: self.cli(port, [], "HGET", "modelmux:{split}:arm:challenger",
                                           "successes") == ["1"])
        self.assertEqual(sum(a["requests"] for a in view()["arms"]), 12)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_reload_to_redis_that_redefines_an_experiment_writes_the_config_control(self):
        """DESIGN.md §5: a reload that changes an experiment's definition ends
        the operator's change, also one found in the Redis the same reload
        moves a memory store to (those weights stayed in force)."""
        port = self.start_redis()
        self.cli(port, [], "HSET", "modelmux:{split}:control", "weights",
                 '{"champion":10,"challenger":90}', "state", "running", "canary_step", "0",
                 "version", "5")
        mm = self.start_mm({"type": "memory"})
        with open(mm.config_path) as f:
            cfg = json.load(f)
        cfg["experiments"][0]["arms"] = {"champion": 60, "challenger": 40}
        with open(mm.config_path, "w") as f:
            json.dump(cfg, f)
        self.reload_store(mm, {"port": port})
        mmtest.eventually(lambda: self.cli(port, [], "HGET", "modelmux:{split}:control",
                                           "version") == ["6"])
        self.assertEqual(self.weights(port, []), {})
        view = json.loads(mmtest.request(mm.admin_port, "GET", "/experiments/split")[2])
        self.assertEqual(view["policy_state"]["weights"]["source"], "config")
        self.assertEqual(view["policy_state"]["weights"]["effective"],
                         {"champion": 60.0, "challenger": 40.0})
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

    def test_a_reload_moves_the_store_to_and_from_sentinels(self):
        """A reload from a Redis address to Sentinels, and back, with a
        prefix change: each place gets what was learned before it."""
        plain = self.start_redis()
        primary = self.start_redis()
        sentinel = self.start_sentinel(primary)
        mm = self.start_mm({"port": plain})
        self.send(mm, 6)
        mmtest.eventually(lambda: self.pulls(plain, []) == 6)
        self.reload_store(mm, {"sentinel": {"master": "mm", "nodes": ["localhost:%d" % sentinel]}})
        self.send(mm, 4)
        mmtest.eventually(lambda: self.pulls(primary, []) == 10)
        self.assertIn("store: redis mm (Sentinel) at 127.0.0.1:%d: the Sentinels name this the "
                      "primary" % primary, mm.log())
        self.reload_store(mm, {"port": plain, "prefix": "again"})
        self.send(mm, 1)
        key = "again:{split}:arm:"
        mmtest.eventually(lambda: sum(int((self.cli(plain, [], "HGET", key + arm, "pulls") or
                                           ["0"])[0]) for arm in ("champion", "challenger")) == 11)
        self.assertEqual(self.pulls(plain, []), 6)
        self.assertEqual(self.pulls(primary, []), 10)
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=15), 0, mm.log()[-3000:])

if __name__ == "__main__":
    mmtest.main()
