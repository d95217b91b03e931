"""
Limits shared by several chatd instances through Redis (REDIS_URL): two chatd
processes on one PostgreSQL database (what several instances share: a SQLite
file has one server, test_store_owner.py) and one real redis-server together
enforce the configured rate limit; when Redis goes away they fail open to their local
limiters (counted in chatd_ratelimit_redis_fallback_total).
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from pgfixtures import pg_db, pg_server  # noqa: F401

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/deps.sh installs it)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="chatd-redis-")
        self.port = _free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def command(self, raw):
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(raw + b"\r\n")
            return s.recv(64)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.stop()
    shutil.rmtree(r.dir, ignore_errors=True)


def _pair(chatd, redis, limit, database_url):
    env = {"REDIS_URL": redis.url, "RATE_LIMIT": limit, "DATABASE_URL": database_url}
    a = chatd(env)
    b = chatd(env)
    # Let each worker's connection to Redis complete (under a millisecond locally).
    time.sleep(0.3)
    return a, b


def _chat(server, sid, msg="hi"):
    return server.client.post("/v1/chat", json={"message": msg, "session_id": sid})


def test_limit_holds_in_total_across_two_instances(chatd, redis, pg_db):
    a, b = _pair(chatd, redis, "4/minute", pg_db)
    codes = []
    for i in range(8):
        server = a if i % 2 == 0 else b
        codes.append(_chat(server, f"redis-pair-{i}").status_code)
    assert codes.count(200) == 4, codes
    assert codes.count(429) == 4, codes
    r = _chat(a, "redis-pair-x")
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-limit"] == "4" and r.headers["ratelimit-remaining"] == "0"


def test_conversation_moves_between_instances(chatd, redis, pg_db):
    a, b = _pair(chatd, redis, "off", pg_db)
    assert _chat(a, "redis-move", "first").status_code == 200
    r = _chat(b, "redis-move", "second")
    assert r.status_code == 200 and r.json()["turn_count"] == 2
    h = a.client.get("/history/redis-move").json()
    assert [m["content"] for m in h["messages"] if m["role"] == "user"] == ["first", "second"]


def test_redis_down_fails_open_to_the_local_limiter(chatd, redis, pg_db):
    a, b = _pair(chatd, redis, "3/minute", pg_db)
    redis.stop()
    time.sleep(0.2)
    codes = [_chat(a, f"redis-down-{i}").status_code for i in range(5)]
    # Each instance now enforces the limit on its own.
    assert codes == [200, 200, 200, 429, 429], codes
    assert _fallbacks(a) >= 5
    # Redis back: once both instances have reconnected (a request no longer
    # counts a fallback), the limit is shared again.
    redis.start()
    for server in (a, b):
        deadline = time.monotonic() + 10
        while True:
            before = _fallbacks(server)
            server.client.get("/v1/models")  # not limited: does not consume
            r = _chat(server, f"redis-probe-{time.monotonic()}")
            if _fallbacks(server) == before:
                break
            assert time.monotonic() < deadline, "chatd did not reconnect to Redis"
            time.sleep(0.2)
    redis.command(b"FLUSHALL")
    codes = [_chat(a if i % 2 == 0 else b, f"redis-back-{i}").status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429], codes


def _fallbacks(server):
    line = next(l for l in server.client.get("/metrics").text.splitlines()
                if l.startswith("chatd_ratelimit_redis_fallback_total"))
    return float(line.split()[-1])
