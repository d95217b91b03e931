"""
test_sessions_stream.py: the template's GET /sessions (no pagination) is
streamed with bounded memory: pages of sessions read from the store as the
client takes the bytes. 2,500 sessions with 16 KiB system prompts (40 MB of
rows) are created through `chatd import`; the listing must be exactly the
document the template shape gives (every session, oldest first, same fields,
same bytes), the server's peak RSS must not grow by anything near the size of
what it read, and a client that disconnects mid-listing must leave the server
serving (the ASan build checks that nothing leaks then).
"""
import json
import os
import socket
import sqlite3
import subprocess
import time

import pytest

from conftest import CHATD_BIN
from pgfixtures import pg_db, pg_server  # noqa: F401 (fixtures)
from rawhttp import Reader, get, healthz_ok, read_response
from reliability import links_jemalloc, sanitized

N_SESSIONS = 2500
PROMPT_BYTES = 16 * 1024
BASE_MS = 1_700_000_000_000


def vm_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def usage():
    return {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0}


def sessions_file(path, n=N_SESSIONS, prompt_bytes=PROMPT_BYTES):
    """Writes the export file; returns [(created_at_ms, id, turn_count)]."""
    rows = []
    with open(path, "w") as f:
        f.write(json.dumps({"format": "chatd-export", "version": 1, "exported_at": BASE_MS,
                            "schema_version": 3}) + "\n")
        for i in range(n):
            # Every tenth pair shares a creation time: the order then falls back to the id.
            created = BASE_MS + (i - i % 2 if i % 10 == 0 else i) * 1000 + i % 7
            sid = f"stream-{(i * 7919) % n:06d}"
            turns = i % 5
            prompt = (f"prompt {i} " * (prompt_bytes // 8))[:prompt_bytes] if prompt_bytes else None
            f.write(json.dumps({"type": "session", "id": sid, "owner": None, "system_prompt": prompt,
                                "model": None, "created_at": created, "updated_at": created,
                                "turn_count": turns, "message_count": 0, "usage": usage(),
                                "cost_micros": 0, "messages": []}) + "\n")
            rows.append((created, sid, turns))
        f.write(json.dumps({"type": "end", "keys": 0, "sessions": n, "messages": 0}) + "\n")
    return rows


def expected_document(rows):
    """The bytes the whole-document listing wrote: json_dumps(JSON_COMPACT) of
    {"sessions": [...]}, oldest first by (created_at, id), times in local time
    (TZ=UTC here) with microseconds."""
    items = []
    for created, sid, turns in sorted(rows):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created // 1000)) + ".%06d" % (created % 1000 * 1000)
        items.append('{"session_id":"%s","turns":%d,"created_at":"%s"}' % (sid, turns, ts))
    return ('{"sessions":[' + ",".join(items) + "]}").encode()


def import_into(srv, path):
    env = dict(srv.env)
    r = subprocess.run([CHATD_BIN, "import", "--in", path], env=env, cwd=srv.tmpdir, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]


def list_sessions(port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(60)
    s.connect(("127.0.0.1", port))
    with s:
        s.sendall(get("/sessions", "Connection: close\r\n"))
        return read_response(Reader(s, 60))


def test_seed_sessions_streamed_whole_with_bounded_memory(chatd):
    env = {"TZ": "UTC", "WORKERS": "1"}
    if sanitized(CHATD_BIN):
        # ASan keeps freed blocks in a quarantine (256 MB by default), so its
        # RSS follows allocation churn; without it RSS follows live memory.
        env["ASAN_OPTIONS"] = ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=0",
                                                   "thread_local_quarantine_size_kb=0") if x)
    srv = chatd(env)
    path = os.path.join(srv.tmpdir, "sessions.jsonl")
    rows = sessions_file(path)
    import_into(srv, path)
    want = expected_document(rows)

    # Warm up the worker (allocator arenas, statements) with a small request.
    assert healthz_ok(srv.port)
    pid = srv.proc.pid
    hwm0 = vm_kib(pid, "VmHWM")
    status, headers, body = list_sessions(srv.port)
    hwm1 = vm_kib(pid, "VmHWM")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert headers.get("transfer-encoding") == "chunked"
    assert body == want, (len(body), len(want), body[:200], want[:200])
    parsed = json.loads(body)
    assert len(parsed["sessions"]) == N_SESSIONS
    assert len({s["session_id"] for s in parsed["sessions"]}) == N_SESSIONS

    rows_bytes = N_SESSIONS * PROMPT_BYTES
    grown = (hwm1 - hwm0) * 1024
    print(f"\nVmHWM {hwm0} KiB -> {hwm1} KiB (+{grown / 1e6:.1f} MB) listing {N_SESSIONS} sessions "
          f"whose rows hold {rows_bytes / 1e6:.1f} MB of system prompts; body {len(body)} bytes")
    # One page of 100 rows is 1.6 MB of prompts; reading pages of 1,000 (as the
    # listing used to) peaks far higher. Measured with glibc's malloc: +5.5 MB
    # with pages of 100, +18.6 MB with pages of 1,000; with jemalloc (its size
    # classes round a 16 KiB prompt up to 20 KiB; the rest of the difference
    # is not traced, and no MALLOC_CONF decay, tcache or arena setting changed
    # it): +9.8-13.1 MB and +48.5 MB. The bound leaves
    # room for SQLite's page cache; a sanitizer build adds shadow memory and
    # redzones.
    bound = (16 if sanitized(CHATD_BIN) or links_jemalloc(CHATD_BIN) else 8) * 1024 * 1024
    assert grown < bound, f"peak RSS grew by {grown / 1e6:.1f} MB"

    # A slow reader (small receive window) gets the same bytes.
    status, _, slow = list_sessions(srv.port, rcvbuf=4096)
    assert status == 200 and slow == want

    # The v1 listing (newest first, cursor pages) is unchanged by the new store call.
    r = srv.client.get("/v1/sessions", params={"limit": 3})
    assert r.status_code == 200
    newest = [sid for _, sid, _ in sorted(rows, reverse=True)[:3]]
    assert [s["id"] for s in r.json()["data"]] == newest


def test_seed_sessions_client_gone_mid_listing(chatd):
    srv = chatd({"TZ": "UTC", "WORKERS": "1", "STREAM_BUFFER_SIZE": "4KiB"})
    path = os.path.join(srv.tmpdir, "sessions.jsonl")
    sessions_file(path)
    import_into(srv, path)
    for round_ in range(5):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", srv.port))
        s.sendall(get("/sessions"))
        got = s.recv(2048 * (round_ + 1))  # the head and the first sessions, then hang up
        assert got.startswith(b"HTTP/1.1 200"), got[:100]
        if round_ % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        s.close()
    time.sleep(0.5)
    # The server still serves, listings included.
    assert healthz_ok(srv.port)
    status, _, body = list_sessions(srv.port)
    assert status == 200 and len(json.loads(body)["sessions"]) == N_SESSIONS
    # Every aborted listing was logged as a request that ended (the job was freed with it).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        ended = [o for o in srv.request_logs() if o.get("path") == "/sessions"]
        if len(ended) >= 6:
            break
        time.sleep(0.05)
    assert len(ended) >= 6, ended
    assert sum(1 for o in ended if o.get("client_closed")) >= 1, ended


def test_seed_sessions_sigterm_mid_listing(chatd):
    """Listings stuck on clients that stopped reading do not hold the shutdown:
    at DRAIN_TIMEOUT they are cut like the turns, and chatd exits 0 (under ASan:
    without leaking their jobs)."""
    n = 70000  # about 5.6 MB of JSON: more than the kernel buffers hold
    srv = chatd({"TZ": "UTC", "WORKERS": "1", "STREAM_BUFFER_SIZE": "4KiB", "DRAIN_TIMEOUT": "1s"})
    if not srv.env["DATABASE_URL"].startswith("sqlite:"):
        pytest.skip("the rows are written straight into the SQLite file")
    # `chatd import` takes about 0.5 ms a session (one transaction each): the
    # rows (no prompt, no messages) go into the SQLite file in one transaction.
    db = sqlite3.connect(srv.db_path, timeout=10)
    with db:
        db.executemany("INSERT INTO sessions (id, created_at, updated_at) VALUES (?, ?, ?)",
                       ((f"bulk-{i:06d}", BASE_MS + i, BASE_MS + i) for i in range(n)))
    db.close()
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(10)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(get("/sessions"))
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
            socks.append(s)  # and never read again
        time.sleep(1.0)
        assert not [o for o in srv.request_logs() if o.get("path") == "/sessions"], "the listing did not stall"
        t0 = time.monotonic()
        rc = srv.stop()
        took = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    assert rc == 0, "\n".join(srv.log_lines()[-20:])
    assert took < 5, took
    ended = [o for o in srv.request_logs() if o.get("path") == "/sessions"]
    # Cut as a failed stream (aborted), or closed with the connection at exit
    # when the job was waiting for the client to read: never completed.
    assert len(ended) == 2 and all(o.get("aborted") or o.get("client_closed") for o in ended), ended



def test_seed_sessions_database_lost_mid_listing_is_a_cut_response(pg_db, pg_server, chatd):
    """PostgreSQL goes away while a listing is half-sent: the response cannot
    become an error any more, so it is cut (no final chunk: a client sees a
    failed transfer, never a short list that parses). The server keeps serving
    and lists whole again once the database is back."""
    n = 70000  # about 5.6 MB of JSON: the stream stalls on the kernel buffers
    srv = chatd({"DATABASE_URL": pg_db, "TZ": "UTC", "WORKERS": "1", "STREAM_BUFFER_SIZE": "4KiB",
                 "DATABASE_QUEUE_TIMEOUT": "1s"})
    # The schema exists once chatd started (it migrates at start).
    pg_server.psql("INSERT INTO sessions (id, created_at, updated_at) "
                   f"SELECT 'pg-' || lpad(g::text, 6, '0'), g, g FROM generate_series(1, {n}) AS g",
                   db=pg_db.rsplit("/", 1)[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(20)
    s.connect(("127.0.0.1", srv.port))
    try:
        s.sendall(get("/sessions"))
        reader = Reader(s, 30)
        assert reader.line().startswith(b"HTTP/1.1 200")
        time.sleep(1.0)  # the listing stalls: the client reads nothing
        assert not [o for o in srv.request_logs() if o.get("path") == "/sessions"], "the listing did not stall"
        pg_server.stop_server()
        try:
            # Now read: the next page fails, and the stream ends without its last chunk.
            raw = reader.until_close()
        finally:
            pg_server.start_server()
    finally:
        s.close()
    assert not raw.endswith(b"0\r\n\r\n"), raw[-100:]
    assert not raw.rstrip().endswith(b"]}"), raw[-100:]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        ended = [o for o in srv.request_logs() if o.get("path") == "/sessions"]
        if ended:
            break
        time.sleep(0.05)
    assert len(ended) == 1 and ended[0].get("aborted") is True, ended

    # Back to normal once PostgreSQL is: the whole listing, well formed.
    deadline = time.monotonic() + 15
    while True:
        status, _, body = list_sessions(srv.port)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200
    assert len(json.loads(body)["sessions"]) == n
