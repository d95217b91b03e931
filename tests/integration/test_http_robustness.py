"""
test_http_robustness.py: malformed and hostile HTTP/1.x over raw sockets
against the real binary. Every case gets a 4xx or a closed connection (never
a 5xx, a crash or a hang: every read has a deadline), and after each case a new
connection still gets 200 from /healthz. HEADER_TIMEOUT is 1 s so that the
cases that stop half-way end quickly. The conftest fixture checks that the
server exits 0 on SIGTERM at the end.

RESULTS keeps case -> what chatd answered; test_zz_print_table prints it
(pytest -s) for the record.
"""
import socket
import time

import pytest

from rawhttp import Closed, Reader, connect, healthz_ok, read_response

HEADER_TIMEOUT_S = 1.0
MAX_HEADER = 4096
MAX_BODY = 8192
# A cut connection must come within HEADER_TIMEOUT plus the 250 ms sweep; 4 s is ample.
CASE_DEADLINE_S = 4.0

RESULTS = []  # (case, what chatd answered)

H = "Host: t\r\n"


def post(path, headers, body=b""):
    return f"POST {path} HTTP/1.1\r\n{H}{headers}\r\n".encode() + body


JSON = "Content-Type: application/json\r\n"
CHAT = b'{"message":"hi","session_id":"robust"}'

