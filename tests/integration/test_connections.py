"""
test_connections.py: the connection cap (MAX_CONNECTIONS), the descriptor
limit raised at start, and accept() backing off instead of spinning when
descriptors run out. Raw sockets (rawhttp.py), so that each connection is
exactly one socket held open as long as the test says.
"""
import json
import os
import resource
import socket
import threading
import time

from helpers import directive
from rawhttp import Closed, Reader, connect, get, healthz_ok, read_request, read_response

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of the whole process (every thread), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def metric(port, name):
    with connect(port) as s:
        s.sendall(get("/metrics", "Connection: close\r\n"))
        status, _, body = read_response(Reader(s))
    assert status == 200, body
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def idle_keepalive(port):
    """A connection that was served once (so chatd surely accepted it) and stays open."""
    s = connect(port)
    s.sendall(get("/healthz"))
    status, headers, _ = read_response(Reader(s))
    assert status == 200 and headers.get("connection", "").lower() != "close", headers
    return s


def refused(port):
    """What a new connection gets: ('503', body) or ('closed', bytes read)."""
    s = connect(port)
    try:
        try:
            s.sendall(get("/healthz"))
        except (BrokenPipeError, ConnectionResetError):
            return "closed", b""
        try:
            status, _, body = read_response(Reader(s))
            return str(status), body
        except Closed as e:
            return "closed", e.args[0] if e.args else b""
    finally:
        s.close()


