"""
test_backpressure.py: a slow reader never makes chatd buffer without bound.

A long reply (the fake sends it as fast as it can) is streamed through
/v1/chat/stream to a client that reads 1 byte every 10 ms, with
STREAM_BUFFER_SIZE=4KiB. While it reads slowly:
- chatd's resident memory stays flat (sampled from /proc/PID/status VmRSS);
- the provider side is paused: chatd stops reading its upstream socket, so the
  bytes the fake sent pile up unread in that socket's kernel receive queue
  (/proc/net/tcp rx_queue) instead of in chatd's memory. (The fake itself
  writes without waiting for drain, so its own request log says "completed" as
  soon as Node has buffered everything; the TCP queue is the observable.)
Then the client reads the rest at full speed and must get the whole reply,
intact and in order, and the turn must be committed.
"""
import os
import socket
import time
import uuid

import pytest

from helpers import directive
from conftest import CHATD_BIN
from reliability import (dechunk, parse_sse_text, provider_requests, raw_request, read_until, report, sanitized,
                         split_head)

REPLY_WORDS = 100_000
FULL_REPLY = " ".join(f"w{i}" for i in range(1, REPLY_WORDS + 1))
SLOW_SECONDS = 3.0
RSS_GROWTH_MAX_KIB = 4 * 1024


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def socket_inodes(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def upstream_rx_queues(pid, remote_port):
    """rx_queue (bytes received by the kernel, not yet read) of pid's TCP sockets to remote_port."""
    inodes = socket_inodes(pid)
    queues = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            rem_port = int(f[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            if rem_port == remote_port and f[9] in inodes:
                queues.append(rx)
    return queues


def test_slow_reader_memory_flat_and_provider_paused(chatd, fake, request):
    env = {"STREAM_BUFFER_SIZE": "4KiB", "IDLE_TIMEOUT": "30s"}
    if sanitized(CHATD_BIN):
        # ASan keeps freed blocks in a quarantine (256 MB by default), so its
        # RSS follows allocation churn; without it RSS follows live memory.
        env["ASAN_OPTIONS"] = ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=0",
                                                   "thread_local_quarantine_size_kb=0") if x)
    srv = chatd(env)
    pid = srv.proc.pid
    # Warm up the allocator and the connection pool with one ordinary stream.
    r = srv.client.post("/v1/chat", json={"session_id": "warm", "message": "hi"})
    assert r.status_code == 200, r.text
    base = rss_kib(pid)

    sid = f"slow-{uuid.uuid4().hex[:8]}"
    msg = "long please " + directive({"reply_words": REPLY_WORDS, "gap_ms": 0})
    # A small receive window, as a slow mobile client would have: the kernel
    # buffers cannot hide an unbounded queue in chatd.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", srv.port))
    body = ('{"session_id": "%s", "message": "%s"}' % (sid, msg.replace('"', '\\"'))).encode()
    sock.sendall((f"POST /v1/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)

    try:
        raw = read_until(sock, lambda b: b"\r\n\r\n" in b, timeout=10)
        samples = []
        rx_samples = []
        t_end = time.monotonic() + SLOW_SECONDS
        next_sample = 0.0
        sock.settimeout(5)
        while time.monotonic() < t_end:
            chunk = sock.recv(1)
            assert chunk, "stream ended during the slow phase"
            raw += chunk
            now = time.monotonic()
            if now >= next_sample:
                samples.append(rss_kib(pid))
                rx_samples.append((now, upstream_rx_queues(pid, fake.port)))
                next_sample = now + 0.1
            time.sleep(0.01)
        slow_bytes = len(raw)
        peak = max(samples)

        reqs = provider_requests(fake)
        assert len(reqs) == 2, reqs  # the warm-up and the long one
        # Paused: during the second half of the slow phase chatd's upstream socket
        # holds unread bytes (an unpaused chatd reads them at once, so its queue
        # is empty at nearly every sample). When the client drained a little,
        # chatd resumes and reads until it is full again: a sample can land in
        # that moment, between its read and the provider's next segment, and see
        # an empty queue; so most samples, not all, must see it held.
        late = [q for t, q in rx_samples if t > t_end - SLOW_SECONDS / 2]
        held = [q for q in late if q and max(q) > 0]
        assert late and len(held) >= 0.8 * len(late), (len(held), len(late), rx_samples[-5:])

        # Read the rest as fast as possible.
        raw = read_until(sock, lambda b: b.endswith(b"0\r\n\r\n"), timeout=60, buf=raw)
    finally:
        sock.close()
    status, headers, chunked = split_head(raw)
    assert status == 200, raw[:300]
    data, complete = dechunk(chunked)
    assert complete
    sse = parse_sse_text(data.decode("utf-8"))
    names = sse.names()
    assert names[0] == "start" and names[-1] == "done", (names[:3], names[-3:])
    assert "error" not in names
    text = sse.deltas_text()
    assert len(text) == len(FULL_REPLY)
    assert text == FULL_REPLY  # intact and in order

    m = srv.client.get(f"/v1/sessions/{sid}/messages").json()["data"]
    assert [x["role"] for x in m] == ["user", "assistant"]
    assert m[1]["status"] == "complete" and m[1]["content"] == FULL_REPLY

    report(request, f"slow reader (1 byte / 10 ms for {SLOW_SECONDS:.0f} s, {slow_bytes} bytes read, "
                    f"STREAM_BUFFER_SIZE=4KiB, reply {len(FULL_REPLY)} chars / {len(data)} SSE bytes): "
                    f"chatd RSS baseline {base} KiB, peak {peak} KiB (growth {peak - base} KiB); "
                    f"unread upstream bytes held in the kernel while paused: {max(late[-1])}")
    assert peak - base < RSS_GROWTH_MAX_KIB, (base, samples)
