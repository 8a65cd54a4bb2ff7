"""test_cli — the command line contract (DESIGN.md §2) and --check's errors.

`--check` is what operators run before a deploy and what a reload relies on:
every shipped example must pass it, and every mistake must fail it with
exit status 1 and one `FILE:LINE:COL: message` line that points at the
offending token of the file. The configs below are written as literal text so
that the expected line and column can be read off the source of this test.
"""
import glob
import json
import os
import re
import subprocess
import tempfile
import unittest

import mmtest

# Every broken config below is this file with one line changed. Line numbers:
#  1 {
#  2   "listen": "127.0.0.1:18080",
#  3   "upstreams": {
#  4     "champion": {"url": "http://127.0.0.1:7001"},
#  5     "challenger": {"url": "http://127.0.0.1:7002"}
#  6   },
#  7   "experiments": [
#  8     {"name": "ab", "match": {"path_prefix": "/v1/"},
#  9      "policy": "ab", "arms": {"champion": 90, "challenger": 10}}
# 10   ]
# 11 }
GOOD = """{
  "listen": "127.0.0.1:18080",
  "upstreams": {
    "champion": {"url": "http://127.0.0.1:7001"},
    "challenger": {"url": "http://127.0.0.1:7002"}
  },
  "experiments": [
    {"name": "ab", "match": {"path_prefix": "/v1/"},
     "policy": "ab", "arms": {"champion": 90, "challenger": 10}}
  ]
}
"""

LINE4 = '    "champion": {"url": "http://127.0.0.1:7001"},'
LINE9 = '     "policy": "ab", "arms": {"champion": 90, "challenger": 10}}'


def variant(old, new, text=GOOD):
    assert text.count(old) == 1, old
    return text.replace(old, new)


def run(*args, timeout=20):
    return subprocess.run([mmtest.MM_BIN] + list(args), cwd=mmtest.SOURCE_DIR, capture_output=True,
                          text=True, timeout=timeout)


class CheckAccepts(unittest.TestCase):
    def test_default_config_passes_check(self):
        r = run("--check", "-c", "config/modelmux.json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")

    def test_every_example_config_passes_check(self):
        paths = sorted(glob.glob(os.path.join(mmtest.SOURCE_DIR, "config", "*.json")))
        self.assertGreater(len(paths), 1)
        for path in paths:
            with self.subTest(config=os.path.basename(path)):
                r = run("--check", "-c", path)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertNotIn("warning", r.stderr)

    def test_an_experiment_that_can_never_be_chosen_is_warned_about(self):
        # Valid (the first match wins, DESIGN.md §3), but not what was meant:
        # said by --check, at the start and at a reload, as nginx says of
        # a duplicate location (which it refuses).
        exps = [{"name": n, "match": m, "policy": "ab", "arms": {"champion": 1}} for n, m in [
            ("all", {"path_prefix": "/v1"}), ("same", {"path_prefix": "/v1"}),
            ("narrower", {"path_prefix": "/v1/rank", "headers": {"X-Beta": "1"}}),
            ("other-host", {"path_prefix": "/w", "host": "a.example"}),
            ("wider", {"path_prefix": "/w"})]]
        port = mmtest.free_port()
        cfg = mmtest.base_config(port, {"champion": 7001}, exps)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "dead.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            r = run("--check", "-c", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            want = ["%s: warning: experiment \"%s\" can never be chosen: experiment \"all\", "
                    "listed before it, matches every request it would (the first match wins)"
                    % (path, n) for n in ("same", "narrower")]
            self.assertEqual(r.stderr.splitlines(), want)

    def test_base_config_of_these_tests_passes_check(self):
        # The broken variants below differ from this one in one line only.
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "good.json")
            with open(path, "w") as f:
                f.write(GOOD)
            r = run("--check", "-c", path)
            self.assertEqual(r.returncode, 0, r.stderr)


