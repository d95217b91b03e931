"""
The asynchronous store's edge cases, which only PostgreSQL exposes (SQLite
completes every operation at once, so no request ever waits on the store).

A psql session holding a table lock makes chatd's operations wait inside
PostgreSQL for as long as the test wants. Covered:
  - a client that leaves while its turn's load waits: the turn ends when the
    store answers, the lock it took is given back, the provider is never called;
  - a client that leaves while the turn's commit waits: the commit still lands
    (the provider's reply was complete), the session stays consistent;
  - SIGTERM while requests wait on the store: they get a 503
    server_shutting_down within the drain deadline, chatd exits 0 (and, in the
    sanitizer build, without a leak report) even though PostgreSQL never answered.
"""
import json
import socket
import time

from pgfixtures import pg_db, pg_server, requires_pg  # noqa: F401

pytestmark = requires_pg


class Locker:
    """A psql session holding a table lock until release()."""

    def __init__(self, pg_server, url, table):
        self.proc = pg_server.psql_session(url.rsplit("/", 1)[1])
        self.proc.stdin.write(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        assert self.proc.stdout.readline().strip() == "locked"
        self.released = False

    def release(self):
        if self.released:
            return
        self.released = True
        self.proc.stdin.write("ROLLBACK;\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _post_raw(srv, path, body):
    """Sends a POST on a raw socket and returns the socket (the test decides when to close it)."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def _wait(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start(chatd, url, **env):
    return chatd({"DATABASE_URL": url, "WORKERS": "1", "DATABASE_POOL_SIZE": "2",
                  "DATABASE_QUEUE_TIMEOUT": "20s", **{k: str(v) for k, v in env.items()}})


def test_client_leaves_while_the_load_waits(pg_db, chatd, pg_server, fake):
    srv = _start(chatd, pg_db)
    fake.reset()
    # The turn's first write (the turn lock) waits behind the psql session.
    locker = Locker(pg_server, pg_db, "turn_locks")
    try:
        sock = _post_raw(srv, "/v1/chat/stream", {"message": "never sent", "session_id": "async-load"})
        time.sleep(0.5)
        sock.close()  # the client leaves while the lock acquire waits
        time.sleep(0.3)
    finally:
        locker.release()
    # The acquire now runs and succeeds; the detached turn gives the lock back
    # and never calls the provider.
    _wait(lambda: pg_server.psql("SELECT count(*) FROM turn_locks", db=pg_db.rsplit("/", 1)[1]) == "0",
          what="the detached turn to release its lock")
    r = srv.client.post("/v1/chat", json={"message": "after", "session_id": "async-load"})
    assert r.status_code == 200, r.text
    assert r.json()["turn_count"] == 1
    bodies = [q["body"] for q in fake.requests()]
    assert not any("never sent" in json.dumps(b) for b in bodies), bodies


def test_client_leaves_while_the_commit_waits(pg_db, chatd, pg_server, fake):
    srv = _start(chatd, pg_db)
    # The load passes (a new session reads sessions, writes turn_locks); the
    # commit inserts into messages and waits there.
    locker = Locker(pg_server, pg_db, "messages")
    try:
        sock = _post_raw(srv, "/v1/chat/stream", {"message": "kept anyway", "session_id": "async-commit"})
        got = b""
        sock.settimeout(10)
        while b"event: delta" not in got:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        time.sleep(0.5)  # the provider finished; the commit is waiting on the lock
        assert b"event: done" not in got
        sock.close()
        time.sleep(0.3)
    finally:
        locker.release()
    # The commit was in flight when the client left: it lands, as a complete turn.
    def committed():
        r = srv.client.get("/v1/sessions/async-commit/messages")
        return r.status_code == 200 and len(r.json()["data"]) == 2
    _wait(committed, what="the commit to land")
    msgs = srv.client.get("/v1/sessions/async-commit/messages").json()["data"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"] == "kept anyway"
    assert msgs[1]["status"] == "complete" and msgs[1]["content"] == "Hello! You said: kept anyway"
    # Nothing was left locked: the next turn runs.
    r = srv.client.post("/v1/chat", json={"message": "next", "session_id": "async-commit"})
    assert r.status_code == 200 and r.json()["turn_count"] == 2, r.text


def test_shutdown_while_requests_wait_on_the_store(pg_db, chatd, pg_server):
    srv = _start(chatd, pg_db, DRAIN_TIMEOUT="1s")
    assert srv.client.post("/v1/chat", json={"message": "warm", "session_id": "async-warm"}).status_code == 200
    locker = Locker(pg_server, pg_db, "turn_locks")
    try:
        socks = [_post_raw(srv, "/v1/chat", {"message": f"stuck {i}", "session_id": f"async-stop-{i}"})
                 for i in range(2)]
        time.sleep(0.5)
        t0 = time.monotonic()
        srv.proc.send_signal(15)
        answers = []
        for s in socks:
            s.settimeout(10)
            got = b""
            while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            answers.append(got.decode(errors="replace"))
            s.close()
        waited = time.monotonic() - t0
        rc = srv.wait_exit(timeout=15)
    finally:
        locker.release()
    for a in answers:
        assert a.startswith("HTTP/1.1 503"), a
        assert "server_shutting_down" in a, a
    assert waited < 5, waited
    assert rc == 0, "\n".join(srv.log_lines()[-30:])

