"""
test_limits.py: request limits and validation at the HTTP edge: body size,
methods, unknown paths, session id rules, and running without an API key.
"""
import json

import pytest

from helpers import REQ_ID_RE, assert_seed_detail, assert_v1_error, stream_v1

MAX_BODY = 4096


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module({"MAX_BODY_SIZE": str(MAX_BODY)})


@pytest.fixture
def c(server):
    return server.client


# ------------------------------------------------------------------ body size


def _body_of_size(n, sid="lim-big"):
    base = {"message": "", "session_id": sid}
    pad = n - len(json.dumps(base).encode())
    base["message"] = "a" * pad
    raw = json.dumps(base).encode()
    assert len(raw) == n
    return raw


def test_413_v1(c, fake):
    r = c.post("/v1/chat", content=_body_of_size(MAX_BODY + 100), headers={"content-type": "application/json"})
    assert_v1_error(r, 413, "request_too_large")
    assert fake.requests() == []


def test_413_v1_stream(c, fake):
    r = c.post("/v1/chat/stream", content=_body_of_size(MAX_BODY * 4),
               headers={"content-type": "application/json"})
    assert_v1_error(r, 413, "request_too_large")
    assert fake.requests() == []


def test_413_seed(c, fake):
    r = c.post("/chat", content=_body_of_size(MAX_BODY + 1), headers={"content-type": "application/json"})
    assert_seed_detail(r, 413)
    assert REQ_ID_RE.match(r.headers["x-request-id"])
    assert fake.requests() == []


def test_413_chunked_body(c, fake):
    raw = _body_of_size(MAX_BODY * 3)

    def gen():
        for i in range(0, len(raw), 1000):
            yield raw[i:i + 1000]
    r = c.post("/v1/chat", content=gen(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert fake.requests() == []


def test_body_at_limit_is_accepted(c):
    r = c.post("/v1/chat", content=_body_of_size(MAX_BODY, sid="lim-at-limit"),
               headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    # The server is still fine after rejecting big bodies.
    assert c.get("/healthz").status_code == 200


# ------------------------------------------------------------ methods, paths


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/v1/chat", {"POST"}),
    ("PUT", "/v1/chat/stream", {"POST"}),
    ("POST", "/v1/sessions/lim-x", {"GET", "DELETE"}),
    ("PATCH", "/v1/sessions", {"GET"}),
    ("GET", "/v1/sessions/lim-x/reset", {"POST"}),
    ("DELETE", "/v1/stats", {"GET"}),
    ("POST", "/healthz", {"GET"}),
])
def test_405_v1(c, method, path, allowed):
    r = c.request(method, path)
    assert_v1_error(r, 405, "method_not_allowed")
    got = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
    assert allowed <= got and method not in got, r.headers.get("allow")


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/chat", {"POST"}), ("GET", "/chat-stream", {"POST"}), ("POST", "/history/lim-x", {"GET", "DELETE"}),
    ("GET", "/reset/lim-x", {"POST"}), ("POST", "/stats", {"GET"}), ("DELETE", "/sessions", {"GET"}),
])
def test_405_seed(c, method, path, allowed):
    r = c.request(method, path)
    assert r.status_code == 405, r.text
    got = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
    assert allowed <= got, r.headers.get("allow")
    assert isinstance(r.json().get("detail"), str)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/nope"), ("POST", "/v1/chats"), ("GET", "/v1/sessions/a/b/c"),
])
def test_404_unknown_path(c, method, path):
    assert_v1_error(c.request(method, path), 404, "not_found_error")


@pytest.mark.parametrize("method,path", [
    ("GET", "/nope"), ("GET", "/v2/chat"), ("GET", "/history"), ("GET", "/chat/extra"),
])
def test_404_unknown_path_outside_v1_is_fastapi_shaped(c, method, path):
    # Outside /v1 chatd answers like the FastAPI template would.
    r = c.request(method, path)
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}
    assert r.headers.get("x-request-id")


# -------------------------------------------------------------- session ids


BAD_IDS_PATH = ["x" * 129, "bad!id", "a%2Fb", "a%20b", "%C3%BC", "a%00b"]


@pytest.mark.parametrize("sid", BAD_IDS_PATH)
@pytest.mark.parametrize("method,tmpl", [
    ("GET", "/v1/sessions/{}"), ("DELETE", "/v1/sessions/{}"), ("GET", "/v1/sessions/{}/messages"),
    ("POST", "/v1/sessions/{}/reset"),
])
def test_bad_session_id_v1_path(c, method, tmpl, sid):
    assert_v1_error(c.request(method, tmpl.format(sid)), 400, "invalid_request_error")


