"""
rawhttp.py: HTTP/1.1 over plain sockets, for the tests that must send what an
HTTP client library would refuse to (malformed requests, pipelining, idle
connections, half-sent bodies). Every read has a deadline: a server that hangs
makes the test fail, never wait forever.
"""
import socket
import time

READ_TIMEOUT_S = 5.0


class Closed(Exception):
    """The connection ended before a complete response."""


def connect(port, timeout=READ_TIMEOUT_S):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


class Reader:
    """Buffered reads from one socket, each bounded by the socket's timeout and a total deadline."""

    def __init__(self, sock, deadline_s=READ_TIMEOUT_S):
        self.sock = sock
        self.buf = b""
        self.deadline = time.monotonic() + deadline_s

    def _more(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete response before the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed(self.buf)
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def until_close(self):
        try:
            while True:
                self._more()
        except Closed:
            pass
        out, self.buf = self.buf, b""
        return out


def read_request(sock, buf=b""):
    """Reads one request from sock, for tests that play a server (its timeout
    bounds each read; socket.timeout is raised past it). buf: bytes already
    read. Returns (head, body, rest: bytes after the request), or None if the
    peer closed before a whole request. The body is framed by Content-Length
    only (what chatd sends a provider)."""
    while b"\r\n\r\n" not in buf:
        part = sock.recv(65536)
        if not part:
            return None
        buf += part
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(buf) < length:
        part = sock.recv(65536)
        if not part:
            return None
        buf += part
    return head, buf[:length], buf[length:]


def read_response(reader, head_request=False):
    """Reads one response: (status, {lowercase header: value}, body bytes, raw head)."""
    status_line = reader.line()
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line {status_line!r}")
    status = int(parts[1])
    headers = {}
    while True:
        line = reader.line()
        if not line:
            break
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
    body = b""
    if head_request or status in (204, 304) or 100 <= status < 200:
        return status, headers, body
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(reader.line().split(b";")[0], 16)
            if size == 0:
                while reader.line():
                    pass
                break
            body += reader.exactly(size)
            assert reader.exactly(2) == b"\r\n"
    elif "content-length" in headers:
        body = reader.exactly(int(headers["content-length"]))
    else:
        body = reader.until_close()
    return status, headers, body


def request(port, raw, timeout=READ_TIMEOUT_S):
    """Sends raw bytes on a new connection and reads one response (status, headers, body)."""
    with connect(port, timeout) as s:
        s.sendall(raw)
        return read_response(Reader(s, timeout))


def get(path, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def healthz_ok(port, timeout=READ_TIMEOUT_S):
    """True when GET /healthz on a new connection answers 200."""
    try:
        status, _, _ = request(port, get("/healthz", "Connection: close\r\n"), timeout)
        return status == 200
    except (OSError, Closed, TimeoutError, ValueError):
        return False