def test_connection_cap_refuses_past_max_and_keeps_streams(chatd, fake):
    cap = 4
    srv = chatd({"MAX_CONNECTIONS": str(cap), "WORKERS": "2"})
    started = [o for o in srv.logs() if o.get("msg") == "listening"]
    assert started and started[0]["max_connections"] == cap

    # One stream in flight: 30 words, 60 ms apart (about 2 s).
    words = 30
    msg = "stream please " + directive({"reply_words": words, "gap_ms": 60})
    body = json.dumps({"session_id": "cap-stream", "message": msg}).encode()
    stream_sock = connect(srv.port, timeout=20)
    stream_sock.sendall((f"POST /v1/chat/stream HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    result = {}

    def read_stream():
        try:
            result["resp"] = read_response(Reader(stream_sock, 20))
        except Exception as e:  # reported by the assertion below
            result["error"] = repr(e)

    reader = threading.Thread(target=read_stream)
    reader.start()
    try:
        fake.wait_requests(1)
        idle = [idle_keepalive(srv.port) for _ in range(cap - 1)]
        # The cap is reached: the next connection is refused, several times over.
        answers = [refused(srv.port) for _ in range(3)]
        for kind, data in answers:
            assert kind in ("503", "closed"), answers
            if kind == "503":
                assert json.loads(data)["error"]["type"] == "too_many_connections", data
        assert any(kind == "503" for kind, _ in answers), answers
        # The open connections are untouched: an idle one still serves.
        idle[0].sendall(get("/healthz"))
        assert read_response(Reader(idle[0]))[0] == 200

        reader.join(timeout=20)
        assert not reader.is_alive()
        assert "error" not in result, result
        status, headers, raw = result["resp"]
        assert status == 200
        events = [blk for blk in raw.decode().split("\n\n") if blk.strip()]
        assert any(e.startswith("event: done") for e in events), raw[-300:]
        text = "".join(json.loads(e.split("data: ", 1)[1])["text"]
                       for e in events if e.startswith("event: delta"))
        assert len(text.split()) == words, text
    finally:
        stream_sock.close()

    # Close two connections: new ones are served again (the count drops when
    # the sockets are closed, within the tracker sweep's 250 ms).
    for s in idle[:2]:
        s.close()
    deadline = time.monotonic() + 5
    while not healthz_ok(srv.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert healthz_ok(srv.port)
    for s in idle[2:]:
        s.close()
    time.sleep(0.6)
    assert metric(srv.port, "chatd_connections_refused_total") >= 3
    # Only the /metrics connection itself is open (give or take one closing).
    assert metric(srv.port, "chatd_connections_open") <= 2


def test_refused_burst_leaves_no_libevent_warnings(chatd, fake):
    """A burst of streams past the cap: refused connections are accepted,
    answered and closed within a loop turn or two, beside accepted ones, and a
    descriptor number is often reused before the loop applies its watch
    changes. libevent then reports that an epoll_ctl reached a closed
    descriptor: benign (nothing stays unwatched), so chatd logs it at debug,
    not as a warning an operator must chase."""
    cap, n = 40, 100
    srv = chatd({"MAX_CONNECTIONS": str(cap), "WORKERS": "2"})
    msg = "stream please " + directive({"reply_words": 5, "gap_ms": 200})
    results = []
    lock = threading.Lock()

    def stream(i):
        body = json.dumps({"session_id": f"burst-{i}", "message": msg}).encode()
        try:
            with connect(srv.port, timeout=20) as s:
                s.sendall((f"POST /v1/chat/stream HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
                kind = read_response(Reader(s, 20))[0]
        except (Closed, BrokenPipeError, ConnectionResetError):
            kind = "closed"
        with lock:
            results.append(kind)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == n and set(results) <= {200, 503, "closed"}, results
    assert results.count(200) >= cap // 2 and results.count(200) + results.count(503) + results.count("closed") == n
    logged = [o for o in srv.logs() if o.get("msg") == "libevent"]
    assert not [o for o in logged if o.get("level") in ("warn", "error")], logged[:3]


def test_nofile_soft_limit_raised_and_cap_derived(chatd):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    assert hard == resource.RLIM_INFINITY or hard > low
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        srv = chatd({"WORKERS": "2", "DATABASE_POOL_SIZE": "8"})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    logs = srv.logs()
    lim = [o for o in logs if o.get("msg") == "file descriptor limit (RLIMIT_NOFILE)"]
    assert len(lim) == 1, lim
    assert lim[0]["soft_at_start"] == low
    assert lim[0]["soft"] == lim[0]["hard"]
    with open(f"/proc/{srv.proc.pid}/limits") as f:
        row = next(line for line in f if line.startswith("Max open files")).split()
    assert row[3] == row[4], row  # soft == hard in the running process
    listening = next(o for o in logs if o.get("msg") == "listening")
    if lim[0]["soft"] != "unlimited":
        # README: (soft - 64 - 16 per worker - DATABASE_POOL_SIZE) / 2
        assert listening["max_connections"] == max(1, (lim[0]["soft"] - 64 - 2 * 16 - 8) // 2)


def test_accept_backs_off_on_emfile_and_recovers(chatd):
    srv = chatd({"WORKERS": "1", "MAX_CONNECTIONS": "100000", "HEADER_TIMEOUT": "30s"})
    pid = srv.proc.pid
    assert healthz_ok(srv.port)
    # 64 descriptors for the whole process: a few dozen connections exhaust them.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, 64))
    socks = []
    try:
        for _ in range(90):  # the kernel completes these handshakes (backlog 1024)
            socks.append(connect(srv.port))
        time.sleep(0.5)
        emfile = [o for o in srv.logs() if o.get("msg") == "accept failed, listener paused"]
        assert emfile and emfile[0]["errno"] == 24, emfile  # EMFILE: the pressure is real
        c0 = cpu_seconds(pid)
        t0 = time.monotonic()
        time.sleep(2.0)
        used = cpu_seconds(pid) - c0
        wall = time.monotonic() - t0
        print(f"chatd CPU under EMFILE pressure: {used:.3f} s over {wall:.2f} s")
        assert used < 0.1 * wall, f"{used:.3f} s of CPU in {wall:.2f} s: the listener spins"
        assert srv.proc.poll() is None
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while not healthz_ok(srv.port, timeout=2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert healthz_ok(srv.port)


class IdleClosingProvider:
    """An Anthropic-shaped provider on a raw socket: answers every request on
    a keep-alive connection, and closes a connection once it has been idle for
    idle_close_s (None: never). Counts the connections it accepted."""

    REPLY = json.dumps({"id": "msg_idle", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
                        "content": [{"type": "text", "text": "still here"}], "stop_reason": "end_turn",
                        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 2}}).encode()

    def __init__(self, idle_close_s):
        self.idle_close_s = idle_close_s
        self.connections = 0
        self.requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                conn.settimeout(self.idle_close_s)
                try:
                    req = read_request(conn, buf)
                except OSError:  # idle for idle_close_s: close it, as servers do with idle keep-alives
                    return
                if req is None:
                    return
                buf = req[2]
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(self.REPLY) + self.REPLY)

    def close(self):
        self.sock.close()


def stateless(srv):
    body = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "are you there?"}]}
    r = srv.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "still here"


def test_provider_connection_reused_then_closed_while_idle(chatd):
    """A provider connection stays watched between calls (llm/transport.c,
    "Watches"): it is reused by the next call, and when the provider closes it
    while idle chatd stops watching it (no busy loop on the closed socket) and
    the next call connects again."""
    prov = IdleClosingProvider(idle_close_s=0.6)
    try:
        srv = chatd({"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{prov.port}", "WORKERS": "1",
                     "PROVIDER_MAX_RETRIES": "0"})
        stateless(srv)
        stateless(srv)
        assert (prov.requests, prov.connections) == (2, 1)  # kept alive and reused
        time.sleep(1.2)  # the provider closed it meanwhile
        cpu0 = cpu_seconds(srv.proc.pid)
        time.sleep(1.5)
        idle_cpu = cpu_seconds(srv.proc.pid) - cpu0
        assert idle_cpu < 0.3, f"chatd used {idle_cpu:.2f} s of CPU in 1.5 s idle: spinning on a closed socket?"
        for _ in range(3):
            stateless(srv)
        assert (prov.requests, prov.connections) == (5, 2)
    finally:
        prov.close()


def test_provider_connections_stay_while_more_than_64_calls_run(chatd, fake):
    """More calls at once than the 64 idle provider connections a worker keeps
    (llm/transport.h, LLM_MAX_IDLE_CONNECTIONS): a connection whose call ends
    goes to the next call instead of being closed (a bound on all connections
    closed it, and every later call connected anew), and once the calls are
    over at most 64 idle ones (plus the last call's) stay open."""
    srv = chatd({"WORKERS": "1"})
    clients, rounds = 96, 4
    errors = []

    def client(k):
        try:
            with connect(srv.port, timeout=30) as s:
                reader = Reader(s, 30)
                for i in range(rounds):
                    body = json.dumps({"model": "claude-sonnet-4-6",
                                       "messages": [{"role": "user", "content": f"hi {k}.{i}"}]}).encode()
                    s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
                               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                              + body)
                    status, _, rbody = read_response(reader)
                    if status != 200:
                        errors.append((status, rbody[:200]))
        except Exception as e:  # reported below
            errors.append(repr(e))

    fake.reset()
    fake.script(default={"header_delay_ms": 150})
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    st = fake.stats()
    assert st["requests"] == clients * rounds, st
    # A connection per client (96 measured), a few more allowed where calls
    # outnumbered the idle connections for a moment. Closing the connection of
    # every call that ended with more than 64 open made 363 for 384 calls.
    assert st["connections_total"] <= clients + 16, st
    # curl trims its cache when a connection goes back into it, one connection
    # each time, against the bound of that moment: calls that end in the same
    # loop turn all count then, so a few more than 64 may stay right after the
    # burst (68 seen), and each later call that ends closes one of them.
    st = fake.stats()
    assert st["connections"] - 1 <= 64 + 16, st
    with connect(srv.port, timeout=30) as s:
        reader = Reader(s, 30)
        for i in range(16):
            body = json.dumps({"model": "claude-sonnet-4-6",
                               "messages": [{"role": "user", "content": f"after {i}"}]}).encode()
            s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
            assert read_response(reader)[0] == 200
    # Open now: the stats request's own, and at most 64 idle ones plus the
    # connection of the last call.
    st = fake.stats()
    assert st["connections"] - 1 <= 65, st
