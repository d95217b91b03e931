"""
chatd on PostgreSQL (DATABASE_URL=postgres://...), end to end (issue 6).

One throwaway PostgreSQL cluster per module (tests/pg/pgserver.sh), a fresh
database per test. Covered: the seed and /v1 APIs on PostgreSQL; API keys made
with `chatd keys create` on the PostgreSQL URL; two chatd instances sharing
one PostgreSQL and one Redis (a conversation moves between them, concurrent
turns on one session give one 200 and one 409, an idempotent request replays
on the other instance, a rate limit holds in total); PostgreSQL stopped and
restarted under a running chatd (503 with a JSON error during the outage, 200
again after it, no chatd restart); pool exhaustion (DATABASE_POOL_SIZE=1
behind a lock held by another session: 503 after DATABASE_QUEUE_TIMEOUT, never
a 401).
"""
import shutil
import threading
import time

import pytest

from helpers import assert_v1_error, directive, echo, read_sse
from pgfixtures import chatd_cli, create_key, pg_db, pg_server, requires_pg  # noqa: F401

pytestmark = requires_pg

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/deps.sh installs it)")


@pytest.fixture
def redis():
    from test_redis_limits import Redis
    r = Redis()
    yield r
    r.stop()
    shutil.rmtree(r.dir, ignore_errors=True)


def _auth(secret):
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def _ok(resp):
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.json()


def _chat(server, sid, msg="hi", key=None, **extra):
    return server.client.post("/v1/chat", json={"message": msg, "session_id": sid, **extra}, headers=_auth(key))


def _start(chatd, url, **env):
    return chatd({"DATABASE_URL": url, **{k: str(v) for k, v in env.items()}})


# ---------------------------------------------------------------- one instance


