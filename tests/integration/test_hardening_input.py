"""
Hostile input that must get a clear 4xx, never a 500 or a stalled worker:

- raw bytes that are not UTF-8 (0x80-0xff, overlong forms, surrogates, cut
  sequences) and control bytes in the path, the query and header values, on
  seed and /v1 paths: a 4xx JSON error whose message, and the request's log
  line, carry the bytes escaped as \\xHH; the server keeps serving. Sent with
  raw sockets: httpx would normalise the paths.
- /v1/chat/completions with as many system messages as the body limit allows:
  joined in linear time (a concurrent /healthz on the same single worker
  answers at once), and their joined size bounded by MAX_MESSAGE_SIZE.
"""
import json
import os
import socket
import threading
import time

import httpx
import pytest

from helpers import echo


def raw_request(port, head, body=b"", timeout=10.0):
    """Sends one raw HTTP/1.1 request (head without the final CRLF CRLF; the
    Host and Connection: close headers are added) and returns (status, headers,
    body bytes)."""
    data = head + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if body:
        data += b"Content-Length: %d\r\n" % len(body)
    data += b"\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    resp = b"".join(chunks)
    head_b, _, body_b = resp.partition(b"\r\n\r\n")
    lines = head_b.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    return status, headers, body_b


def escaped(raw):
    """How chatd writes client bytes in JSON text: invalid UTF-8 bytes as \\xHH."""
    return raw.decode("utf-8", "backslashreplace")


def expect_json_4xx(port, head, body=b""):
    status, headers, data = raw_request(port, head, body)
    assert 400 <= status < 500, (head, status, data[:300])
    assert headers.get("content-type", "").startswith("application/json"), (head, headers)
    return status, json.loads(data), headers


