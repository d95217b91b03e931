"""
test_errors.py: provider failures mapped to client statuses and error types
(the table at the end of docs/API.md), and the retry policy as seen at the fake.
"""
import time

import pytest

from helpers import assert_seed_detail, assert_v1_error, echo, stream_v1


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module({"PROVIDER_MAX_RETRIES": "0", "PROVIDER_FIRST_BYTE_TIMEOUT": "1s",
                         "PROVIDER_IDLE_TIMEOUT": "1s"})


# (id, scenario, client status, /v1 error.type, text the message must contain)
MAPPING = [
    ("p400", {"status": 400, "error_message": "messages.0: provider says zzz-400"}, 400,
     "invalid_request_error", "zzz-400"),
    ("p401", {"status": 401}, 502, "provider_auth_error", None),
    ("p403", {"status": 403}, 502, "provider_auth_error", None),
    ("p404", {"status": 404, "error_type": "not_found_error", "error_message": "model: no-such-model"}, 400,
     "invalid_request_error", None),
    ("p413", {"status": 413, "error_type": "request_too_large"}, 413, "request_too_large", None),
    ("p429", {"status": 429, "retry_after": "7"}, 429, "rate_limit_error", None),
    ("p529", {"status": 529}, 503, "provider_overloaded", None),
    ("p503", {"status": 503, "error_type": "overloaded_error"}, 503, "provider_overloaded", None),
    ("p500", {"status": 500}, 502, "provider_error", None),
    ("p502_html", {"status": 502, "body": "<html><body>bad gateway</body></html>", "content_type": "text/html"},
     502, "provider_error", None),
    ("truncate", {"fault": "truncate"}, 502, "provider_error", None),
    ("malformed", {"fault": "malformed"}, 502, "provider_error", None),
    ("reset", {"fault": "reset"}, 502, "provider_error", None),
    ("header_timeout", {"header_delay_ms": 4000}, 504, "provider_timeout", None),
    ("stall", {"fault": "stall", "stall_ms": 4000}, 504, "provider_timeout", None),
]
IDS = [m[0] for m in MAPPING]


def _script(fake, name, scenario):
    if name == "reset":
        # A connection that dies before any response byte may be resent once by
        # libcurl itself when it was a reused keep-alive connection (it cannot be
        # told apart from a stale one, see docs/API.md): fail every attempt.
        fake.script(default=scenario)
    else:
        fake.script(queue=[scenario])


def _attempts_ok(fake, name):
    n = len(fake.requests())
    return n in (1, 2) if name == "reset" else n == 1


@pytest.mark.parametrize("name,scenario,status,etype,contains", MAPPING, ids=IDS)
def test_v1_chat_mapping(server, fake, name, scenario, status, etype, contains):
    c = server.client
    _script(fake, name, scenario)
    sid = f"err-v1-{name}"
    t0 = time.monotonic()
    r = c.post("/v1/chat", json={"message": "go", "session_id": sid})
    elapsed = time.monotonic() - t0
    assert_v1_error(r, status, etype, contains)
    assert _attempts_ok(fake, name), "PROVIDER_MAX_RETRIES=0 must mean one attempt"
    if status == 429:
        ra = r.headers.get("retry-after")
        assert ra is not None and ra.isdigit() and int(ra) >= 1, r.headers
    if status == 504:
        assert elapsed < 3.5, f"timeout of 1 s took {elapsed:.2f} s"
    assert c.get(f"/v1/sessions/{sid}").status_code == 404
    # The server still works afterwards.
    fake.reset()
    assert c.post("/v1/chat", json={"message": "ok", "session_id": sid}).status_code == 200


@pytest.mark.parametrize("name,scenario,status,etype,contains", MAPPING, ids=IDS)
def test_seed_chat_mapping(server, fake, name, scenario, status, etype, contains):
    c = server.client
    _script(fake, name, scenario)
    r = c.post("/chat", json={"message": "go", "session_id": f"err-seed-{name}"})
    detail = assert_seed_detail(r, status)
    if contains:
        assert contains in detail
    if status == 429:
        assert r.headers.get("retry-after"), r.headers


@pytest.mark.parametrize("name,scenario,status,etype,contains", MAPPING, ids=IDS)
def test_v1_stream_mapping(server, fake, name, scenario, status, etype, contains):
    c = server.client
    fake.script(queue=[scenario])
    sid = f"err-stream-{name}"
    resp, sse = stream_v1(c, {"message": "go", "session_id": sid})
    if sse is None:
        # Failed before the stream started: a JSON error with the mapped status.
        assert_v1_error(resp, status, etype, contains)
    else:
        assert resp.status_code == 200
        names = sse.names()
        assert names[0] == "start" and names[-1] == "error" and "done" not in names, names
        err = sse.data("error")[0]
        assert err["type"] == etype, err
        assert err["request_id"] == resp.headers["x-request-id"]
        assert isinstance(err["message"], str) and err["message"]
        if contains:
            assert contains in err["message"]
    assert c.get(f"/v1/sessions/{sid}").status_code == 404


