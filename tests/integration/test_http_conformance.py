"""test_http_conformance — RFC 9110/9112 rules a reverse proxy must follow,
case by case, where modelmux once got them wrong.

Each test sends raw bytes (what http.client would not send) to a real
modelmux in front of example model servers, or in front of a scripted
model server that answers what a test tells it to (the misbehaving
upstreams of RFC 9112 §6 and RFC 9110 §15), and asserts what the client
and the model server see.
"""
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

if __name__ == "__main__":
    unittest.main(verbosity=2)