# name, bytes to send (a list: sent with a pause in between), what is acceptable:
#   "4xx-close": a 4xx and the connection closed, or a close without an answer
#   (everything whose framing is in doubt: the bytes after it must never be
#   read as a next request); "4xx": a 4xx, the connection may stay open;
#   "501": evhttp's answer to a method it does not know (RFC 9110 15.6.2: an
#   unrecognized method gets 501), then closed; "ok": every response 2xx;
#   "ok|4xx-close": either; "4xx-then-ok": a 4xx, then a 200 on the same connection.
CASES = [
    ("invalid request line", [b"GARBAGE\r\n\r\n"], "4xx-close"),
    ("request line without version", [b"GET /healthz\r\n\r\n"], "4xx-close"),
    ("HTTP/0.9 simple request", [b"GET /\r\n"], "4xx-close"),
    ("unknown HTTP version", [b"GET /healthz HTTP/9.9\r\n" + H.encode() + b"\r\n"], "4xx-close"),
    ("unknown method", [b"BREW /healthz HTTP/1.1\r\n" + H.encode() + b"\r\n"], "501"),
    ("HTTP/2 preface", [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], "4xx-close"),
    ("space in the request target", [b"GET /heal thz HTTP/1.1\r\n" + H.encode() + b"\r\n"], "4xx"),
    ("obsolete line folding", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"X-A: a\r\n  folded\r\n\r\n"],
     "4xx-close"),
    ("header line without colon", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"NoColonHere\r\n\r\n"],
     "4xx-close"),
    ("duplicate Content-Length (different)",
     [post("/v1/chat", JSON + "Content-Length: 5\r\nContent-Length: 39\r\n", CHAT)], "4xx-close"),
    ("duplicate Content-Length (same)",
     [post("/v1/chat", JSON + f"Content-Length: {len(CHAT)}\r\nContent-Length: {len(CHAT)}\r\n", CHAT)],
     "4xx-close"),
    ("Content-Length list", [post("/v1/chat", JSON + f"Content-Length: {len(CHAT)}, {len(CHAT)}\r\n", CHAT)],
     "4xx-close"),
    ("negative Content-Length", [post("/v1/chat", JSON + "Content-Length: -1\r\n", CHAT)], "4xx-close"),
    ("non-numeric Content-Length", [post("/v1/chat", JSON + "Content-Length: 12abc\r\n", CHAT)], "4xx-close"),
    ("huge Content-Length", [post("/v1/chat", JSON + "Content-Length: 99999999999999999999\r\n", CHAT)],
     "4xx-close"),
    ("Content-Length with Transfer-Encoding",
     [post("/v1/chat", JSON + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")],
     "4xx-close"),
    ("Transfer-Encoding not chunked", [post("/v1/chat", JSON + "Transfer-Encoding: gzip\r\n", CHAT)],
     "4xx-close"),
    ("Transfer-Encoding chunked twice",
     [post("/v1/chat", JSON + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")],
     "4xx-close"),
    ("Transfer-Encoding on HTTP/1.0",
     [b"POST /v1/chat HTTP/1.0\r\n" + JSON.encode() + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
     "4xx-close"),
    ("chunk size not hex", [post("/v1/chat", JSON + "Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n")],
     "4xx-close"),
    ("negative chunk size", [post("/v1/chat", JSON + "Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n")],
     "4xx-close"),
    ("chunk size overflowing 64 bits",
     [post("/v1/chat", JSON + "Transfer-Encoding: chunked\r\n", b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n")],
     "4xx-close"),
    ("chunk larger than MAX_BODY_SIZE x2",
     [post("/v1/chat", JSON + "Transfer-Encoding: chunked\r\n", b"100000\r\n" + b"a" * 1000)], "4xx-close"),
    ("chunk shorter than its size", [post("/v1/chat", JSON + "Transfer-Encoding: chunked\r\n", b"10\r\nabc\r\n0\r\n\r\n")],
     "4xx-close"),
    ("NUL in the request target", [b"GET /heal\x00thz HTTP/1.1\r\n" + H.encode() + b"\r\n"], "4xx-close"),
    ("NUL in a header value", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"X-A: a\x00b\r\n\r\n"], "4xx-close"),
    ("control byte in a header value", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"X-A: a\x01b\r\n\r\n"],
     "4xx-close"),
    ("control byte in a header name", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"X\x7fA: ab\r\n\r\n"],
     "4xx-close"),
    ("bare LF line endings", [b"GET /healthz HTTP/1.1\n" + H.encode().replace(b"\r", b"") + b"X-A: b\n\n"],
     "ok|4xx-close"),
    ("over-long header line", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"X-Long: " + b"a" * (MAX_HEADER * 2)
                               + b"\r\n\r\n"], "4xx-close"),
    ("over-long request line", [b"GET /" + b"a" * (MAX_HEADER * 2) + b" HTTP/1.1\r\n" + H.encode() + b"\r\n"],
     "4xx-close"),
    ("too many headers", [b"GET /healthz HTTP/1.1\r\n" + H.encode()
                          + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n"], "4xx-close"),
    ("head that never ends", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"X-A: b\r\n"], "4xx-close"),
    ("body that stops half-way", [post("/v1/chat", JSON + "Content-Length: 1000\r\n", b'{"message":"hi"')],
     "4xx-close"),
    ("chunked body that stops half-way",
     [post("/v1/chat", JSON + "Transfer-Encoding: chunked\r\n", b"20\r\n" + b'{"message":')], "4xx-close"),
    ("pipelined requests", [(b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"\r\n") * 3], "ok"),
    ("pipelined POST then GET", [post("/chat", JSON + "Content-Length: 2\r\n", b"{}")
                                 + b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"\r\n"], "4xx-then-ok"),
    ("CONNECT request", [b"CONNECT t:443 HTTP/1.1\r\n" + H.encode() + b"\r\n"], "4xx-close|501"),
    ("TRACE request", [b"TRACE /healthz HTTP/1.1\r\n" + H.encode() + b"\r\n"], "4xx|4xx-close|501"),
    ("lowercase method", [b"get /healthz HTTP/1.1\r\n" + H.encode() + b"\r\n"], "4xx|4xx-close|501"),
    ("empty header name", [b"GET /healthz HTTP/1.1\r\n" + H.encode() + b": v\r\n\r\n"], "4xx-close"),
    ("absolute-form target", [b"GET http://t/healthz HTTP/1.1\r\n" + H.encode() + b"\r\n"], "ok|4xx"),
    ("request head sent in pieces", [b"GET /heal", b"thz HTTP/1.1\r\nHo", b"st: t\r\n\r\n"], "ok"),
]


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module({"HEADER_TIMEOUT": f"{int(HEADER_TIMEOUT_S * 1000)}ms", "IDLE_TIMEOUT": "5s", "HEARTBEAT_INTERVAL": "2s",
                         "MAX_HEADER_SIZE": str(MAX_HEADER), "MAX_BODY_SIZE": str(MAX_BODY),
                         "WORKERS": "2"})


def run_case(port, parts):
    """Sends the parts and reads every response until the connection closes or
    goes quiet; returns the list of statuses (ints), then 'closed', 'quiet' or 'reset'."""
    out = []
    s = connect(port, CASE_DEADLINE_S)
    try:
        for i, p in enumerate(parts):
            if i:
                time.sleep(0.1)
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                out.append("reset")
                return out
        reader = Reader(s, CASE_DEADLINE_S)
        while True:
            try:
                status, headers, _ = read_response(reader)
            except Closed as e:
                out.append("closed" if not (e.args and e.args[0]) else f"closed after {e.args[0][:40]!r}")
                return out
            except (TimeoutError, socket.timeout):
                out.append("quiet")
                return out
            except ConnectionResetError:
                out.append("reset")
                return out
            out.append(status)
            if headers.get("connection", "").lower() == "close":
                # The server said it closes: check that it does.
                reader.deadline = time.monotonic() + CASE_DEADLINE_S
                try:
                    reader.until_close()
                    out.append("closed")
                except (TimeoutError, socket.timeout):
                    out.append("quiet")
                return out
            # Keep reading: pipelined responses, or the close that follows.
            reader.deadline = time.monotonic() + 0.6
    finally:
        s.close()


def acceptable(outcome, expect):
    statuses = [o for o in outcome if isinstance(o, int)]
    end = [o for o in outcome if not isinstance(o, int)]
    closed = bool(end) and end[0] in ("closed", "reset")
    if "501" in expect.split("|") and statuses == [501] and closed:
        return True
    if any(st >= 500 for st in statuses):
        return False
    for kind in expect.split("|"):
        if kind == "ok" and statuses and all(200 <= st < 300 for st in statuses):
            return True
        if kind == "4xx" and len(statuses) == 1 and 400 <= statuses[0] < 500:
            return True
        if kind == "4xx-close" and len(statuses) <= 1 and all(400 <= st < 500 for st in statuses) and closed:
            return True
        if kind == "4xx-then-ok" and len(statuses) == 2 and 400 <= statuses[0] < 500 and statuses[1] == 200:
            return True
    return False


@pytest.mark.parametrize("name,parts,expect", CASES, ids=[c[0] for c in CASES])
def test_case(server, name, parts, expect):
    assert server.proc.poll() is None
    t0 = time.monotonic()
    outcome = run_case(server.port, parts)
    took = time.monotonic() - t0
    RESULTS.append((name, outcome, round(took, 2)))
    assert server.proc.poll() is None, f"chatd died on {name}"
    assert acceptable(outcome, expect), f"{name}: chatd answered {outcome}, expected {expect}"
    assert healthz_ok(server.port), f"/healthz failed after {name}"


def test_expect_pipelined_statuses(server):
    """Pipelining answers every request, in order, on the one connection."""
    outcome = run_case(server.port, [(b"GET /healthz HTTP/1.1\r\n" + H.encode() + b"\r\n") * 3
                                     + b"GET /nope HTTP/1.1\r\n" + H.encode() + b"\r\n"])
    assert outcome[:4] == [200, 200, 200, 404], outcome


def test_zz_print_table(server):
    print("\n%-40s | %s" % ("case", "chatd answered (statuses, then how the connection ended)"))
    for name, outcome, took in RESULTS:
        print("%-40s | %s (%.2f s)" % (name, ", ".join(str(o) for o in outcome), took))
    assert server.proc.poll() is None
    assert healthz_ok(server.port)
