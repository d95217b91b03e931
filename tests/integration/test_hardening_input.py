"""
Hostile input that must get a clear 4xx, never a 500 or a stalled worker:

- raw bytes that are not UTF-8 (0x80-0xff, overlong forms, surrogates, cut
  sequences) and control bytes in the path, the query and header values, on
  seed and /v1 paths: a 4xx JSON error whose message, and the request's log
  line, carry the bytes escaped as \\xHH; the server keeps serving. Sent with
  raw sockets: httpx would normalise the paths.
"""
import json
import socket

import pytest


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


@pytest.fixture(scope="module")
def srv(chatd_module):
    return chatd_module({"WORKERS": "1"})


def test_non_utf8_bytes_in_v1_paths_get_404_json_with_the_bytes_escaped(srv):
    for bad in NOT_UTF8 + CONTROL:
        path = b"/v1/no" + bad + b"where"
        status, body, headers = expect_json_4xx(srv.port, b"GET " + path + b" HTTP/1.1")
        assert status == 404, (path, body)
        msg = body["error"]["message"]
        assert msg == "no route for GET " + escaped(path), (path, msg)
        assert body["error"]["request_id"] == headers["x-request-id"]
        if bad in NOT_UTF8:
            assert "\\x%02x" % bad[0] in msg, (path, msg)
    # Every one of them has its access-log line, with the path escaped too.
    rid_line = srv.wait_request_log(headers["x-request-id"])
    assert rid_line and rid_line[0]["path"] == escaped(b"/v1/no\x7fwhere"), rid_line
    logged = {o["path"] for o in srv.request_logs() if o.get("status") == 404}
    for bad in NOT_UTF8:
        assert escaped(b"/v1/no" + bad + b"where") in logged, bad
    assert srv.client.get("/healthz").status_code == 200


def test_non_utf8_bytes_in_seed_paths_get_seed_errors(srv):
    for bad in NOT_UTF8[::7] + [b"\xc0\xaf", b"\xe2\x82", b"\x01"]:
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
    for bad in [b"\xff", b"\xc0\xaf", b"%FF", b"%C0%AF", b"\x01"]:
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
    for bad in [b"\xff", b"\xc0\xaf", b"%FF", b"%C0%AF", b"\x01", b"\xe2\x82"]:
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
    for bad in [b"\xff", b"\xc0\xaf", b"\x01"]:
        status, body, headers = expect_json_4xx(s.port, b"GET /v1/sessions HTTP/1.1\r\nAuthorization: Bearer " + bad)
        assert status == 401 and headers.get("www-authenticate", "").startswith("Bearer"), body
        status, body, _ = expect_json_4xx(s.port, b"GET /v1/sessions/x" + bad + b" HTTP/1.1")
        assert status in (400, 401), body
        status, body, _ = expect_json_4xx(s.port, b"GET /v1/x" + bad + b" HTTP/1.1")
        assert status == 404 and escaped(bad) in body["error"]["message"], body
    assert s.client.get("/healthz").status_code == 200
