"""
test_shutdown.py: graceful shutdown (SIGTERM/SIGINT).

- A stream running at SIGTERM finishes with `done`, the turn is stored, the
  server exits 0 (repeated with the signal at random points, as this raced).
- A stream longer than DRAIN_TIMEOUT gets `event: error` server_shutting_down;
  its session stays consistent (the partial reply kept as "incomplete", or
  nothing before the first token); a non-streaming call gets a 503; exit 0.
- After the signal the listener is closed: new connections are refused, and a
  chat request on a connection that was already open gets 503
  server_shutting_down.
"""
import random
import signal
import socket
import threading
import time
import uuid

import httpx
import pytest

from helpers import assert_v1_error, directive, echo, read_sse, stream_v1
from reliability import messages, provider_requests, raw_request, read_to_eof, read_until, sse_of, wait_provider


def _stream_in_thread(url, body):
    out = {}

    def run():
        c = httpx.Client(base_url=url, timeout=httpx.Timeout(20.0))
        try:
            out["resp"], out["sse"] = stream_v1(c, body)
        except Exception as e:  # noqa: BLE001 (checked by the test)
            out["exc"] = e
        finally:
            c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("i", range(10))
def test_sigterm_lets_a_running_stream_finish(chatd, fake, i):
    rng = random.Random(i)
    srv = chatd()
    sid = f"drain-{i}"
    # Half the runs: signal during the silence before the first token; the
    # other half: signal between tokens.
    scen = {"ttft_ms": 1000} if i % 2 == 0 else {"ttft_ms": 100, "gap_ms": 100, "reply_words": 8}
    msg = "finish me " + directive(scen)
    t, out = _stream_in_thread(srv.url, {"session_id": sid, "message": msg})
    assert wait_provider(fake, lambda rs: len(rs) == 1), "the turn never reached the provider"
    time.sleep(rng.uniform(0.0, 0.6))
    t_sig = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM if i != 3 else signal.SIGINT)
    rc = srv.wait_exit()
    took = time.monotonic() - t_sig
    t.join(10)
    assert rc == 0, srv.log_lines()[-10:]
    assert "exc" not in out, out.get("exc")
    names = out["sse"].names()
    assert names[0] == "start" and names[-1] == "done" and "error" not in names, names
    reply = out["sse"].deltas_text()
    assert reply == (echo("finish me") if i % 2 == 0 else " ".join(f"w{k}" for k in range(1, 9)))
    assert took < 3.0, took
    assert any(o.get("msg") == "shutting down: draining" for o in srv.logs())
    srv.start()
    msgs = messages(srv.client, sid)
    assert [(m["role"], m["content"], m["status"]) for m in msgs] == [
        ("user", msg, "complete"), ("assistant", reply, "complete")]


@pytest.mark.parametrize("phase", ["before_first_token", "mid_stream"])
def test_drain_timeout_cancels_the_stream_cleanly(chatd, fake, phase):
    srv = chatd({"DRAIN_TIMEOUT": "1s"})
    sid = f"drain-cut-{phase}"
    scen = {"ttft_ms": 6000} if phase == "before_first_token" else {"gap_ms": 200, "reply_words": 40}
    msg = "too long " + directive(scen)
    t, out = _stream_in_thread(srv.url, {"session_id": sid, "message": msg})
    assert wait_provider(fake, lambda rs: len(rs) == 1)
    time.sleep(0.5)
    t_sig = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.wait_exit()
    took = time.monotonic() - t_sig
    t.join(10)
    assert rc == 0, srv.log_lines()[-10:]
    assert "exc" not in out, (out, srv.log_lines()[-10:])
    assert 0.9 <= took <= 3.0, took
    sse = out["sse"]
    names = sse.names()
    assert names[0] == "start" and names[-1] == "error" and "done" not in names, names
    err = sse.data("error")[0]
    assert err["type"] == "server_shutting_down", err
    # The upstream call was aborted, not left running.
    reqs = wait_provider(fake, lambda rs: rs[0]["outcome"] is not None, timeout=2)
    assert reqs[0]["outcome"] == "client_closed", reqs[0]
    srv.start()
    msgs = messages(srv.client, sid)
    if phase == "before_first_token":
        assert msgs is None, msgs
    else:
        received = sse.deltas_text()
        assert len(msgs) == 2 and msgs[0]["content"] == msg, msgs
        assert msgs[1]["status"] == "incomplete" and msgs[1]["content"].startswith(received), msgs[1]
        assert received, "no delta before the drain deadline"
    # The session is usable and well-formed afterwards.
    r = srv.client.post("/v1/chat", json={"session_id": sid, "message": "again"})
    assert r.status_code == 200, r.text
    roles = [m["role"] for m in messages(srv.client, sid)]
    assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_drain_timeout_non_streaming_gets_503(chatd, fake):
    srv = chatd({"DRAIN_TIMEOUT": "1s"})
    out = {}

    def run():
        c = httpx.Client(base_url=srv.url, timeout=httpx.Timeout(20.0))
        out["r"] = c.post("/v1/chat", json={"session_id": "drain-json",
                                            "message": "x " + directive({"ttft_ms": 6000})})
        c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert wait_provider(fake, lambda rs: len(rs) == 1)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    t.join(10)
    assert_v1_error(out["r"], 503, "server_shutting_down")
    srv.start()
    assert srv.client.get("/v1/sessions/drain-json").status_code == 404


def test_new_connections_refused_while_draining(chatd, fake):
    srv = chatd({"DRAIN_TIMEOUT": "5s"})
    # A connection opened before the signal, kept alive.
    keep = raw_request(srv.port, "GET", "/healthz")
    read_until(keep, lambda b: b.endswith(b"}"))
    t, out = _stream_in_thread(srv.url, {"session_id": "drain-refuse",
                                         "message": "x " + directive({"ttft_ms": 1500})})
    assert wait_provider(fake, lambda rs: len(rs) == 1)
    srv.proc.send_signal(signal.SIGTERM)
    try:
        # The listeners close promptly (every worker's SO_REUSEPORT socket).
        deadline = time.monotonic() + 1.0
        refused = 0
        while time.monotonic() < deadline and refused < 20:
            try:
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=0.5)
                s.close()
                refused = 0
                time.sleep(0.01)
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the SYN raced the listener's close (its queue is reset).
                refused += 1
        assert refused >= 20, "new connections still accepted after SIGTERM"
        # A chat request on the connection opened before: 503 server_shutting_down.
        body = b'{"session_id":"drain-late","message":"hi"}'
        keep.sendall(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        raw, _ = read_to_eof(keep, timeout=3)
        assert b" 503 " in raw.split(b"\r\n", 1)[0], raw[:200]
        assert b"server_shutting_down" in raw
    finally:
        keep.close()
    assert srv.wait_exit() == 0
    t.join(10)
    assert out["sse"].names()[-1] == "done", out["sse"].names()
    assert len(provider_requests(fake)) == 1  # the late request never reached the provider
