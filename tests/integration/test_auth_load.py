"""
test_auth_load.py: unauthenticated load on the database, black box
(docs/API.md, "Authentication" and "Operations"):

- AUTH_FAILURE_LIMIT: unknown API keys are limited per client address before
  the store is asked (429 + Retry-After, no lookup);
- the per-worker cache of recent unknown keys: a repeated junk token is refused
  401 without a lookup, and a key created after its secret was refused works
  once the cache entry expired (AUTH_NEGCACHE_TTL_MS, 5 s);
- /readyz reuses a ping younger than a second, and concurrent probes share one.

Store work is counted with chatd's own metrics: the store layer observes every
operation it ran in chatd_db_operation_duration_seconds{op} ("key_find" is the
API key lookup, "ping" the readiness ping), and the router counts
chatd_auth_key_lookups_total{result}.
"""
import re
import socket
import subprocess
import time


import conftest
from helpers import assert_seed_detail, assert_v1_error

ADMIN = "static-admin-token-auth-load"
TTL_S = 5.0  # AUTH_NEGCACHE_TTL_MS


def metric(server, name, **labels):
    """The value of one sample of chatd's /metrics (0 when absent)."""
    text = server.client.get("/metrics", headers={"Authorization": "Bearer " + ADMIN}).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line_re = re.compile(r"^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$",
                         re.M)
    m = line_re.search(text)
    return float(m.group(1)) if m else 0.0


def key_finds(server):
    return metric(server, "chatd_db_operation_duration_seconds_count", op="key_find")


def pings(server):
    return metric(server, "chatd_db_operation_duration_seconds_count", op="ping")


def create_key(server_or_env, name):
    env = server_or_env if isinstance(server_or_env, dict) else server_or_env.env
    p = subprocess.run([conftest.CHATD_BIN, "keys", "create", "--name", name], env=env, capture_output=True,
                       text=True, timeout=20)
    assert p.returncode == 0, p
    m = re.search(r"secret:\s*(chatd_[0-9a-f]{48})", p.stdout)
    assert m, p.stdout
    return m.group(1)


def bearer(secret):
    return {"Authorization": "Bearer " + secret}


def test_repeated_junk_token_is_refused_from_the_cache(chatd):
    s = chatd({"AUTH_MODE": "keys", "API_TOKEN": ADMIN, "AUTH_FAILURE_LIMIT": "off", "WORKERS": "2"})
    c = s.client
    before = key_finds(s)
    t0 = time.monotonic()
    for i in range(100):
        path = "/v1/sessions" if i % 2 else "/sessions"
        r = c.get(path, headers=bearer("junk-token-repeated"))
        assert r.status_code == 401, (i, r.status_code, r.text)
        assert r.headers["www-authenticate"] == 'Bearer realm="chatd", error="invalid_token"'
        if i % 2:
            assert_v1_error(r, 401, "authentication_error")
        else:
            assert_seed_detail(r, 401)
    elapsed = time.monotonic() - t0
    lookups = key_finds(s) - before
    # One lookup per worker per TTL at most (each worker has its own cache).
    bound = 2 * (1 + int(elapsed / TTL_S))
    assert 1 <= lookups <= bound, (lookups, bound, elapsed)
    assert metric(s, "chatd_auth_key_lookups_total", result="invalid") == lookups
    assert metric(s, "chatd_auth_key_lookups_total", result="cached_invalid") == 100 - lookups
    # Distinct junk tokens are all looked up (the cache holds misses, it does not guess):
    # that is what AUTH_FAILURE_LIMIT is for.
    before = key_finds(s)
    for i in range(30):
        assert c.get("/v1/sessions", headers=bearer(f"junk-distinct-{i}")).status_code == 401
    assert key_finds(s) - before == 30
    # A valid key is never cached: every use is a lookup, and it keeps working.
    secret = create_key(s, "valid-one")
    before = key_finds(s)
    for _ in range(5):
        assert c.get("/v1/sessions", headers=bearer(secret)).status_code == 200
    assert key_finds(s) - before == 5


