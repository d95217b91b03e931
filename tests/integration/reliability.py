"""
reliability.py: helpers shared by the reliability tests (test_cancellation,
test_backpressure, test_timeouts, test_retries, test_idempotency, test_crash,
test_shutdown): raw-socket HTTP so that a disconnect happens at a known
instant, the fake provider's clock, and the history well-formedness checks.
"""
import json
import socket
import statistics
import time

from helpers import SSE


# --------------------------------------------------------------- raw sockets


def raw_request(port, method, path, body=None, headers=None, timeout=10.0):
    """Opens a connection, sends one complete HTTP/1.1 request, returns the socket."""
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    for k, v in hdrs.items():
        head.append(f"{k}: {v}")
    if body is not None or method == "POST":
        head.append(f"Content-Length: {len(data)}")
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return s


def read_until(sock, pred, timeout=10.0, buf=b""):
    """Reads until pred(buf) is true; returns buf. Fails on EOF or timeout."""
    deadline = time.monotonic() + timeout
    while not pred(buf):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting; got {buf[-600:]!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early; got {buf[-600:]!r}"
        buf += chunk
    return buf


def read_to_eof(sock, timeout=10.0, buf=b""):
    """Reads until the peer closes; returns (buf, eof_seen)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return buf, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return buf, True
        except socket.timeout:
            return buf, False
        if not chunk:
            return buf, True
        buf += chunk


def close_now(sock):
    """Closes the socket and returns the wall-clock time (ms) just before it."""
    t = time.time() * 1000.0
    sock.close()
    return t


def split_head(raw):
    """(status, headers dict lowercased, body bytes) of a raw response (head complete)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def dechunk(body):
    """Decodes a (possibly incomplete) chunked body; returns (data, complete). Linear time."""
    out = []
    pos = 0
    n = len(body)
    while True:
        idx = body.find(b"\r\n", pos)
        if idx < 0:
            return b"".join(out), False
        size = int(body[pos:idx].split(b";")[0], 16)
        if size == 0:
            return b"".join(out), True
        start = idx + 2
        if n < start + size + 2:
            out.append(body[start:start + size])
            return b"".join(out), False
        out.append(body[start:start + size])
        pos = start + size + 2


def parse_sse_text(text):
    """Parses SSE text (LF line endings, as chatd sends) into an SSE object."""
    sse = SSE()
    ev, data = None, []
    for line in text.split("\n"):
        if line == "":
            if data:
                raw = "\n".join(data)
                try:
                    val = json.loads(raw)
                except ValueError:
                    val = raw
                sse.events.append((ev or "message", val, 0.0))
            ev, data = None, []
        elif line.startswith(":"):
            sse.comments.append((line[1:].strip(), 0.0))
        else:
            f, _, v = line.partition(":")
            v = v[1:] if v.startswith(" ") else v
            if f == "event":
                ev = v
            elif f == "data":
                data.append(v)
    return sse


def sse_of(raw):
    """SSE events of a raw chunked text/event-stream response (head included)."""
    _, _, body = split_head(raw)
    data, _ = dechunk(body)
    return parse_sse_text(data.decode("utf-8", "replace"))


# ------------------------------------------------------------- fake provider


def provider_requests(fake):
    """Only the POST /v1/messages calls (not count_tokens or calibration pings)."""
    return [q for q in fake.requests() if q.get("path") == "/v1/messages"]


def wait_provider(fake, pred, timeout=5.0):
    """Polls the fake's log until pred(requests) is true; returns the requests."""
    deadline = time.monotonic() + timeout
    while True:
        reqs = provider_requests(fake)
        if pred(reqs) or time.monotonic() > deadline:
            return reqs
        time.sleep(0.01)


def fake_clock_offset(fake):
    """The fake's epoch clock minus ours, in ms (best of 5 round trips).

    The fake stamps with performance.timeOrigin + now(), which can be tens of ms
    away from time.time() (Node fixes timeOrigin imprecisely at start); the
    offset makes both comparable. Each probe is one write on a fresh raw socket
    (no Nagle / delayed-ACK stall), so its round trip bounds the error."""
    best = None
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    req = (f"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"x-api-key: calibration\r\nanthropic-version: 2023-06-01\r\nConnection: close\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", fake.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.time() * 1000.0
        s.sendall(req)
        read_until(s, lambda b: b"\r\n\r\n" in b, timeout=5)
        t1 = time.time() * 1000.0
        s.close()
        stamp = [q for q in fake.requests() if q.get("path") == "/v1/messages/count_tokens"][-1]["received_at_ms"]
        rtt = t1 - t0
        if best is None or rtt < best[0]:
            best = (rtt, stamp - (t0 + t1) / 2.0)
    assert best[0] < 20, f"cannot calibrate the fake's clock: best round trip {best[0]:.1f} ms"
    return best[1]


# ------------------------------------------------------------------ history


def messages(client, sid):
    """Every message of a session (all pages), or None when it does not exist."""
    out, after = [], 0
    while True:
        r = client.get(f"/v1/sessions/{sid}/messages", params={"limit": 1000, "after": after})
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["data"][-1]["seq"]


def assert_well_formed(client, sid):
    """User/assistant alternation, contiguous seqs, counts agree. Returns the messages."""
    msgs = messages(client, sid)
    if msgs is None:
        return []
    roles = [m["role"] for m in msgs]
    assert roles == ["user", "assistant"] * (len(msgs) // 2) and len(msgs) % 2 == 0, (sid, roles)
    seqs = [m["seq"] for m in msgs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (sid, seqs)
    for m in msgs:
        assert m["status"] in ("complete", "incomplete"), m
        if m["role"] == "user":
            assert m["status"] == "complete", m
    s = client.get(f"/v1/sessions/{sid}")
    assert s.status_code == 200, s.text
    assert s.json()["message_count"] == len(msgs), (s.json(), len(msgs))
    return msgs


def assert_alternating_upstream(body):
    """A provider request body's messages alternate user/assistant, start with user, none empty."""
    msgs = body["messages"]
    assert msgs and msgs[0]["role"] == "user", msgs
    for i, m in enumerate(msgs):
        assert m["role"] == ("user" if i % 2 == 0 else "assistant"), [x["role"] for x in msgs]
        content = m["content"]
        text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
        assert text.strip(), m


def summary(name, values, unit="ms"):
    if not values:
        return f"{name}: no samples"
    return (f"{name}: n={len(values)} max={max(values):.1f}{unit} "
            f"median={statistics.median(values):.1f}{unit} min={min(values):.1f}{unit}")


def report(request, line):
    """Prints a figure for the lead: on the terminal even under pytest -q (and to stdout for -s)."""
    print(line)
    tr = request.config.pluginmanager.getplugin("terminalreporter")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            tr.write_line("")
            tr.write_line("[reliability] " + line)


# ------------------------------------------------------------------- builds


def sanitized(path):
    """True when the binary is an ASan/TSan build (valgrind cannot run it; its
    allocator quarantine makes RSS track allocation churn, not live memory)."""
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


def links_jemalloc(path):
    """True when the binary uses jemalloc (src/core/mem.h; every build but the
    sanitizer and fuzz ones, and -DCHATD_JEMALLOC=OFF)."""
    with open(path, "rb") as f:
        return b"libjemalloc.so" in f.read()


# ------------------------------------------------------------------- crashes


def kill9(srv):
    """SIGKILLs a conftest ChatdServer and waits for it, without recording an
    exit code (the launcher requires every SIGTERM exit to be 0; a SIGKILL is
    the test's own doing). srv.start() then restarts it on the same database."""
    proc = srv.proc
    proc.kill()
    proc.wait(timeout=10)
    srv._drainer.join(timeout=5)
    if srv.client is not None:
        srv.client.close()
        srv.client = None
    srv.proc = None