def test_seed_and_v1_api_on_postgres(pg_db, chatd, fake):
    srv = _start(chatd, pg_db)
    c = srv.client
    assert _ok(c.get("/readyz"))["status"] == "ready"

    # Seed API.
    r = _ok(c.post("/chat", json={"message": "hello pg", "session_id": "pg-seed", "system_prompt": "Be brief."}))
    assert r["response"] == echo("hello pg") and r["turn_count"] == 1
    with c.stream("POST", "/chat-stream", json={"message": "streamed", "session_id": "pg-seed"}) as resp:
        assert resp.status_code == 200
        assert resp.read().decode() == echo("streamed")
    h = _ok(c.get("/history/pg-seed"))
    assert h["turn_count"] == 2
    assert [m["content"] for m in h["messages"]] == ["hello pg", echo("hello pg"), "streamed", echo("streamed")]
    # The provider saw the stored history and the system prompt of the first turn.
    sent = fake.requests()[-1]["body"]
    assert "Be brief." in str(sent["system"])
    assert len(sent["messages"]) == 3

    # /v1, non-streaming and streaming, unicode.
    text = "Grüße 🌍 — 你好"
    v = _ok(_chat(srv, "pg-v1", text))
    assert v["response"] == echo(text) and v["turn_count"] == 1 and v["usage"]["output_tokens"] > 0
    with c.stream("POST", "/v1/chat/stream", json={"message": "two", "session_id": "pg-v1"}) as resp:
        assert resp.status_code == 200
        sse = read_sse(resp)
    assert sse.names()[0] == "start" and sse.names()[-1] == "done"
    assert sse.deltas_text() == echo("two") and sse.data("done")[0]["turn_count"] == 2
    msgs = _ok(c.get("/v1/sessions/pg-v1/messages"))["data"]
    assert [m["seq"] for m in msgs] == [1, 2, 3, 4]
    assert msgs[0]["content"] == text and msgs[1]["status"] == "complete"
    ids = [int(m["id"].split("_")[1]) for m in msgs]
    assert ids == sorted(ids) and len(set(ids)) == 4
    sess = _ok(c.get("/v1/sessions/pg-v1"))
    assert sess["turn_count"] == 2 and sess["message_count"] == 4

    # Reset keeps the session and its cost; delete removes it.
    assert _ok(c.post("/reset/pg-seed")) == {"status": "reset", "session_id": "pg-seed", "previous_turns": 2}
    assert _ok(c.get("/history/pg-seed"))["messages"] == []
    assert _ok(c.post("/chat", json={"message": "again", "session_id": "pg-seed"}))["turn_count"] == 1
    assert _ok(c.get("/v1/sessions/pg-seed/messages"))["data"][0]["seq"] == 1
    assert c.delete("/v1/sessions/pg-v1").status_code == 204
    assert c.get("/v1/sessions/pg-v1").status_code == 404
    assert _ok(c.delete("/history/pg-v1")) == {"status": "not_found", "session_id": "pg-v1"}
    assert c.get("/history/pg-v1").status_code == 404

    # Paging: newest first, every session once.
    for i in range(5):
        _ok(_chat(srv, f"pg-page-{i}", f"p{i}"))
        time.sleep(0.002)  # distinct creation times
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = _ok(c.get("/v1/sessions", params=params))
        assert len(body["data"]) <= 2
        seen += [s["id"] for s in body["data"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == [f"pg-page-{i}" for i in range(4, -1, -1)] + ["pg-seed"]
    assert {s["session_id"] for s in _ok(c.get("/sessions"))["sessions"]} == set(seen)
    assert c.get("/v1/sessions", params={"cursor": "garbage!"}).status_code == 400

    # Stats are counters, kept right through reset and delete.
    st = _ok(c.get("/v1/stats"))
    assert st["sessions"] == 6 and st["turns"] == 6 and st["messages"] == 12
    seed = _ok(c.get("/stats"))
    assert seed["total_sessions"] == 6 and seed["total_messages"] == 12


def test_api_keys_on_postgres(pg_db, chatd):
    admin = create_key(pg_db, "ops", role="admin")
    alice = create_key(pg_db, "alice")
    bob = create_key(pg_db, "bob")
    carol = create_key(pg_db, "carol", rate_limit="2/minute")
    srv = _start(chatd, pg_db, AUTH_MODE="keys", RATE_LIMIT="100/minute")
    assert srv.client.post("/v1/chat", json={"message": "x"}).status_code == 401
    assert _chat(srv, "k1", key="chatd_" + "0" * 48).status_code == 401
    assert _ok(_chat(srv, "pg-alice", "mine", key=alice["secret"]))["turn_count"] == 1
    # Another user's session is a 404; an admin sees it.
    assert srv.client.get("/v1/sessions/pg-alice", headers=_auth(bob["secret"])).status_code == 404
    assert _chat(srv, "pg-alice", "steal", key=bob["secret"]).status_code == 404
    assert srv.client.get("/v1/sessions/pg-alice", headers=_auth(admin["secret"])).status_code == 200
    assert srv.client.get("/v1/stats", headers=_auth(alice["secret"])).status_code == 403
    # The key's own limit applies.
    codes = [_chat(srv, f"pg-carol-{i}", key=carol["secret"]).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    # Revocation through the CLI on the PostgreSQL URL takes effect at once.
    r = chatd_cli(["keys", "revoke", "alice"], pg_db)
    assert r.returncode == 0, r.stderr
    assert _chat(srv, "pg-alice", "again", key=alice["secret"]).status_code == 401
    listing = chatd_cli(["keys", "list"], pg_db).stdout
    assert "revoked" in listing and "alice" in listing


# ------------------------------------------------------------ several instances


def _pair(chatd, url, redis, limit="off", **env):
    a = _start(chatd, url, REDIS_URL=redis.url, RATE_LIMIT=limit, **env)
    b = _start(chatd, url, REDIS_URL=redis.url, RATE_LIMIT=limit, **env)
    time.sleep(0.3)  # each worker's Redis connection completes
    return a, b


@needs_redis
def test_two_instances_share_postgres_and_redis(pg_db, chatd, redis, fake):
    a, b = _pair(chatd, pg_db, redis)

    # A conversation started on one instance continues on the other.
    assert _ok(_chat(a, "mi-move", "first"))["turn_count"] == 1
    assert _ok(_chat(b, "mi-move", "second"))["turn_count"] == 2
    assert _ok(_chat(a, "mi-move", "third"))["turn_count"] == 3
    h = _ok(b.client.get("/history/mi-move"))
    assert [m["content"] for m in h["messages"] if m["role"] == "user"] == ["first", "second", "third"]
    assert len(fake.requests()[-1]["body"]["messages"]) == 5

    # Concurrent turns on one session through both: exactly one 200, one 409.
    slow = "slow " + directive({"ttft_ms": 1500})
    results = {}

    def send(name, server):
        results[name] = _chat(server, "mi-busy", slow)

    n0 = len(fake.requests())
    ta = threading.Thread(target=send, args=("a", a))
    ta.start()
    assert len(fake.wait_requests(n0 + 1, timeout=5)) == n0 + 1  # a holds the turn lock
    send("b", b)
    ta.join(timeout=20)
    codes = sorted(r.status_code for r in results.values())
    assert codes == [200, 409], {k: (r.status_code, r.text) for k, r in results.items()}
    assert_v1_error(results["b"], 409, "session_busy")
    assert _ok(b.client.get("/v1/sessions/mi-busy"))["turn_count"] == 1

    # An idempotent request replays on the other instance.
    hdr = {"Idempotency-Key": "mi-idem-1"}
    first = a.client.post("/v1/chat", json={"message": "once", "session_id": "mi-idem"}, headers=hdr)
    again = b.client.post("/v1/chat", json={"message": "once", "session_id": "mi-idem"}, headers=hdr)
    assert first.status_code == 200 and again.status_code == 200, again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    assert _ok(a.client.get("/v1/sessions/mi-idem"))["turn_count"] == 1

    # Both see the same counters.
    assert _ok(a.client.get("/v1/stats")) == _ok(b.client.get("/v1/stats"))


@needs_redis
def test_rate_limit_holds_in_total_across_two_instances(pg_db, chatd, redis):
    a, b = _pair(chatd, pg_db, redis, limit="4/minute")
    codes = [_chat(a if i % 2 == 0 else b, f"mi-rl-{i}").status_code for i in range(8)]
    assert codes.count(200) == 4 and codes.count(429) == 4, codes
    assert _ok(a.client.get("/v1/stats"))["sessions"] == 4


# ------------------------------------------------------------------- failures


def _wait_status(server, path, want, timeout, **kw):
    deadline = time.monotonic() + timeout
    while True:
        r = server.client.get(path, **kw)
        if r.status_code == want:
            return r
        assert time.monotonic() < deadline, f"{path}: still {r.status_code} {r.text} after {timeout}s"
        time.sleep(0.1)


def test_postgres_restart_is_survived(pg_db, chatd, pg_server):
    srv = _start(chatd, pg_db, DATABASE_QUEUE_TIMEOUT="1s")
    assert _ok(_chat(srv, "pg-restart", "before"))["turn_count"] == 1

    # A quick restart between requests: the pool reconnects by itself.
    pg_server.restart()
    deadline = time.monotonic() + 5
    while True:
        r = _chat(srv, "pg-restart", "after a restart")
        if r.status_code == 200:
            break
        assert r.status_code == 503, (r.status_code, r.text)
        assert time.monotonic() < deadline, "chatd did not recover from a PostgreSQL restart"
        time.sleep(0.1)
    assert r.json()["turn_count"] == 2

    # An outage: requests fail fast with a JSON 503, then recover.
    pg_server.stop_server()
    try:
        for path in ("/v1/sessions/pg-restart", "/v1/sessions"):
            t0 = time.monotonic()
            r = srv.client.get(path)
            assert time.monotonic() - t0 < 5
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["type"] in ("database_unavailable", "internal_error"), r.text
        r = _chat(srv, "pg-restart", "during the outage")
        assert r.status_code == 503 and "error" in r.json(), r.text
        r = srv.client.post("/chat", json={"message": "seed during the outage", "session_id": "pg-restart"})
        assert r.status_code == 503 and "detail" in r.json(), r.text
        assert srv.client.get("/readyz").status_code == 503
        assert _ok(srv.client.get("/healthz"))["status"] == "ok"
    finally:
        pg_server.start_server()
    _wait_status(srv, "/readyz", 200, timeout=10)
    t0 = time.monotonic()
    while True:
        r = _chat(srv, "pg-restart", "after the outage")
        if r.status_code == 200 or time.monotonic() - t0 > 5:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    assert r.json()["turn_count"] == 3  # nothing of the outage was committed
    assert srv.proc.poll() is None


def test_postgres_outage_with_keys_is_503_not_401(pg_db, chatd, pg_server):
    key = create_key(pg_db, "outage")
    srv = _start(chatd, pg_db, AUTH_MODE="keys", DATABASE_QUEUE_TIMEOUT="1s")
    assert _chat(srv, "pg-k", key=key["secret"]).status_code == 200
    pg_server.stop_server()
    try:
        r = _chat(srv, "pg-k", key=key["secret"])
        assert r.status_code == 503, (r.status_code, r.text)
        assert "www-authenticate" not in r.headers
    finally:
        pg_server.start_server()
    _wait_status(srv, "/v1/sessions/pg-k", 200, timeout=10, headers=_auth(key["secret"]))


def test_pool_exhaustion_is_503_after_the_queue_timeout(pg_db, chatd, pg_server):
    key = create_key(pg_db, "pool")
    queue_ms = 500
    srv = _start(chatd, pg_db, AUTH_MODE="keys", WORKERS=1, DATABASE_POOL_SIZE=1,
                 DATABASE_QUEUE_TIMEOUT=f"{queue_ms}ms")
    h = _auth(key["secret"])
    assert srv.client.get("/v1/sessions", headers=h).status_code == 200

    # Another session holds a lock that the key lookup waits for: the one
    # pool connection is stuck behind it, the next requests queue.
    dbname = pg_db.rsplit("/", 1)[1]
    locker = pg_server.psql_session(dbname)
    try:
        locker.stdin.write("BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        assert locker.stdout.readline().strip() == "locked"
        stuck = {}
        t = threading.Thread(target=lambda: stuck.setdefault("r", srv.client.get("/v1/sessions", headers=h)))
        t.start()
        time.sleep(0.3)
        for path in ("/v1/sessions", "/v1/models", "/history/x"):
            t0 = time.monotonic()
            r = srv.client.get(path, headers=h)
            waited = time.monotonic() - t0
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert "www-authenticate" not in r.headers
            assert queue_ms / 1000 * 0.8 <= waited < queue_ms / 1000 + 3, waited
        assert t.is_alive()  # the first request still waits for the lock
    finally:
        locker.stdin.write("ROLLBACK;\n")
        locker.stdin.close()
        locker.wait(timeout=10)
    t.join(timeout=10)
    assert not t.is_alive()
    assert stuck["r"].status_code in (200, 503), stuck["r"].text
    assert srv.client.get("/v1/sessions", headers=h).status_code == 200
    # Each refused request was counted, under the operation that waited.
    admin = create_key(pg_db, "pool-admin", role="admin")
    metrics = srv.client.get("/metrics", headers=_auth(admin["secret"]))
    assert metrics.status_code == 200
    from prometheus_client.parser import text_string_to_metric_families
    unavailable = {s.labels["op"]: s.value for fam in text_string_to_metric_families(metrics.text)
                   if fam.name == "chatd_db_unavailable" for s in fam.samples if s.name.endswith("_total")}
    assert unavailable.get("key_find", 0) >= 3, unavailable