def test_failed_authentications_are_limited_per_address_before_the_store(chatd):
    # Per hour, so that no token comes back while the test runs, however slow the machine.
    s = chatd({"AUTH_MODE": "keys", "API_TOKEN": ADMIN, "AUTH_FAILURE_LIMIT": "20/hour",
               "TRUSTED_PROXIES": "127.0.0.1", "WORKERS": "2"})
    c = s.client
    secret = create_key(s, "victim-key")
    before = key_finds(s)
    statuses = []
    for i in range(100):
        r = c.post("/v1/chat", json={"message": "x", "session_id": "af"}, headers=bearer(f"junk-{i}"))
        statuses.append(r.status_code)
        if r.status_code == 429:
            err = assert_v1_error(r, 429, "rate_limited")
            assert "AUTH_FAILURE_LIMIT" in err["message"], err
            assert 1 <= int(r.headers["retry-after"]) <= 3600, dict(r.headers)
    assert statuses == [401] * 20 + [429] * 80, statuses
    lookups = key_finds(s) - before
    assert lookups == 20, lookups  # the 80 refused requests never reached the store
    assert metric(s, "chatd_auth_key_lookups_total", result="limited") == 80
    assert metric(s, "chatd_rate_limited_total", kind="auth_failures") == 80
    # Every flavor answers the limit in its own shape.
    assert_seed_detail(c.get("/sessions", headers=bearer("junk-seed")), 429)
    r = c.post("/v1/chat/completions", json={"model": "claude-sonnet-4-6", "messages": [{"role": "user",
               "content": "x"}]}, headers=bearer("junk-openai"))
    assert r.status_code == 429 and set(r.json()["error"]) >= {"message", "type"}, r.text
    # Past the limit, a valid key from the same address needs a lookup too: refused (documented).
    assert c.get("/v1/sessions", headers=bearer(secret)).status_code == 429
    # The static token needs no lookup and still works; a missing token is a plain 401.
    assert c.get("/v1/sessions", headers=bearer(ADMIN)).status_code == 200
    assert c.get("/v1/sessions").status_code == 401
    # Another client address (behind the trusted proxy) is not affected.
    other = {"X-Forwarded-For": "198.51.100.77"}
    assert c.get("/v1/sessions", headers={**bearer(secret), **other}).status_code == 200
    assert c.get("/v1/sessions", headers={**bearer("junk-other"), **other}).status_code == 401
    # No request got a 500 and none waited on the database for the refused ones.
    assert key_finds(s) - before == 20 + 2


def test_key_created_after_a_miss_works_within_the_ttl(chatd, tmp_path):
    """A secret refused (and cached as unknown) before its key exists works at
    the latest TTL later: the key is made in another database, its secret
    tried, then the key imported into the server's database."""
    s = chatd({"AUTH_MODE": "keys", "API_TOKEN": ADMIN, "AUTH_FAILURE_LIMIT": "off", "WORKERS": "1"})
    c = s.client
    side = dict(s.env, DATABASE_URL="sqlite:///" + str(tmp_path / "side.db"))
    secret = create_key(side, "late-key")
    assert c.get("/v1/sessions", headers=bearer(secret)).status_code == 401
    export = tmp_path / "keys.jsonl"
    p = subprocess.run([conftest.CHATD_BIN, "export", "--out", str(export)], env=side, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p
    p = subprocess.run([conftest.CHATD_BIN, "import", "--in", str(export)], env=s.env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p
    imported = time.monotonic()
    before = key_finds(s)
    # Within the TTL the cached miss answers (no lookup); after it, the key works.
    assert c.get("/v1/sessions", headers=bearer(secret)).status_code == 401
    assert key_finds(s) == before
    deadline = imported + TTL_S + 3
    while True:
        r = c.get("/v1/sessions", headers=bearer(secret))
        if r.status_code == 200:
            break
        assert r.status_code == 401, r.text
        assert time.monotonic() < deadline, "a key created after a miss still refused past the TTL"
        time.sleep(0.2)
    assert time.monotonic() - imported >= 1.0  # it was the cache's lifetime, not luck


def test_readyz_reuses_a_recent_ping(chatd):
    s = chatd({"WORKERS": "2", "API_TOKEN": ADMIN})
    c = s.client
    before = pings(s)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 0.8:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}, r.text
        n += 1
    elapsed = time.monotonic() - t0
    done = pings(s) - before
    assert n >= 20, n
    assert 1 <= done <= 2 * (1 + int(elapsed)), (done, n, elapsed)
    # A burst of concurrent probes once the last result is stale: all connected
    # first, then every request sent at once, so they arrive while the first
    # ping of each worker is in flight and wait for it.
    time.sleep(1.1)
    before = pings(s)
    socks = [socket.create_connection(("127.0.0.1", s.port), timeout=20) for _ in range(60)]
    try:
        for sk in socks:
            sk.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = []
        for sk in socks:
            buf = b""
            while chunk := sk.recv(4096):
                buf += chunk
            got.append(buf.split(b" ", 2)[1])
    finally:
        for sk in socks:
            sk.close()
    assert got == [b"200"] * 60, got
    done = pings(s) - before
    assert 1 <= done <= 2, done  # one per worker
