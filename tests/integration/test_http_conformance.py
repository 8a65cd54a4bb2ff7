"""test_http_conformance — RFC 9110/9112 rules a reverse proxy must follow,
case by case, where modelmux once got them wrong.

Each test sends raw bytes (what http.client would not send) to a real
modelmux in front of example model servers, or in front of a scripted
model server that answers what a test tells it to (the misbehaving
upstreams of RFC 9112 §6 and RFC 9110 §15), and asserts what the client
and the model server see.
"""
import json
import re
import signal
import socket
import threading
import time
import unittest

import mmtest
from test_proxy import ClassCluster, ab, echo_headers, stats


class Requests(ClassCluster):
    """What the client sends."""

    @classmethod
    def start(cls, cl):
        cls.champion = cl.model_server("champion")
        cls.port = mmtest.free_port()
        cls.admin_port = mmtest.free_port()
        cfg = mmtest.base_config(cls.port, {"champion": cls.champion.port},
                                 [ab("ab", "/", {"champion": 1})], admin_port=cls.admin_port,
                                 limits={"drain_timeout_ms": 2000})
        cfg["admin"]["token"] = "s3cret"
        cls.mm = cl.modelmux(cfg, "--seed", 5)

    def upstream_requests(self):
        return stats(self.champion.port)["requests"]

    def assertRefused(self, data, what, status=400, code="bad_request"):
        """data gets the JSON error, the connection closes, and the model
        server sees no request."""
        before = self.upstream_requests()
        c = self.raw(self.port)
        c.send(data)
        r = c.response()
        self.assertJsonError(r, status, code)
        self.assertEqual(r.headers.get("connection", "").lower(), "close", what)
        self.assertTrue(c.closed_within(2), what)
        c.close()
        self.assertEqual(self.upstream_requests(), before, what)

    # -- Upgrade (RFC 9110 §7.8): modelmux upgrades to nothing

    def test_request_after_a_declined_upgrade_is_served(self):
        # An Upgrade request gets an ordinary answer (Upgrade is hop-by-hop,
        # not forwarded); the connection is still HTTP/1.1, so the request
        # after it is one too. It got a 400 ("Pause on CONNECT/Upgrade").
        firsts = (b"GET /echo/1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                  b"POST /echo/1 HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
                  b"Content-Length: 5\r\n\r\nhello")
        second = b"GET /echo/2 HTTP/1.1\r\nHost: a\r\n\r\n"
        for first in firsts:
            for pipelined in (True, False):
                with self.subTest(first=first[:4], pipelined=pipelined):
                    c = self.raw(self.port)
                    c.send(first + second if pipelined else first)
                    r1 = c.response()
                    self.assertEqual(r1.status, 200, r1)
                    self.assertNotIn("upgrade", echo_headers(r1.body))
                    if not pipelined:
                        c.send(second)
                    r2 = c.response()
                    self.assertEqual((r2.status, r2.json()["path"]), (200, "/echo/2"), r2)
                    c.close()

    # -- Host (RFC 9112 §3.2: "a Host header field with an invalid field value" is a 400)

    def test_host_with_an_invalid_value_is_400(self):
        # These were routed, and passed on as X-Forwarded-Host.
        for host in (b"a b", b"a/b", b"user@a", b"a:b:c", b"[::1", b"a?b", b"a#b", b"a\\b", b"ex%4"):
            with self.subTest(host=host):
                self.assertRefused(b"GET /echo HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", host)
        self.assertRefused(b"GET http://a%/echo HTTP/1.1\r\nHost: a\r\n\r\n", "absolute-form authority")

    def test_host_with_a_valid_value_is_served(self):
        for host in (b"api.example.com", b"a:8080", b"[::1]:80", b"ex%41mple", b"a_b", b""):
            with self.subTest(host=host):
                out = mmtest.raw(self.port, b"GET /echo HTTP/1.1\r\nHost: " + host +
                                 b"\r\nConnection: close\r\n\r\n")
                self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:300])

    # -- field names (RFC 9110 §5.1: a token, one character at least)

    def test_header_line_with_an_empty_name_is_400(self):
        # llhttp lets ": x" through; it was forwarded as is.
        self.assertRefused(b"GET /echo HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", "empty name")


    # -- line ends (RFC 9112 §2.2): CRLF only, a bare LF is a 400

    CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"

    def test_a_line_ending_in_a_bare_lf_is_400(self):
        # llhttp takes these; the heads were served, and the bodies went to
        # the model server raw, which waited for their end (a 504, and an
        # ejection step for the arm).
        cases = {
            "after the request line": b"GET /echo HTTP/1.1\nHost: a\r\n\r\n",
            "as the head's last line": b"GET /echo HTTP/1.1\r\nHost: a\r\n\n",
            "as the only header line": b"GET /echo HTTP/1.0\r\n\n",
            "ending a chunked body": self.CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\n",
            "ending the trailers": self.CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-A: 1\r\n\n",
        }
        for what, data in cases.items():
            with self.subTest(what=what):
                self.assertRefused(data, what)
        # the same with CRLF is served
        for data in (b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                     self.CHUNKED_HEAD[:-2] + b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-A: 1\r\n\r\n"):
            out = mmtest.raw(self.port, data)
            self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])

    # -- chunk extensions and trailers (RFC 9112 §7.1): bounded, checked like a head

    def test_chunk_extensions_and_trailers_count_against_max_header_bytes(self):
        # max_header_bytes is 16384 here. A 5-byte body with a 1 MB chunk
        # extension and 450 KB of trailers went through whole.
        trailer = lambda n, size: b"".join(b"X-T%d: %s\r\n" % (i, b"v" * size) for i in range(n))
        cases = {
            "one extension": b"5;e=" + b"x" * 17000 + b"\r\nhello\r\n0\r\n\r\n",
            "extensions of every chunk together":
                b"".join(b"1;e=" + b"x" * 2000 + b"\r\nh\r\n" for _ in range(9)) + b"0\r\n\r\n",
            "a trailer section": b"5\r\nhello\r\n0\r\n" + trailer(20, 900) + b"\r\n",
            "extensions and trailers together":
                b"5;e=" + b"x" * 9000 + b"\r\nhello\r\n0\r\n" + trailer(9, 900) + b"\r\n",
            "more than 128 trailer lines": b"5\r\nhello\r\n0\r\n" + trailer(129, 1) + b"\r\n",
        }
        for what, body in cases.items():
            with self.subTest(what=what):
                self.assertRefused(self.CHUNKED_HEAD + body, what, 431, "headers_too_large")
        # within the limits: served, the body as sent
        c = self.raw(self.port)
        c.send(self.CHUNKED_HEAD + b"5;e=" + b"x" * 4000 + b"\r\nhello\r\n0\r\n" + trailer(128, 10) + b"\r\n")
        r = c.response()
        self.assertEqual((r.status, r.json()["body_len"]), (200, 5), r)

    def test_a_trailer_line_folded_or_with_an_empty_name_is_400(self):
        # RFC 9112 §5.2 asks a proxy to refuse obs-fold; both went to the
        # model server inside the raw body.
        for what, trailers in {"obs-fold": b"X-A: 1\r\n  more\r\n",
                               "obs-fold after an empty value": b"X-A:\r\n\tmore\r\n",
                               "empty name": b": x\r\n"}.items():
            with self.subTest(what=what):
                self.assertRefused(self.CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n", what)

    # -- request targets (RFC 9112 §3.2: origin-form has no fragment)

    def test_a_fragment_in_the_target_is_400(self):
        # "#" was a path character, and ".." after it changed the route:
        # /echo#/../v1/rank was routed as /v1/rank.
        for target in (b"/echo#/../v1/rank", b"/echo#f", b"/echo?q=1#f", b"http://a/echo#f"):
            with self.subTest(target=target):
                self.assertRefused(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", target)
        c = self.raw(self.port)
        c.send(b"GET /echo#f HTTP/1.1\r\nHost: a\r\n\r\n")
        body = self.assertJsonError(c.response(), 400, "bad_request")
        self.assertIn("fragment", body["message"])

    # -- X-Forwarded-Host is modelmux's alone

    def test_a_clients_x_forwarded_host_is_replaced_not_passed_on(self):
        # It went upstream next to modelmux's own line: a model server
        # reading the first one took the client's word for the host.
        cases = [(b"GET /echo HTTP/1.1\r\nHost: real.example\r\nX-Forwarded-Host: evil.example\r\n"
                  b"x-forwarded-host: evil2.example\r\nConnection: close\r\n\r\n", ["real.example"]),
                 (b"GET http://abs.example/echo HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: evil.example\r\n"
                  b"Connection: close\r\n\r\n", ["abs.example"]),
                 # no Host to speak of: none at all, not the client's
                 (b"GET /echo HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n", None)]
        for data, want in cases:
            with self.subTest(data=data[:40]):
                out = mmtest.raw(self.port, data)
                self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])
                seen = echo_headers(out.partition(b"\r\n\r\n")[2])
                self.assertEqual(seen.get("x-forwarded-host"), want, seen)

    # -- the admin listener's refusals are not data-plane requests

    def unrouted_counts(self):
        st, _, body = mmtest.request(self.admin_port, "GET", "/metrics",
                                     headers={"Authorization": "Bearer s3cret"})
        self.assertEqual(st, 200)
        return sorted(l for l in body.decode().splitlines()
                      if l.startswith('modelmux_requests_total{experiment="",arm=""'))

    def test_refusals_on_the_admin_listener_are_not_counted(self):
        # docs/admin-metrics-log.md: "Admin and feedback requests are not
        # counted". A 400 or 431 on the admin listener was counted in
        # modelmux_requests_total{experiment="",arm=""}.
        before = self.unrouted_counts()
        for data, status in ((b"GARBAGE\r\n\r\n", 400),
                             (b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 40000 + b"\r\n\r\n", 431)):
            out = mmtest.raw(self.admin_port, data)
            self.assertTrue(out.startswith(b"HTTP/1.1 %d" % status), out[:200])
        self.assertEqual(self.unrouted_counts(), before)
        # the same on the data listener is counted
        mmtest.raw(self.port, b"GARBAGE\r\n\r\n")
        self.assertNotEqual(self.unrouted_counts(), before)

    # -- Connection (RFC 9110 §7.6.1) never takes the framing away

    def test_connection_naming_content_length_does_not_unframe_the_body(self):
        # "Connection: content-length" dropped the length and sent the body
        # upstream unframed: the model server read it as a second request.
        smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        before = self.upstream_requests()
        c = self.raw(self.port)
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n"
               b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        r = c.response()
        c.close()
        self.assertEqual((r.status, r.json()["body_len"]), (200, len(smuggled)), r)
        self.assertEqual(echo_headers(r.body)["content-length"], [str(len(smuggled))])
        self.assertEqual(self.upstream_requests() - before, 1)

    # -- HTTP versions (RFC 9110 §2.5, §15.6.6)

    def test_request_line_with_a_version_other_than_1_x_is_505(self):
        # "HTTP/2.0" (llhttp accepts it) and HTTP/0.9 were served as HTTP/1.x.
        # A 0.9 client sends its one line and waits: it got a 408 once
        # header_timeout_ms had passed, not the 505 at the line's end.
        for data in (b"GET /echo HTTP/2.0\r\nHost: a\r\n\r\n", b"GET /echo\r\n\r\n",
                     b"GET /echo\r\n", b"GET /echo\n"):
            with self.subTest(data=data):
                self.assertRefused(data, data, 505, "http_version_not_supported")

    # -- Date (RFC 9110 §6.6.1): an origin server with a clock sends one

    def test_modelmuxs_own_answers_carry_a_date(self):
        # Errors, feedback, admin and metrics answers had none.
        token = b"Authorization: Bearer s3cret\r\n"

        def feedback(body):
            return (b"POST /_modelmux/feedback HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

        for port, data in ((self.port, b"GARBAGE\r\n\r\n"),
                           (self.port, b"GET /echo\r\n"),
                           (self.port, feedback(b"{}")),
                           (self.port, feedback(b'{"request_id": "nobody", "reward": 1}')),
                           (self.admin_port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n"
                                             b"Connection: close\r\n\r\n"),
                           (self.admin_port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n" + token +
                                             b"Connection: close\r\n\r\n"),
                           (self.admin_port, b"GET /experiments HTTP/1.1\r\nHost: a\r\n" + token +
                                             b"Connection: close\r\n\r\n")):
            with self.subTest(data=data[:40]):
                out = mmtest.raw(port, data)
                self.assertTrue(out.startswith(b"HTTP/1.1 "), out[:200])
                mmtest.assert_one_fresh_date(self, out)

    def test_an_http2_preface_is_told_to_speak_http11(self):
        # llhttp's own wording ("Pause on PRI/Upgrade") was the message.
        data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        self.assertRefused(data, data)
        c = self.raw(self.port)
        c.send(data)
        body = self.assertJsonError(c.response(), 400, "bad_request")
        c.close()
        self.assertEqual(body["message"], "HTTP/2 is not supported: speak HTTP/1.1")

    def test_http10_and_http11_are_served(self):
        for version in (b"1.0", b"1.1"):
            with self.subTest(version=version):
                out = mmtest.raw(self.port, b"GET /echo HTTP/" + version + b"\r\nHost: a\r\nConnection: close\r\n\r\n")
                self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])

    # -- HTTP/1.0 persistence (RFC 9112 §9.3, Appendix C.2.2)

    def test_http10_close_wins_over_keep_alive(self):
        for conn in (b"keep-alive, close", b"close, keep-alive"):
            with self.subTest(connection=conn):
                c = self.raw(self.port)
                c.send(b"GET /echo HTTP/1.0\r\nConnection: " + conn + b"\r\n\r\n"
                       b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                r = c.response()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers.get("connection", "").lower(), "close")
                self.assertTrue(c.closed_within(2))
                c.close()

    def test_http10_keep_alive_is_said_on_modelmuxs_own_answers_too(self):
        # A 1.0 client keeps a connection only when told; a local answer
        # (here feedback's 400) tells it as a proxied one does.
        c = self.raw(self.port)
        c.send(b"POST /_modelmux/feedback HTTP/1.0\r\nConnection: keep-alive\r\n"
               b"Content-Length: 2\r\n\r\n{}")
        r = c.response()
        self.assertEqual(r.status, 400)
        self.assertEqual(r.headers.get("connection", "").lower(), "keep-alive")
        c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("connection", "").lower(), "keep-alive")
        c.close()

    # -- trailers (RFC 9110 §6.5.1: not merged into the header section)

    def test_a_trailer_field_does_not_stand_in_for_a_header(self):
        # An Authorization trailer authorised an admin request that had no
        # Authorization header.
        body = b'{"champion": 1}'
        chunked = b"%x\r\n%s\r\n0\r\nAuthorization: Bearer s3cret\r\n\r\n" % (len(body), body)
        c = self.raw(self.admin_port)
        c.send(b"PUT /experiments/ab/weights HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        r = c.response()
        self.assertEqual(r.status, 401, r)
        c.close()  # answered on its head, the body unread: the connection closes
        # with the header it is authorised, the trailer notwithstanding
        c = self.raw(self.admin_port)
        c.send(b"PUT /experiments/ab/weights HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        self.assertEqual(c.response().status, 200)
        c.close()

    def test_trailers_of_a_chunked_request_reach_the_model_server_in_the_body(self):
        # forwarded raw (the body is not re-framed), and the next request
        # on the connection is not disturbed by them
        c = self.raw(self.port)
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /echo/2 HTTP/1.1\r\nHost: a\r\n\r\n")
        r1, r2 = c.response(), c.response()
        c.close()
        self.assertEqual((r1.status, r1.json()["body_len"]), (200, 5), r1)
        self.assertEqual((r2.status, r2.json()["path"]), (200, "/echo/2"), r2)


class ScriptedUpstream:
    """A model server that answers GET/POST /m/NAME with ANSWERS[NAME], raw,
    on keep-alive connections (reading Content-Length bodies first); counts
    the connections it accepted, and says in X-Conn which one answered "ok"
    and "close". Loopback, a free port, its own threads."""

    ANSWERS = {
        "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "empty-name": b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 2\r\n\r\nok",
        "gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nGZ\r\n0\r\n\r\n",
        "gzip-eof": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nGZGZ",
        "204-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: a\r\n\r\n",
        "204-chunked": b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nX-A: a\r\n\r\n",
        "304-length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\n",
        # more than the 256 KiB an answer's head may take
        "huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Big: %s\r\n" % (b"v" * 300000) +
                     b"Content-Length: 2\r\n\r\nok",
        # line ends llhttp takes as CRLF
        "lf-status-line": b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
        "lf-head-end": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok",
        # the same in the final answer's head after an interim one, and in it
        "lf-interim-end": b"HTTP/1.1 100 Continue\r\n\nHTTP/1.1 200 OK\r\n"
                          b"Content-Length: 2\r\n\r\nok",
        "lf-status-after-interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\n"
                                   b"Content-Length: 2\r\n\r\nok",
        "interim-crlf": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                        b"Content-Length: 2\r\n\r\nok",
        "lf-chunked-end": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\n",
        "lf-trailer-end": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
                          b"X-A: 1\r\n\n",
        # trailer sections a head would be refused for
        "trailer-fold": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
                        b"X-A: 1\r\n more\r\n\r\n",
        "trailer-empty-name": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
                              b": x\r\n\r\n",
        "trailer-129-lines": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" +
                             b"".join(b"X-T%d: 1\r\n" % i for i in range(129)) + b"\r\n",
        "trailer-128-lines": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" +
                             b"".join(b"X-T%d: 1\r\n" % i for i in range(128)) + b"\r\n",
        # chunk extensions over the 256 KiB an answer's head may take
        "huge-extension": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;e=" + b"x" * 300000 +
                          b"\r\nok\r\n0\r\n\r\n",
        "conn-length": b"HTTP/1.1 200 OK\r\nConnection: X-A, Content-Length\r\nX-A: a\r\n"
                       b"Content-Length: 2\r\n\r\nok",
        "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
                   b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        "dated": b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
        "eof-11": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        "eof-10": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        # says close but keeps the connection open: reusing it would work,
        # and must not happen
        "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    }
    CLOSE_AFTER = {"gzip-eof", "eof-11", "eof-10"}  # close-delimited answers

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.connections = 0
        self.stopping = False
        self.held = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stopping:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(s)
            threading.Thread(target=self.serve, args=(s, self.connections), daemon=True).start()

    def serve(self, s, number):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1].decode()
                length = 0
                for h in lines[1:]:
                    k, _, v = h.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[length:]
                name = path.rsplit("/", 1)[1]
                answer = self.ANSWERS[name]
                if name in ("ok", "close"):  # which connection answered
                    answer = answer.replace(b"\r\n", b"\r\nX-Conn: %d\r\n" % number, 1)
                s.sendall(answer)
                if name in self.CLOSE_AFTER:
                    s.close()
                    return
        except OSError:
            return

    def stop(self):
        self.stopping = True
        self.srv.close()
        for s in self.held:
            try:
                s.close()
            except OSError:
                pass


class UpstreamAnswers(ClassCluster):
    """What the model server answers."""

    @classmethod
    def start(cls, cl):
        cls.upstream = ScriptedUpstream()
        cls.port = mmtest.free_port()
        cfg = mmtest.base_config(cls.port, {"champion": {"url": "http://127.0.0.1:%d" % cls.upstream.port,
                                                         "timeout_ms": 2000, "pool": 1}},
                                 [ab("ab", "/", {"champion": 1})], limits={"drain_timeout_ms": 2000})
        cls.mm = cl.modelmux(cfg, "--seed", 5)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.upstream.stop()

    def exchange(self, name, method=b"GET", version=b"1.1"):
        """One request for answer `name` on a fresh connection, then an
        ordinary one on the same connection: (answer, the next answer or
        None when the connection was closed)."""
        c = self.raw(self.port)
        c.send(method + b" /m/" + name.encode() + b" HTTP/" + version + b"\r\nHost: a\r\n\r\n")
        r = c.response(head_request=method == b"HEAD")
        if r.headers.get("connection", "").lower() == "close":
            return r, None
        c.send(b"GET /m/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        return r, c.response()

    def test_answer_with_an_empty_header_name_is_502(self):
        r, after = self.exchange("empty-name")
        body = self.assertJsonError(r, 502, "upstream_unavailable")
        self.assertEqual(body["message"], "the model server's answer is not valid HTTP")
        self.assertEqual(after.status, 200)


    def test_answer_with_a_line_ending_in_a_bare_lf_is_502(self):
        # RFC 9112 §2.2 (README "Strictness"): llhttp takes these, and the
        # chunked ones were passed on to the client as sent.
        for name in ("lf-status-line", "lf-head-end", "lf-interim-end", "lf-status-after-interim",
                     "lf-chunked-end", "lf-trailer-end"):
            with self.subTest(name=name):
                r, after = self.exchange(name)
                body = self.assertJsonError(r, 502, "upstream_unavailable")
                self.assertEqual(body["message"], "the model server's answer is not valid HTTP")
                self.assertEqual((after.status, after.body), (200, b"ok"))
        r, after = self.exchange("interim-crlf")  # with CRLFs the interim answer is skipped
        self.assertEqual((r.status, r.body), (200, b"ok"), r)

    def test_answer_trailers_are_checked_like_a_head(self):
        # obs-fold and an empty name are a 502 in a head (RFC 9112 §5.2), and
        # so is a 129th line; in trailers they were passed on.
        for name in ("trailer-fold", "trailer-empty-name", "trailer-129-lines"):
            with self.subTest(name=name):
                r, after = self.exchange(name)
                self.assertJsonError(r, 502, "upstream_unavailable")
                self.assertEqual((after.status, after.body), (200, b"ok"))
        r, after = self.exchange("trailer-128-lines")
        self.assertEqual((r.status, r.body), (200, b"ok"), r)

    def test_answer_chunk_extensions_are_bounded(self):
        # 300 KB of extension on a 2-byte chunk reached the client whole.
        # Refused once past 256 KiB: what was passed on by then is cut
        # off (the client sees no last chunk), or it is a 502.
        out = mmtest.raw(self.port, b"GET /m/huge-extension HTTP/1.1\r\nHost: a\r\n\r\n")
        if not out.startswith(b"HTTP/1.1 502"):
            self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])
            self.assertLess(len(out), 300000)
            self.assertFalse(out.endswith(b"0\r\n\r\n"))

    def test_answer_with_a_transfer_coding_other_than_chunked_is_502(self):
        # Transfer-Encoding is hop-by-hop and modelmux frames the answer
        # itself (chunked at most): "gzip, chunked" went out as "chunked"
        # and "gzip" as a close-delimited body, gzip bytes with nothing
        # saying so.
        for name in ("gzip-chunked", "gzip-eof"):
            with self.subTest(name=name):
                r, _ = self.exchange(name)
                self.assertJsonError(r, 502, "upstream_unavailable")
                self.assertNotIn(b"GZ", r.body)


    def test_204_goes_out_without_content_length_or_transfer_encoding(self):
        # RFC 9110 §8.6, RFC 9112 §6.1: a server MUST NOT send either in a
        # 204; both were passed on as the model server sent them.
        for name in ("204-length", "204-chunked"):
            with self.subTest(name=name):
                r, after = self.exchange(name)
                self.assertEqual(r.status, 204, r)
                self.assertEqual(r.headers.get("x-a"), "a")  # the rest is passed on
                self.assertNotIn("content-length", r.headers)
                self.assertNotIn("transfer-encoding", r.headers)
                self.assertEqual((after.status, after.body), (200, b"ok"))

    def test_answer_head_too_large_to_hold_is_502_at_once(self):
        # It waited for the rest of a head that could not fit, and ended in
        # a 504 after timeout_ms (a protocol error taken for a slow server).
        r, after = self.exchange("huge-head")
        self.assertJsonError(r, 502, "upstream_unavailable")
        self.assertEqual((after.status, after.body), (200, b"ok"))

    def test_connection_naming_content_length_keeps_the_answer_framed(self):
        # The length was dropped: the client got an answer with no framing
        # on a kept-alive connection, and waited for its end.
        r, after = self.exchange("conn-length")
        self.assertEqual((r.status, r.headers.get("content-length"), r.body), (200, "2", b"ok"), r)
        self.assertNotIn("x-a", r.headers)  # the other header named there still goes
        self.assertEqual((after.status, after.body), (200, b"ok"))

    def test_an_answer_without_date_gets_one_and_one_with_it_keeps_it(self):
        # RFC 9110 §6.6.1: a recipient with a clock adds Date to an answer
        # it forwards without one; the model server's own is passed on.
        def get(name):
            return mmtest.raw(self.port, b"GET /m/%s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                              % name.encode())

        out = get("ok")
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])
        mmtest.assert_one_fresh_date(self, out)
        self.assertEqual(mmtest.date_lines(get("dated")), ["Tue, 01 Jan 2030 00:00:00 GMT"])
        mmtest.assert_one_fresh_date(self, get("empty-name"))  # modelmux's own 502

    def test_304_keeps_its_content_length(self):
        # There it is the selected representation's length (RFC 9110 §8.6).
        r, after = self.exchange("304-length")
        self.assertEqual((r.status, r.headers.get("content-length")), (304, "5"), r)
        self.assertEqual((after.status, after.body), (200, b"ok"))


    def test_interim_answers_are_dropped_and_the_final_one_passed_on(self):
        # documented choice (nginx, Envoy): 1xx from a model server are not
        # forwarded; modelmux answers Expect: 100-continue itself.
        c = self.raw(self.port)
        c.send(b"GET /m/interim HTTP/1.1\r\nHost: a\r\n\r\nGET /m/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        r1, r2 = c.response(), c.response()
        c.close()
        self.assertEqual((r1.status, r1.body), (200, b"final"), r1)
        self.assertEqual((r2.status, r2.body), (200, b"ok"), r2)

    def test_close_delimited_answer_arrives_whole_then_the_connection_closes(self):
        for name in ("eof-11", "eof-10"):
            for version in (b"1.1", b"1.0"):
                with self.subTest(name=name, version=version):
                    r, after = self.exchange(name, version=version)
                    self.assertEqual((r.status, r.body), (200, b"until the end"), r)
                    self.assertIsNone(after)  # "Connection: close"

    def test_upstream_connection_close_is_not_reused(self):
        # pool 1: a reused connection would answer the next request
        r, after = self.exchange("close")
        self.assertEqual((r.status, after.status), (200, 200))
        self.assertNotEqual(r.headers.get("connection", "").lower(), "close")  # the client's stays
        self.assertNotEqual(r.headers["x-conn"], after.headers["x-conn"])
        _, again = self.exchange("ok")
        self.assertEqual(after.headers["x-conn"], again.headers["x-conn"])  # reuse does happen

class ErrorWithUnreadBody(mmtest.MMTestCase):
    """A 502 for a request whose body had not been read yet (the model
    server refused the connection first) keeps the connection, as nginx
    discards a body: the rest (up to 64 KiB all told) is read and dropped,
    then the error goes out, and the request pipelined behind is served.
    It closed the connection, losing that request."""

    def setUp(self):
        super().setUp()
        ok = self.cluster.model_server("ok")
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        self.log = self.cluster.path("requests.jsonl")
        cfg = mmtest.base_config(self.port, {"dead": mmtest.free_port(), "ok": ok.port},
                                 [ab("dc", "/dc", {"dead": 1}), ab("ok", "/ok", {"ok": 1}),
                                  {"name": "sh", "match": {"path_prefix": "/sh"},
                                   "policy": "shadow", "primary": "dead", "shadows": ["ok"]}],
                                 admin_port=self.admin, log={"requests": self.log, "bodies": True},
                                 limits={"idle_timeout_ms": 500})
        self.mm = self.cluster.modelmux(cfg)

    BEHIND = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Request-Id: behind\r\n\r\n"

    def answers(self, out):
        heads = [out[i:out.index(b"\r\n\r\n", i)] for i in
                 (m.start() for m in re.finditer(rb"HTTP/1\.1 \d{3} ", out))]
        return [(h.split(b"\r\n")[0].decode(),
                 b"connection: close" in h.lower(),
                 b"x-request-id: behind" in h.lower(),
                 b"x-modelmux-arm: dead" in h.lower()) for h in heads]

    def test_the_request_behind_is_served(self):
        bodies = {"content-length": b"Content-Length: 2\r\n\r\n{}",
                  "chunked": b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"}
        for what, body in bodies.items():
            out = mmtest.raw(self.port, b"POST /dc HTTP/1.1\r\nHost: x\r\n" + body + self.BEHIND,
                             timeout=1.5)
            self.assertEqual(self.answers(out), [("HTTP/1.1 502 Bad Gateway", False, False, True),
                                                 ("HTTP/1.1 200 OK", False, True, False)], what)

    def test_a_body_sent_after_the_head_is_waited_for(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=3)
        s.sendall(b"POST /dc HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.3)  # the refused connect comes first
        s.sendall(b"hello" + self.BEHIND)
        s.settimeout(1.0)
        out = b""
        try:
            while out.count(b"HTTP/1.1 ") < 2 or not out.endswith(b"}"):
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except socket.timeout:
            pass
        s.close()
        self.assertEqual([a[:3] for a in self.answers(out)],
                         [("HTTP/1.1 502 Bad Gateway", False, False),
                          ("HTTP/1.1 200 OK", False, True)])
        got = mmtest.metric_samples(self.admin, "modelmux_requests_total", "experiment", "arm",
                                    "code")
        self.assertEqual(got.get(("dc", "dead", "502")), 1.0, got)

    def test_a_body_over_64_kib_is_not_waited_for(self):
        big = b"x" * 70000
        out = mmtest.raw(self.port, b"POST /dc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % len(big) + big + self.BEHIND, timeout=1.5)
        self.assertEqual(self.answers(out), [("HTTP/1.1 502 Bad Gateway", True, False, True)])


    def test_a_failed_primarys_mirrors_go_out_with_the_body_read(self):
        out = mmtest.raw(self.port, b"POST /sh HTTP/1.1\r\nHost: x\r\nX-Request-Id: sh-1\r\n"
                         b"Content-Length: 2\r\n\r\n{}" + self.BEHIND, timeout=1.5)
        self.assertEqual([a[:3] for a in self.answers(out)],
                         [("HTTP/1.1 502 Bad Gateway", False, False),
                          ("HTTP/1.1 200 OK", False, True)])
        self.mm.signal(signal.SIGTERM)  # the log is complete once it has stopped
        self.assertEqual(self.mm.wait(15), 0)
        with open(self.log) as f:
            line = [json.loads(l) for l in f if '"sh-1"' in l][0]
        # mirrored (not "dropped"), an error since the primary gave no answer;
        # the body logged whole
        self.assertEqual([(m["arm"], m["status"], m["outcome"]) for m in line["shadow"]],
                         [("ok", 200, "error")])
        self.assertEqual((line["status"], line["bytes_in"], line["body_b64"]), (502, 2, "e30="))
        self.assertNotIn("body_truncated", line)

    def test_a_body_that_stalls_after_the_error_is_a_408_and_still_the_arms_error(self):
        # idle_timeout_ms 500: the connection closes well before raw() gives up
        out = mmtest.raw(self.port, b"POST /dc HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                         b"hello", timeout=5)
        self.assertTrue(out.startswith(b"HTTP/1.1 408 "), out[:100])
        st, _, body = mmtest.request(self.admin, "GET", "/experiments/dc")
        arm = json.loads(body)["arms"][0]
        self.assertEqual((arm["name"], arm["requests"], arm["errors"]), ("dead", 1, 1))

if __name__ == "__main__":
    unittest.main(verbosity=2)