# Bytes that are not UTF-8 on their own, the classic overlong and surrogate
# forms, a cut sequence, and control bytes (NUL, CR and LF cannot be in a request line).
NOT_UTF8 = [bytes([b]) for b in range(0x80, 0x100)] + [
    b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
CONTROL = [bytes([b]) for b in range(1, 0x20) if b not in (9, 10, 13)] + [b"\x7f"]


def expect_control_refused(port, head, body=b""):
    """A raw control byte anywhere in the request head is refused before
    routing: 400 JSON naming it, the connection closed (tests/integration/
    test_http_robustness.py has the other malformed heads)."""
    status, data, headers = expect_json_4xx(port, head, body)
    assert status == 400, (head, data)
    assert data["error"]["message"] == "control character in the request head", (head, data)
    assert headers.get("connection", "").lower() == "close", headers


@pytest.fixture(scope="module")
def srv(chatd_module):
    return chatd_module({"WORKERS": "1"})


def test_non_utf8_bytes_in_v1_paths_get_404_json_with_the_bytes_escaped(srv):
    for bad in CONTROL:
        expect_control_refused(srv.port, b"GET /v1/no" + bad + b"where HTTP/1.1")
    for bad in NOT_UTF8:
        path = b"/v1/no" + bad + b"where"
        status, body, headers = expect_json_4xx(srv.port, b"GET " + path + b" HTTP/1.1")
        assert status == 404, (path, body)
        msg = body["error"]["message"]
        assert msg == "no route for GET " + escaped(path), (path, msg)
        assert body["error"]["request_id"] == headers["x-request-id"]
        assert "\\x%02x" % bad[0] in msg, (path, msg)
    # Every one of them has its access-log line, with the path escaped too.
    rid_line = srv.wait_request_log(headers["x-request-id"])
    assert rid_line and rid_line[0]["path"] == escaped(b"/v1/no" + NOT_UTF8[-1] + b"where"), rid_line
    logged = {o["path"] for o in srv.request_logs() if o.get("status") == 404}
    for bad in NOT_UTF8:
        assert escaped(b"/v1/no" + bad + b"where") in logged, bad
    assert srv.client.get("/healthz").status_code == 200


def test_non_utf8_bytes_in_seed_paths_get_seed_errors(srv):
    expect_control_refused(srv.port, b"GET /no\x01 HTTP/1.1")
    expect_control_refused(srv.port, b"GET /history/a\x01 HTTP/1.1")
    for bad in NOT_UTF8[::7] + [b"\xc0\xaf", b"\xe2\x82"]:
        status, body, _ = expect_json_4xx(srv.port, b"GET /no" + bad + b" HTTP/1.1")
        assert (status, body) == (404, {"detail": "Not Found"}), (bad, body)
        # A session id from the path: FastAPI's 422 shape, the input escaped.
        for path in (b"/history/a" + bad, b"/history/a" + b"%%%02X" % bad[0]):
            status, body, _ = expect_json_4xx(srv.port, b"GET " + path + b" HTTP/1.1")
            assert status == 422, (path, body)
            item = body["detail"][0]
            assert item["loc"] == ["path", "session_id"], item
            want = escaped(b"a" + bad[:1]) if b"%" in path else escaped(b"a" + bad)
            assert item["input"] == want, (path, item)
        status, body, _ = expect_json_4xx(srv.port, b"POST /reset/x" + bad + b" HTTP/1.1")
        assert status == 422, body
    assert srv.client.get("/").status_code == 200


def test_non_utf8_bytes_in_v1_session_paths_ui_files_and_methods(srv):
    for head in (b"GET /v1/sessions/s\x01 HTTP/1.1", b"GET /ui/x\x01.js HTTP/1.1", b"PATCH /v1/sessions/s\x01 HTTP/1.1"):
        expect_control_refused(srv.port, head)
    for bad in [b"\xff", b"\xc0\xaf", b"%FF", b"%C0%AF", b"%01"]:
        for head in (b"GET /v1/sessions/s" + bad + b" HTTP/1.1",
                     b"GET /v1/sessions/s" + bad + b"/messages HTTP/1.1",
                     b"DELETE /v1/sessions/s" + bad + b" HTTP/1.1"):
            status, body, _ = expect_json_4xx(srv.port, head)
            assert status == 400 and body["error"]["type"] == "invalid_request_error", (head, body)
        status, body, _ = expect_json_4xx(srv.port, b"GET /ui/x" + bad + b".js HTTP/1.1")
        assert status == 404 and body["error"]["type"] == "not_found_error", body
        # A method the route does not allow: 405, the path in the message.
        status, body, _ = expect_json_4xx(srv.port, b"PATCH /v1/sessions/s" + bad + b" HTTP/1.1")
        assert status == 405, body
        assert body["error"]["message"].startswith("method PATCH is not allowed on /v1/sessions/s"), body
    status, body, _ = expect_json_4xx(srv.port, b"GET /ui/x\xff.js HTTP/1.1")
    assert body["error"]["message"] == "no such file: x\\xff.js", body
    status, body, _ = expect_json_4xx(srv.port, b"DELETE /v1/\xfe HTTP/1.1")
    assert body["error"]["message"] == "no route for DELETE /v1/\\xfe", body
    assert srv.client.get("/healthz").status_code == 200


def test_non_utf8_bytes_in_queries_and_headers(srv):
    expect_control_refused(srv.port, b"GET /v1/sessions?cursor=\x01 HTTP/1.1")
    expect_control_refused(srv.port, b"GET /v1/sessions HTTP/1.1\r\nX-Request-Id: r\x01")
    for bad in [b"\xff", b"\xc0\xaf", b"%FF", b"%C0%AF", b"%01", b"\xe2\x82"]:
        for query in (b"cursor=" + bad, b"limit=" + bad):
            status, body, _ = expect_json_4xx(srv.port, b"GET /v1/sessions?" + query + b" HTTP/1.1")
            assert status == 400, (query, body)
        # Header values chatd reads: each one refused with a 4xx JSON error, or
        # ignored (a bad X-Request-Id is replaced by one of chatd's own).
        if b"%" in bad:
            continue  # header values are not percent-decoded
        raw = bad
        status, headers, data = raw_request(srv.port, b"GET /v1/sessions HTTP/1.1\r\nX-Request-Id: r" + raw +
                                            b"\r\nOrigin: http://a" + raw + b"\r\nX-Forwarded-For: " + raw)
        assert status == 200 and headers["x-request-id"].startswith("req_"), (status, data[:200])
        body = json.dumps({"message": "hi", "session_id": "hdr-1"}).encode()
        status, err, _ = expect_json_4xx(srv.port, b"POST /v1/chat HTTP/1.1\r\nContent-Type: application/json"
                                         b"\r\nIdempotency-Key: k" + raw, body)
        assert status == 400 and "Idempotency-Key" in err["error"]["message"], err
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        status, err, _ = expect_json_4xx(srv.port, b"POST /v1/chat/completions HTTP/1.1\r\n"
                                         b"Content-Type: application/json\r\nX-Session-Id: s" + raw, body)
        assert status == 400 and err["error"]["param"] == "session_id", err
    assert srv.client.get("/healthz").status_code == 200


def test_non_utf8_bearer_token_is_a_401(chatd):
    s = chatd({"API_TOKEN": "tok-hardening-1"})
    expect_control_refused(s.port, b"GET /v1/sessions HTTP/1.1\r\nAuthorization: Bearer \x01")
    for bad in [b"\xff", b"\xc0\xaf"]:
        status, body, headers = expect_json_4xx(s.port, b"GET /v1/sessions HTTP/1.1\r\nAuthorization: Bearer " + bad)
        assert status == 401 and headers.get("www-authenticate", "").startswith("Bearer"), body
        status, body, _ = expect_json_4xx(s.port, b"GET /v1/sessions/x" + bad + b" HTTP/1.1")
        assert status in (400, 401), body
        status, body, _ = expect_json_4xx(s.port, b"GET /v1/x" + bad + b" HTTP/1.1")
        assert status == 404 and escaped(bad) in body["error"]["message"], body
    assert s.client.get("/healthz").status_code == 200


# ------------------------------------------------------------------ system join

BODY_LIMIT = 1024 * 1024  # MAX_MESSAGE_SIZE's default is 256 KiB, MAX_BODY_SIZE's 1 MiB


def many_system_messages(n_system, body_limit=BODY_LIMIT, user="last words"):
    """A compact /v1/chat/completions body of n_system system messages and one
    user message, the system texts as long as the body limit allows (each one
    distinct, so that a join that loses or reorders parts shows)."""
    tail = [{"role": "user", "content": user}]

    def body_for(length):
        msgs = [{"role": "system", "content": ("%05d" % i) + "s" * (length - 5)} for i in range(n_system)]
        return {"model": "claude-sonnet-4-6", "messages": msgs + tail}

    # Each extra byte of content adds n_system bytes to the body.
    length = 5 + (body_limit - len(json.dumps(body_for(5), separators=(",", ":")))) // n_system
    body = body_for(length)
    return body, json.dumps(body, separators=(",", ":")).encode()


def sent_system(body):
    """The system text of a provider request (a string, or text blocks once a
    prompt-cache breakpoint was added)."""
    system = body.get("system")
    return system if isinstance(system, str) else "".join(b["text"] for b in system)


def test_many_system_messages_do_not_stall_the_worker(chatd, fake):
    # One worker: a join on the loop thread that takes long stalls /healthz too.
    s = chatd({"WORKERS": "1", "MAX_MESSAGE_SIZE": "1MiB"})
    body, raw = many_system_messages(9999)
    assert BODY_LIMIT - 9999 < len(raw) <= BODY_LIMIT and len(body["messages"]) == 10000
    system = "\n\n".join(m["content"] for m in body["messages"][:-1])
    result = {}

    def post():
        with httpx.Client(base_url=s.url, timeout=60) as c:
            t0 = time.monotonic()
            result["resp"] = c.post("/v1/chat/completions", content=raw,
                                    headers={"Content-Type": "application/json"})
            result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=post)
    worst = 0.0
    probes = 0
    with httpx.Client(base_url=s.url, timeout=30) as probe:
        t.start()
        while t.is_alive() or probes < 5:
            t0 = time.monotonic()
            assert probe.get("/healthz").status_code == 200
            worst = max(worst, time.monotonic() - t0)
            probes += 1
            time.sleep(0.005)
    t.join()
    r = result["resp"]
    assert r.status_code == 200, r.text[:500]
    assert r.json()["choices"][0]["message"]["content"] == echo("last words")
    sent = fake.requests()[-1]["body"]
    assert sent_system(sent) == system  # every part, in order, joined by blank lines
    assert sent["messages"] == [{"role": "user", "content": "last words"}]
    # The linear join leaves the loop busy for ~0.1 s (parsing 1 MiB of JSON,
    # building the provider request; ~0.3 s under ASan); the quadratic one
    # stalled it for 18 s. Sanitizer builds get a wider, still decisive, bound.
    bound = 1.5 if "ASAN_OPTIONS" in os.environ else 0.5
    assert worst < bound, f"/healthz took {worst:.3f} s while the {len(system)}-byte system text was joined"
    print(f"system text {len(system)} bytes in 9999 parts: request {result['elapsed']:.3f} s, "
          f"worst concurrent /healthz {worst * 1000:.1f} ms over {probes} probes")