@pytest.mark.parametrize("scenario,etype", [
    ({"fault": "midstream_error", "after": 2}, "provider_overloaded"),
    ({"fault": "truncate", "after": 2}, "provider_error"),
    ({"fault": "malformed", "after": 2}, "provider_error"),
    ({"fault": "reset", "after": 2}, "provider_error"),
    ({"fault": "stall", "after": 2, "stall_ms": 4000}, "provider_timeout"),
], ids=["midstream_error", "truncate", "malformed", "reset", "stall"])
def test_stream_error_after_deltas(server, fake, scenario, etype):
    c = server.client
    fake.script(queue=[scenario])
    resp, sse = stream_v1(c, {"message": "abc def ghi", "session_id": f"err-mid-{scenario['fault']}"})
    assert resp.status_code == 200
    names = sse.names()
    assert names[:3] == ["start", "delta", "delta"] and names[-1] == "error" and "done" not in names, names
    assert sse.deltas_text() == "Hello! You "
    err = sse.data("error")[0]
    assert err["type"] == etype, err
    assert err["request_id"] == resp.headers["x-request-id"]


# ------------------------------------------------------------------ retries


@pytest.fixture(scope="module")
def retrying(chatd_module):
    return chatd_module({"PROVIDER_MAX_RETRIES": "2", "RETRY_MAX_WAIT": "3s"})


def test_retry_529_twice_then_success(retrying, fake):
    fake.script(queue=[{"status": 529}, {"status": 529}])
    r = retrying.client.post("/v1/chat", json={"message": "retry me", "session_id": "err-retry-1"})
    assert r.status_code == 200, r.text
    assert r.json()["response"] == echo("retry me")
    assert r.json()["turn_count"] == 1
    reqs = fake.requests()
    assert len(reqs) == 3
    assert [q["outcome"] for q in reqs] == ["error_status", "error_status", "completed"]
    assert reqs[0]["body"] == reqs[2]["body"]


def test_retry_exhausted(retrying, fake):
    fake.script(queue=[{"status": 500}] * 3 + [{"reply": "must not be reached"}])
    r = retrying.client.post("/v1/chat", json={"message": "x", "session_id": "err-retry-2"})
    assert_v1_error(r, 502, "provider_error")
    assert len(fake.requests()) == 3


def test_retry_stream_before_first_delta(retrying, fake):
    fake.script(queue=[{"status": 529}])
    resp, sse = stream_v1(retrying.client, {"message": "s", "session_id": "err-retry-3"})
    assert sse is not None and sse.names()[-1] == "done" and "error" not in sse.names(), sse and sse.names()
    assert sse.deltas_text() == echo("s")
    assert len(fake.requests()) == 2


def test_no_retry_on_400(retrying, fake):
    fake.script(queue=[{"status": 400}])
    assert_v1_error(retrying.client.post("/v1/chat", json={"message": "x", "session_id": "err-retry-4"}),
                    400, "invalid_request_error")
    assert len(fake.requests()) == 1


def test_no_retry_when_should_retry_false(retrying, fake):
    fake.script(queue=[{"status": 529, "should_retry": False}])
    assert_v1_error(retrying.client.post("/v1/chat", json={"message": "x", "session_id": "err-retry-5"}),
                    503, "provider_overloaded")
    assert len(fake.requests()) == 1


def test_no_retry_after_deltas_delivered(retrying, fake):
    fake.script(queue=[{"fault": "midstream_error", "after": 2}])
    resp, sse = stream_v1(retrying.client, {"message": "x y z", "session_id": "err-retry-6"})
    assert sse.names()[-1] == "error"
    assert len(fake.requests()) == 1


def test_retry_after_is_honoured(retrying, fake):
    fake.script(queue=[{"status": 429, "retry_after": "1"}])
    t0 = time.monotonic()
    r = retrying.client.post("/v1/chat", json={"message": "x", "session_id": "err-retry-7"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    reqs = fake.requests()
    assert len(reqs) == 2
    gap = reqs[1]["received_at_ms"] - reqs[0]["received_at_ms"]
    assert gap >= 950, gap
    assert elapsed < 3


def test_retry_after_beyond_cap_fails_fast(retrying, fake):
    fake.script(queue=[{"status": 429, "retry_after": "30"}])
    t0 = time.monotonic()
    r = retrying.client.post("/v1/chat", json={"message": "x", "session_id": "err-retry-8"})
    elapsed = time.monotonic() - t0
    assert_v1_error(r, 429, "rate_limit_error")
    assert r.headers.get("retry-after") == "30"
    assert len(fake.requests()) == 1
    assert elapsed < 2.5