@pytest.mark.parametrize("sid", BAD_IDS_PATH)
@pytest.mark.parametrize("method,tmpl", [
    ("GET", "/history/{}"), ("DELETE", "/history/{}"), ("POST", "/reset/{}"),
])
def test_bad_session_id_seed_path(c, method, tmpl, sid):
    r = c.request(method, tmpl.format(sid))
    assert r.status_code == 422, (r.status_code, r.text)
    assert "detail" in r.json()


@pytest.mark.parametrize("sid", ["x" * 129, "bad!id", "a/b", "a b", "ü", "", "tab\there", "nul\u0000x"])
def test_bad_session_id_body(c, fake, sid):
    assert_v1_error(c.post("/v1/chat", json={"message": "m", "session_id": sid}), 400, "invalid_request_error")
    resp, sse = stream_v1(c, {"message": "m", "session_id": sid})
    assert sse is None
    assert_v1_error(resp, 400, "invalid_request_error")
    r = c.post("/chat", json={"message": "m", "session_id": sid})
    assert r.status_code == 422
    assert fake.requests() == []


def test_session_id_128_ok(c):
    sid = "Ab0._:-" + "z" * 121
    assert len(sid) == 128
    r = c.post("/v1/chat", json={"message": "m", "session_id": sid})
    assert r.status_code == 200, r.text
    assert c.get(f"/v1/sessions/{sid}").status_code == 200
    assert c.get(f"/v1/sessions/{sid}/messages").json()["data"][0]["content"] == "m"
    assert c.delete(f"/v1/sessions/{sid}").status_code == 204


# -------------------------------------------------------------- other 400s


def test_malformed_and_wrong_content(c, fake):
    for raw in (b"{", b"[]", b"null", b"\xff\xfe", b'{"message": "a", "message": }'):
        r = c.post("/v1/chat", content=raw, headers={"content-type": "application/json"})
        assert_v1_error(r, 400, "invalid_request_error")
        r = c.post("/chat", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, raw
    assert fake.requests() == []


def test_message_with_invalid_utf8_escape(c, fake):
    # A lone surrogate is not a valid Unicode scalar: must not reach the provider.
    raw = b'{"message": "bad \\ud800 here", "session_id": "lim-utf8"}'
    r = c.post("/v1/chat", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert_v1_error(r, 400, "invalid_request_error")
        assert fake.requests() == []
    else:
        # If accepted, what went upstream and what is stored must be valid UTF-8 JSON.
        assert len(fake.requests()) == 1 and fake.requests()[0]["outcome"] == "completed"
        m = c.get("/v1/sessions/lim-utf8/messages")
        assert m.status_code == 200 and len(m.json()["data"]) == 2


# ----------------------------------------------------------- no API key


@pytest.fixture(scope="module")
def nokey(chatd_module):
    return chatd_module({"ANTHROPIC_API_KEY": None})


def test_no_api_key_503(nokey, fake):
    c = nokey.client
    assert c.get("/healthz").status_code == 200
    assert c.get("/").json() == {"status": "ok", "service": "chat-api"}
    err = assert_v1_error(c.post("/v1/chat", json={"message": "m", "session_id": "nk-1"}), 503,
                          "provider_not_configured")
    assert "ANTHROPIC_API_KEY" in err["message"]
    resp, sse = stream_v1(c, {"message": "m", "session_id": "nk-1"})
    assert sse is None
    assert_v1_error(resp, 503, "provider_not_configured", "ANTHROPIC_API_KEY")
    detail = assert_seed_detail(c.post("/chat", json={"message": "m", "session_id": "nk-1"}), 503)
    assert "ANTHROPIC_API_KEY" in detail
    with c.stream("POST", "/chat-stream", json={"message": "m", "session_id": "nk-1"}) as r:
        r.read()
    assert "ANTHROPIC_API_KEY" in assert_seed_detail(r, 503)
    # Nothing was stored or sent.
    assert c.get("/history/nk-1").status_code == 404
    assert fake.requests() == []
    # Everything that does not need the provider still works.
    assert c.get("/v1/sessions").status_code == 200
    assert c.get("/v1/stats").status_code == 200
    assert c.get("/readyz").status_code == 200


def test_empty_api_key_is_not_configured(chatd, fake):
    s = chatd({"ANTHROPIC_API_KEY": ""})
    assert_v1_error(s.client.post("/v1/chat", json={"message": "m"}), 503, "provider_not_configured",
                    "ANTHROPIC_API_KEY")
    assert fake.requests() == []