def test_joined_system_text_is_bounded_by_max_message_size(chatd, fake):
    s = chatd({"MAX_MESSAGE_SIZE": "64KiB"})
    ok_parts = [{"role": "system", "content": "a" * 30000}, {"role": "developer", "content": "b" * 30000}]
    user = [{"role": "user", "content": "hi"}]
    r = s.client.post("/v1/chat/completions", json={"messages": ok_parts + user})
    assert r.status_code == 200, r.text
    assert sent_system(fake.requests()[-1]["body"]) == "a" * 30000 + "\n\n" + "b" * 30000
    # One more part takes the joined text past 64 KiB (65536 bytes): refused
    # before the provider is called, naming the setting and the limit.
    n_before = len(fake.requests())
    too_many = ok_parts + [{"role": "system", "content": "c" * 6000}] + user
    r = s.client.post("/v1/chat/completions", json={"messages": too_many})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "string_above_max_length" and err["param"] == "messages", err
    assert "MAX_MESSAGE_SIZE (65536 bytes)" in err["message"] and "messages[2]" in err["message"], err
    # Many small parts count their separators too: 20,000 parts of 2 bytes + 19,999 "\n\n" > 64 KiB.
    many = [{"role": "system", "content": "xy"}] * 9999 + user
    r = s.client.post("/v1/chat/completions", json={"messages": many})
    assert r.status_code == 200, r.text  # 9999 * 2 + 9998 * 2 = 39,994 bytes: within the limit
    s2 = chatd({"MAX_MESSAGE_SIZE": "32KiB"})
    r = s2.client.post("/v1/chat/completions", json={"messages": many})
    assert r.status_code == 400 and "MAX_MESSAGE_SIZE (32768 bytes)" in r.json()["error"]["message"], r.text
    assert len(fake.requests()) == n_before + 1