class CheckRejects(unittest.TestCase):
    """Each case: exit 1, and stderr is `FILE:LINE:COL: message`."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def assertCheckFails(self, text, line, col, *words):
        path = os.path.join(self.dir.name, "bad.json")
        with open(path, "w") as f:
            f.write(text)
        r = run("--check", "-c", path)
        self.assertEqual(r.returncode, 1, "stdout=%r stderr=%r" % (r.stdout, r.stderr))
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        m = re.match(r"^(.*):(\d+):(\d+): (.+)$", lines[0])
        self.assertIsNotNone(m, "not FILE:LINE:COL: message: %r" % lines[0])
        self.assertEqual(m.group(1), path)
        self.assertEqual((int(m.group(2)), int(m.group(3))), (line, col), lines[0])
        for w in words:
            self.assertIn(w, m.group(4))
        return m.group(4)

    def test_syntax_error_points_at_the_unexpected_token(self):
        # A trailing comma: the '}' after it is at line 9, column 64.
        text = variant(LINE9, LINE9.replace('"challenger": 10}', '"challenger": 10,}'))
        self.assertCheckFails(text, 9, 64)

    def test_unknown_upstream_in_experiment_points_at_the_arm(self):
        # "champ": 10 — the unknown arm's name (the key) is at column 47.
        text = variant(LINE9, LINE9.replace('"challenger"', '"champ"'))
        self.assertCheckFails(text, 9, 47, "champ", "unknown upstream")

    def test_bad_url_points_at_the_url(self):
        text = variant(LINE4, LINE4.replace("http://", "http//"))
        self.assertCheckFails(text, 4, 25, "upstreams.champion.url", "http//127.0.0.1:7001")

    def test_https_url_is_refused(self):
        text = variant(LINE4, LINE4.replace("http://", "https://"))
        self.assertCheckFails(text, 4, 25, "upstreams.champion.url")

    def test_negative_weight_points_at_the_weight(self):
        text = variant(LINE9, LINE9.replace("10}}", "-10}}"))
        self.assertCheckFails(text, 9, 61, "-10")

    def test_all_zero_weights_point_at_the_arms_object(self):
        text = variant(LINE9, LINE9.replace("90", "0").replace("10}}", "0}}"))
        self.assertCheckFails(text, 9, 30, "experiments[0].arms")

    def test_unknown_policy_points_at_the_policy_name(self):
        text = variant(LINE9, LINE9.replace('"policy": "ab"', '"policy": "abtest"'))
        self.assertCheckFails(text, 9, 16, "abtest", "unknown policy")

    def test_unknown_key_points_at_the_key(self):
        text = variant(LINE4, LINE4.replace('"}', '", "timeout": 5}'))
        self.assertCheckFails(text, 4, 50, "unknown key", "upstreams.champion.timeout")

    def test_a_long_key_is_reported_at_itself(self):
        # Keys of 1022 to 5000 characters: the position is the key's opening
        # quote (line 2, column 3), whatever its length; the name is shown
        # cut, ending in "...".
        for n in (1022, 1023, 1024, 5000):
            key = "k" * n
            text = variant('  "listen": "127.0.0.1:18080",', '  "%s": 1,' % key)
            msg = self.assertCheckFails(text, 2, 3, "unknown key " + "k" * 200 + "...")
            self.assertNotIn("k" * 201, msg)
            # an upstream name, and a match.headers name
            text = variant(LINE4, '    "%s": {"url": "http://127.0.0.1:7001"},' % key)
            self.assertCheckFails(text, 4, 5, "bad upstream name", "upstreams.kkk")
            text = variant('"path_prefix": "/v1/"}',
                           '"path_prefix": "/v1/", "headers": {"%s": "x"}}' % key)
            self.assertCheckFails(text, 8, 65, "bad header name", "headers.kkk")

    def test_sticky_null_is_refused_by_ab_as_by_canary(self):
        text = variant(LINE9, LINE9[:-1] + ', "sticky": null}')
        self.assertCheckFails(text, 9, 76, "experiments[0].sticky must be an object, got null")
        text = variant(LINE9, '     "policy": "canary", "champion": "champion", '
                              '"canary": "challenger", "sticky": null}')
        self.assertCheckFails(text, 9, 84, "experiments[0].sticky must be an object, got null")

    # What startup would trip over outside the file, as nginx -t checks it:
    # these passed --check and then modelmux did not start.

    def test_unresolvable_upstream_host_points_at_the_url(self):
        text = variant(LINE4, LINE4.replace("127.0.0.1:7001", "nonexistent.invalid:80"))
        self.assertCheckFails(text, 4, 25, "upstreams.champion.url",
                              "cannot resolve nonexistent.invalid")

    def test_unresolvable_listen_host_points_at_the_address(self):
        text = variant('"listen": "127.0.0.1:18080"', '"listen": "nonexistent.invalid:18080"')
        self.assertCheckFails(text, 2, 13, "listen", "cannot resolve nonexistent.invalid")

    def test_request_log_that_cannot_be_opened_points_at_the_path(self):
        # a directory: startup said "cannot open request log DIR: Is a directory"
        text = variant('  "listen": "127.0.0.1:18080",',
                       '  "listen": "127.0.0.1:18080", "log": {"requests": "%s"},' % self.dir.name)
        self.assertCheckFails(text, 2, 52, "log.requests",
                              "cannot open request log %s: Is a directory" % self.dir.name)

    def test_request_log_is_opened_for_appending_as_startup_does(self):
        """--check opens the log as startup does: a file (and directories)
        that did not exist are created, as nginx -t creates its logs; one
        that exists is left as it was."""
        log = os.path.join(self.dir.name, "sub", "dir", "requests.jsonl")
        text = variant('  "listen": "127.0.0.1:18080",',
                       '  "listen": "127.0.0.1:18080", "log": {"requests": "%s"},' % log)
        path = os.path.join(self.dir.name, "ok.json")
        with open(path, "w") as f:
            f.write(text)
        r = run("--check", "-c", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.path.getsize(log), 0)
        with open(log, "w") as f:
            f.write("{}\n")
        self.assertEqual(run("--check", "-c", path).returncode, 0)
        with open(log) as f:
            self.assertEqual(f.read(), "{}\n")

    def test_public_admin_listener_without_token_is_refused(self):
        text = variant('  "listen": "127.0.0.1:18080",\n',
                       '  "listen": "127.0.0.1:18080", "admin": {"listen": "0.0.0.0:19090"},\n')
        self.assertCheckFails(text, 2, 52, "admin.listen", "0.0.0.0", "token")

    def test_public_admin_listener_with_token_passes(self):
        text = variant('  "listen": "127.0.0.1:18080",\n',
                       '  "listen": "127.0.0.1:18080",\n'
                       '  "admin": {"listen": "0.0.0.0:19090", "token": "s3cret"},\n')
        path = os.path.join(self.dir.name, "ok.json")
        with open(path, "w") as f:
            f.write(text)
        r = run("--check", "-c", path)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_workers_on_the_memory_store_need_redis_server_installed(self):
        """--workers N > 1 on the memory store runs a private redis-server at
        startup; --check finds it missing as startup would (at `store`, or
        at the top level when the file has none)."""
        no_redis = dict(os.environ, PATH=self.dir.name)  # an empty directory

        def check(text, *args):
            path = os.path.join(self.dir.name, "w.json")
            with open(path, "w") as f:
                f.write(text)
            return subprocess.run([mmtest.MM_BIN, "--check", "-c", path] + list(args),
                                  cwd=mmtest.SOURCE_DIR, capture_output=True, text=True,
                                  timeout=20, env=no_redis), path

        want = ("store: --workers 2 with the memory store needs a private redis-server "
                "(apt-get install redis-server) to share state between workers, or a "
                "\"redis\" store: redis-server is not in PATH")
        r, path = check(GOOD, "--workers", "2")
        self.assertEqual((r.returncode, r.stderr), (1, "%s:1:1: %s\n" % (path, want)))
        with_store = variant('  "listen": "127.0.0.1:18080",\n',
                             '  "listen": "127.0.0.1:18080",\n  "store": {"type": "memory"},\n')
        r, path = check(with_store, "--workers", "2")
        self.assertEqual((r.returncode, r.stderr), (1, "%s:3:12: %s\n" % (path, want)))
        # one worker needs no private Redis, nor does a "redis" store
        self.assertEqual(check(with_store, "--workers", "1")[0].returncode, 0)
        self.assertEqual(check(GOOD)[0].returncode, 0)
        redis = variant('  "listen": "127.0.0.1:18080",\n',
                        '  "listen": "127.0.0.1:18080",\n  "store": {"type": "redis"},\n')
        r, _ = check(redis, "--workers", "2")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_missing_file_fails_with_exit_1(self):
        r = run("--check", "-c", os.path.join(self.dir.name, "nope.json"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope.json", r.stderr)

    def test_startup_refuses_a_bad_config_like_check(self):
        # Without --check, the same error stops modelmux before it listens.
        text = variant(LINE9, LINE9.replace("10}}", "-10}}"))
        path = os.path.join(self.dir.name, "bad.json")
        with open(path, "w") as f:
            f.write(text)
        r = run("-c", path, timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, re.escape(path) + r":9:61: ")


class Options(unittest.TestCase):
    def test_version_prints_version_and_exits_0(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^modelmux \d+\.\d+\.\d+")

    def test_help_prints_usage_and_exits_0(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        for opt in ("-c FILE", "--check", "--workers", "--seed", "--version", "--help"):
            self.assertIn(opt, r.stdout)

    def test_a_bad_option_beside_version_or_help_still_exits_2(self):
        for args in (("--version", "--bogus"), ("--bogus", "--version"), ("--help", "--bogus"),
                     ("--version", "--workers", "0"), ("--help", "--seed", "x")):
            r = run(*args)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertEqual(r.stdout, "", args)

    def test_unknown_option_exits_2(self):
        r = run("--frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--frobnicate", r.stderr)

    def test_option_missing_its_value_exits_2(self):
        """-c without a FILE, or with an empty one, is a usage error that
        says so (it said "unknown or incomplete option '-c'", and -c '' was
        exit 1 ": cannot open")."""
        for args, opt in ((("-c",), "-c"), (("--check", "-c"), "-c"), (("-c", ""), "-c"),
                          (("--check", "-c", ""), "-c"), (("--config",), "--config"),
                          (("--config=",), "--config"), (("--config", ""), "--config")):
            r = run(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn("modelmux: option '%s' needs a FILE argument\n" % opt, r.stderr, args)
            self.assertIn("usage: modelmux", r.stderr, args)
            self.assertEqual(r.stdout, "", args)

    def test_a_stray_argument_exits_2_and_is_named(self):
        """A positional argument (a config path given without -c, say) is
        not an option: "unexpected argument", not "unknown or incomplete
        option"."""
        for args in (("extra",), ("--check", "config/modelmux.json"),
                     ("-c", "config/modelmux.json", "extra")):
            r = run(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn("modelmux: unexpected argument '%s'\n" % args[-1], r.stderr, args)
        r = run("--frobnicate")
        self.assertIn("modelmux: unknown option '--frobnicate'\n", r.stderr)

    def test_seed_that_is_not_a_number_exits_2(self):
        r = run("--seed", "abc", "--check", "-c", "config/modelmux.json")
        self.assertEqual(r.returncode, 2)

    def test_numbers_are_digits_only(self):
        # strtoull alone takes spaces and a sign, and wraps a negative number:
        # " -18446744073709551614" was 2 workers
        for opt, v in (("--seed", " -1"), ("--seed", "+2"), ("--seed", " 2"), ("--seed", ""),
                       ("--workers", " -18446744073709551614"), ("--workers", "+2"),
                       ("--workers", " 2")):
            r = run(opt, v, "--check", "-c", "config/modelmux.json")
            self.assertEqual(r.returncode, 2, (opt, v, r.stderr))
        self.assertEqual(run("--seed", "18446744073709551615", "--check", "-c",
                             "config/modelmux.json").returncode, 0)


if __name__ == "__main__":
    mmtest.main()
