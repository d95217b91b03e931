"""
test_guard.py: chatd's production gate, black box: authentication (none, static
token, API keys made with `chatd keys`), per-key session isolation on every
session endpoint, admin-only routes, the refusal to listen unauthenticated on a
non-loopback address, request and token rate limits (RateLimit-* headers, 429 +
Retry-After, per-key overrides, trusted proxies and X-Forwarded-For), CORS, and
the X-Chatd-Overhead-Ms header on every kind of response.

Bucket refill timing is covered with an injected clock by
tests/unit/test_ratelimit.c; nothing here waits for a bucket to refill.
"""
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

import conftest
from conftest import ChatdServer
from helpers import REQ_ID_RE, assert_seed_detail, assert_v1_error, directive, echo, stream_v1

TOKEN = "static-admin-token-7f3e"
WWW_MISSING = 'Bearer realm="chatd"'
WWW_INVALID = 'Bearer realm="chatd", error="invalid_token"'

# ------------------------------------------------------------------ helpers


def chatd_cli(server_or_env, *args, check=True):
    """Runs `chatd <args>` with the server's environment (same DATABASE_URL)."""
    env = server_or_env if isinstance(server_or_env, dict) else server_or_env.env
    p = subprocess.run([conftest.CHATD_BIN, *args], env=env, capture_output=True, text=True, timeout=20)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


def create_key(server_or_env, name, role=None, rate_limit=None):
    """`chatd keys create`; returns (id, secret) parsed from its output."""
    args = ["keys", "create", "--name", name]
    if role:
        args += ["--role", role]
    if rate_limit:
        args += ["--rate-limit", rate_limit]
    out = chatd_cli(server_or_env, *args).stdout
    fields = {}
    for line in out.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    assert fields.get("name") == name, out
    assert fields.get("role") == (role or "user"), out
    assert re.fullmatch(r"chatd_[0-9a-f]{48}", fields.get("secret", "")), out
    assert fields.get("id"), out
    return fields["id"], fields["secret"]


def bearer(secret):
    return {"Authorization": "Bearer " + secret}


def refused_start(extra_env, timeout=10.0):
    """Runs `chatd serve` expecting it to refuse to start: returns (exit code, stderr)."""
    tmp = tempfile.mkdtemp(prefix="chatd-guard-")
    env = {
        "PATH": "/usr/bin:/bin",
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "DATABASE_URL": "sqlite:///" + os.path.join(tmp, "chatd.db"),
        "PORT": "0",
        "WORKERS": "1",
    }
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(extra_env)
    p = subprocess.Popen([conftest.CHATD_BIN, "serve"], env=env, cwd=tmp, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"chatd did not refuse to start with {extra_env}; stderr:\n{err}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return p.returncode, err


def overhead_ms(resp):
    v = resp.headers.get("x-chatd-overhead-ms")
    # Milliseconds with microsecond resolution: "0.153".
    assert v is not None and re.fullmatch(r"[0-9]+\.[0-9]{3}", v), (resp.status_code, dict(resp.headers))
    return float(v)


def assert_no_cors(resp):
    leaked = [h for h in resp.headers if h.lower().startswith("access-control-")]
    assert leaked == [], (resp.status_code, dict(resp.headers))


# Every route that needs credentials: (method, path, json body, flavor).
PROTECTED = [
    ("POST", "/chat", {"message": "hi", "session_id": "auth-s"}, "seed"),
    ("POST", "/chat-stream", {"message": "hi", "session_id": "auth-s"}, "seed"),
    ("GET", "/history/auth-s", None, "seed"),
    ("DELETE", "/history/auth-s", None, "seed"),
    ("GET", "/sessions", None, "seed"),
    ("POST", "/reset/auth-s", None, "seed"),
    ("GET", "/stats", None, "seed"),
    ("POST", "/v1/chat", {"message": "hi", "session_id": "auth-v"}, "v1"),
    ("POST", "/v1/chat/stream", {"message": "hi", "session_id": "auth-v"}, "v1"),
    ("POST", "/v1/chat/completions", {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]},
     "any"),
    ("GET", "/v1/sessions", None, "v1"),
    ("GET", "/v1/sessions/auth-v", None, "v1"),
    ("DELETE", "/v1/sessions/auth-v", None, "v1"),
    ("GET", "/v1/sessions/auth-v/messages", None, "v1"),
    ("POST", "/v1/sessions/auth-v/reset", None, "v1"),
    ("GET", "/v1/stats", None, "v1"),
    ("GET", "/v1/models", None, "v1"),
    ("POST", "/v1/estimate", {"input_tokens": 10, "output_tokens": 10}, "v1"),
    ("GET", "/metrics", None, "v1"),
]
PUBLIC = ["/", "/healthz", "/readyz", "/openapi.json", "/docs", "/ui/"]


def send(client, method, path, body=None, headers=None):
    return client.request(method, path, json=body, headers=headers or {})


def assert_openai_error(resp, status):
    """The OpenAI error envelope that /v1/chat/completions promises for every error."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def assert_401(resp, flavor, www):
    assert resp.status_code == 401, (resp.request.method, resp.request.url, resp.status_code, resp.text)
    assert resp.headers.get("www-authenticate") == www, dict(resp.headers)
    assert REQ_ID_RE.match(resp.headers["x-request-id"])
    if flavor == "seed":
        assert_seed_detail(resp, 401)
    elif flavor == "openai":
        assert_openai_error(resp, 401)
    elif flavor == "any":
        pass  # /v1/chat/completions: its envelope is checked by test_openai_route_gate_errors
    else:
        assert_v1_error(resp, 401, "authentication_error")


# ------------------------------------------------------------- auth: none


def test_mode_none_needs_no_credentials(chatd, fake):
    s = chatd({})
    r = s.client.post("/v1/chat", json={"message": "open", "session_id": "none-1"})
    assert r.status_code == 200, r.text
    assert "www-authenticate" not in r.headers
    for path in ("/v1/sessions", "/sessions", "/stats", "/v1/stats", "/metrics", "/history/none-1"):
        r = s.client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
    # Without auth every caller is the same anonymous user: it sees the session it made.
    assert [x["id"] for x in s.client.get("/v1/sessions").json()["data"]] == ["none-1"]


# ------------------------------------------------------------ auth: token


@pytest.fixture(scope="module")
def token_server(chatd_module):
    return chatd_module({"API_TOKEN": TOKEN})


@pytest.mark.parametrize("method,path,body,flavor", PROTECTED, ids=[f"{m} {p}" for m, p, _, _ in PROTECTED])
def test_token_mode_protected_routes(token_server, fake, method, path, body, flavor):
    c = token_server.client
    # Missing credentials, a wrong scheme, a wrong token, a token with a suffix, an empty bearer.
    assert_401(send(c, method, path, body), flavor, WWW_MISSING)
    assert_401(send(c, method, path, body, {"Authorization": "Basic " + TOKEN}), flavor, WWW_MISSING)
    assert_401(send(c, method, path, body, {"Authorization": "Bearer"}), flavor, WWW_MISSING)
    assert_401(send(c, method, path, body, bearer("wrong-token")), flavor, WWW_INVALID)
    assert_401(send(c, method, path, body, bearer(TOKEN + "x")), flavor, WWW_INVALID)
    assert_401(send(c, method, path, body, bearer(TOKEN[:-1])), flavor, WWW_INVALID)
    assert fake.requests() == [], "an unauthenticated request reached the provider"
    # The right token (scheme is case-insensitive) gets through.
    for auth in ("Bearer " + TOKEN, "bearer " + TOKEN):
        r = send(c, method, path, body, {"Authorization": auth})
        assert r.status_code not in (401, 403), (method, path, r.status_code, r.text)
        assert "www-authenticate" not in r.headers
        assert r.status_code < 500, (method, path, r.status_code, r.text)


def test_token_mode_public_routes_stay_open(token_server):
    c = token_server.client
    for path in PUBLIC:
        r = c.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        assert "www-authenticate" not in r.headers
    r = c.get("/ui", follow_redirects=False)
    assert r.status_code in (301, 302, 307, 308), r.status_code


def test_auth_mode_token_with_keys_table_empty_rejects_random_bearers(token_server):
    # A secret shaped like an API key is not accepted in token mode.
    r = token_server.client.get("/v1/sessions", headers=bearer("chatd_" + "0" * 48))
    assert_401(r, "v1", WWW_INVALID)


def test_timing_safe_comparison_is_used():
    """Static check: measuring constant time is not reliable in CI, so check the
    code compares the static token with CRYPTO_memcmp on fixed-length digests and
    never with strcmp/memcmp."""
    src = (conftest.REPO / "src" / "guard" / "auth.c").read_text()
    code = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    code = re.sub(r"//[^\n]*", "", code)
    m = re.search(r"static\s+bool\s+token_matches\s*\(([^)]*)\)\s*\{(.*?)\n\}", code, re.S)
    assert m, "auth.c: token_matches() not found; update this check if the comparison moved"
    body = m.group(2)
    assert "CRYPTO_memcmp(" in body, body
    assert not re.search(r"\b(strcmp|strncmp|memcmp|strcasecmp)\s*\(", body), body
    # The comparison runs on digests of both sides (equal lengths whatever was presented).
    assert body.count("auth_sha256_hex(") == 2, body
    # And the configured token is compared nowhere else with a plain string comparison.
    assert not re.search(r"(strcmp|strncmp|memcmp)\s*\([^;]*api_token", code), "api_token compared with strcmp"
    assert re.search(r"token_matches\s*\(\s*tok\s*,\s*cfg->api_token\s*\)", code)


# ------------------------------------------------------------- auth: keys


@pytest.fixture(scope="module")
def keys_server(chatd_module):
    """AUTH_MODE=keys with the static token too; keys alice, bob (users) and root (admin)."""
    s = chatd_module({"AUTH_MODE": "keys", "API_TOKEN": TOKEN})
    s.keys = {}
    for name, role in (("alice", None), ("bob", None), ("root", "admin"), ("carol", None)):
        s.keys[name] = create_key(s, name, role)
    return s


def _as(s, name):
    return bearer(s.keys[name][1])


def test_keys_created_before_start_work(fake, chatd):
    """A key made with the CLI on a database the server has not opened yet."""
    tmp = tempfile.mkdtemp(prefix="chatd-keys-")
    db = os.path.join(tmp, "chatd.db")
    url = conftest._default_database_url(db)  # the suite's backend (SQLite file, or a PostgreSQL database)
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": url}
    kid, secret = create_key(env, "early", "admin")
    s = ChatdServer(fake.url, {"AUTH_MODE": "keys", "DATABASE_URL": url}, tmpdir=tmp)
    chatd.servers.append(s)
    assert s.db_path == db
    r = s.client.get("/v1/stats", headers=bearer(secret))
    assert r.status_code == 200, r.text
    assert_401(s.client.get("/v1/stats"), "v1", WWW_MISSING)
    # Keys mode without API_TOKEN: the token variable is not a way in.
    assert_401(s.client.get("/v1/stats", headers=bearer(TOKEN)), "v1", WWW_INVALID)
    listing = chatd_cli(s, "keys", "list").stdout
    assert kid in listing and "early" in listing and secret not in listing


def test_keys_bad_and_missing(keys_server, fake):
    c = keys_server.client
    assert_401(c.get("/v1/sessions"), "v1", WWW_MISSING)
    assert_401(c.get("/sessions", headers=bearer("chatd_" + "ab" * 24)), "seed", WWW_INVALID)
    sec = keys_server.keys["alice"][1]
    assert_401(c.get("/v1/sessions", headers=bearer(sec[:-1])), "v1", WWW_INVALID)
    assert_401(c.get("/v1/sessions", headers=bearer(sec.upper())), "v1", WWW_INVALID)
    # The key id is not a credential.
    assert_401(c.get("/v1/sessions", headers=bearer(keys_server.keys["alice"][0])), "v1", WWW_INVALID)
    assert c.get("/v1/sessions", headers=bearer(sec)).status_code == 200


def test_key_secret_not_stored_in_clear(keys_server):
    import sqlite3
    db = sqlite3.connect(keys_server.db_path)
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    for name, (_, secret) in keys_server.keys.items():
        assert secret not in dump, f"the secret of {name} is stored in clear"


def _seed_session_state(c, sid, h):
    hist = c.get(f"/history/{sid}", headers=h)
    v1 = c.get(f"/v1/sessions/{sid}", headers=h)
    msgs = c.get(f"/v1/sessions/{sid}/messages", headers=h)
    assert hist.status_code == v1.status_code == msgs.status_code == 200, (hist.text, v1.text, msgs.text)
    v = v1.json()
    for k in ("updated_at",):
        v.pop(k, None)
    return hist.json(), v, msgs.json()


def test_isolation_every_session_endpoint(keys_server, fake):
    c = keys_server.client
    alice, bob, root = _as(keys_server, "alice"), _as(keys_server, "bob"), _as(keys_server, "root")
    # Alice owns two sessions, one made through each surface.
    assert c.post("/v1/chat", json={"message": "alice v1", "session_id": "iso-a1"}, headers=alice).status_code == 200
    assert c.post("/chat", json={"message": "alice seed", "session_id": "iso-a2"}, headers=alice).status_code == 200
    before = {sid: _seed_session_state(c, sid, alice) for sid in ("iso-a1", "iso-a2")}
    n_up = len(fake.requests())

    # What an id nobody owns gives, to compare the seed "not_found" bodies with.
    missing = {
        "DELETE /history": c.delete("/history/iso-nobody", headers=bob).json(),
        "POST /reset": c.post("/reset/iso-nobody", headers=bob).json(),
    }
    assert missing["DELETE /history"]["status"] == "not_found", missing
    assert missing["POST /reset"]["status"] == "not_found", missing

    for sid in ("iso-a1", "iso-a2"):
        r = c.get(f"/history/{sid}", headers=bob)
        assert r.status_code == 404 and r.json() == {"detail": "Session not found"}, r.text
        r = c.delete(f"/history/{sid}", headers=bob)
        assert r.status_code == 200 and r.json() == {"status": "not_found", "session_id": sid}, r.text
        r = c.post(f"/reset/{sid}", headers=bob)
        assert r.status_code == 200 and r.json() == {"status": "not_found", "session_id": sid}, r.text
        assert_v1_error(c.get(f"/v1/sessions/{sid}", headers=bob), 404, "not_found_error")
        assert_v1_error(c.delete(f"/v1/sessions/{sid}", headers=bob), 404, "not_found_error")
        assert_v1_error(c.get(f"/v1/sessions/{sid}/messages", headers=bob), 404, "not_found_error")
        assert_v1_error(c.post(f"/v1/sessions/{sid}/reset", headers=bob), 404, "not_found_error")
        # Chatting on someone else's session neither reads nor extends it.
        r = c.post("/chat", json={"message": "bob was here", "session_id": sid}, headers=bob)
        assert_seed_detail(r, 404)
        assert_v1_error(c.post("/v1/chat", json={"message": "bob", "session_id": sid}, headers=bob),
                        404, "not_found_error")
        resp, sse = stream_v1(c, {"message": "bob", "session_id": sid}, headers=bob)
        assert sse is None, "a foreign session must be refused before the stream starts"
        assert_v1_error(resp, 404, "not_found_error")
        r = c.post("/chat-stream", json={"message": "bob", "session_id": sid}, headers=bob)
        assert r.status_code == 404, (r.status_code, r.text)
        r = c.post("/v1/chat/completions", headers={**bob, "X-Session-Id": sid},
                   json={"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "bob"}]})
        assert r.status_code == 404, (r.status_code, r.text)
        r = c.post("/v1/chat/completions", headers=bob,
                   json={"model": "claude-sonnet-4-6", "session_id": sid,
                         "messages": [{"role": "user", "content": "bob"}]})
        assert r.status_code == 404, (r.status_code, r.text)
        # Idempotency keys do not open a way in either.
        r = c.post("/v1/chat", json={"message": "bob", "session_id": sid},
                   headers={**bob, "Idempotency-Key": "iso-idem-" + sid})
        assert_v1_error(r, 404, "not_found_error")

    assert len(fake.requests()) == n_up, "a foreign-session request reached the provider"
    # Nothing of Alice's changed.
    for sid in ("iso-a1", "iso-a2"):
        assert _seed_session_state(c, sid, alice) == before[sid], sid
    # The admin key and the static token see (and could manage) them.
    for h in (root, bearer(TOKEN)):
        assert c.get("/v1/sessions/iso-a1", headers=h).status_code == 200
        assert c.get("/history/iso-a2", headers=h).status_code == 200


def test_isolation_listings(keys_server, fake):
    c = keys_server.client
    carol, bob, root = _as(keys_server, "carol"), _as(keys_server, "bob"), _as(keys_server, "root")
    for sid, h in (("list-c1", carol), ("list-c2", carol), ("list-b1", bob)):
        r = c.post("/v1/chat", json={"message": "x", "session_id": sid}, headers=h)
        assert r.status_code == 200, r.text

    def v1_ids(h):
        ids, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = c.get("/v1/sessions", params=params, headers=h)
            assert page.status_code == 200, page.text
            ids += [s["id"] for s in page.json()["data"]]
            cursor = page.json()["next_cursor"]
            if not cursor:
                return ids

    def seed_ids(h):
        r = c.get("/sessions", headers=h)
        assert r.status_code == 200, r.text
        return [s["session_id"] for s in r.json()["sessions"]]

    assert sorted(v1_ids(carol)) == ["list-c1", "list-c2"]
    assert sorted(seed_ids(carol)) == ["list-c1", "list-c2"]
    bob_ids = set(v1_ids(bob))
    assert "list-b1" in bob_ids and not bob_ids & {"list-c1", "list-c2"}
    assert set(seed_ids(bob)) == bob_ids
    everything = set(v1_ids(root))
    assert {"list-c1", "list-c2", "list-b1"} <= everything
    assert set(seed_ids(root)) == everything == set(v1_ids(bearer(TOKEN)))


def test_admin_only_routes(keys_server):
    c = keys_server.client
    alice = _as(keys_server, "alice")
    r = c.get("/stats", headers=alice)
    assert_seed_detail(r, 403)
    assert "www-authenticate" not in r.headers
    assert_v1_error(c.get("/v1/stats", headers=alice), 403, "permission_error")
    assert_v1_error(c.get("/metrics", headers=alice), 403, "permission_error")
    for h in (_as(keys_server, "root"), bearer(TOKEN)):
        assert c.get("/stats", headers=h).status_code == 200
        assert c.get("/v1/stats", headers=h).status_code == 200
        r = c.get("/metrics", headers=h)
        assert r.status_code == 200 and "chatd_http_requests_total" in r.text
    # A user key may use everything else it owns.
    assert c.get("/v1/models", headers=alice).status_code == 200


def test_revoked_key_is_refused(chatd, fake):
    s = chatd({"AUTH_MODE": "keys"})
    kid, secret = create_key(s, "temp")
    _, other = create_key(s, "stays")
    assert s.client.post("/v1/chat", json={"message": "x", "session_id": "rev-1"},
                         headers=bearer(secret)).status_code == 200
    chatd_cli(s, "keys", "revoke", kid)
    assert_401(s.client.get("/v1/sessions", headers=bearer(secret)), "v1", WWW_INVALID)
    assert_401(s.client.post("/chat", json={"message": "x", "session_id": "rev-1"}, headers=bearer(secret)),
               "seed", WWW_INVALID)
    assert s.client.get("/v1/sessions", headers=bearer(other)).status_code == 200
    # Revoking by name works too.
    chatd_cli(s, "keys", "revoke", "stays")
    assert_401(s.client.get("/v1/sessions", headers=bearer(other)), "v1", WWW_INVALID)
    listing = chatd_cli(s, "keys", "list").stdout
    assert re.search(rf"{kid}\s+temp\s+user\s+revoked", listing), listing
    # An unknown id or name is an error, not a silent success.
    assert chatd_cli(s, "keys", "revoke", "no-such-key", check=False).returncode != 0


def test_keys_cli_rejects_bad_input(chatd):
    s = chatd({"AUTH_MODE": "keys"})
    for args in (["keys", "create"], ["keys", "create", "--name", "x", "--role", "root"],
                 ["keys", "create", "--name", "y", "--rate-limit", "5/fortnight"]):
        p = chatd_cli(s, *args, check=False)
        assert p.returncode != 0 and p.stderr.strip(), (args, p.returncode, p.stdout, p.stderr)
        assert "secret" not in p.stdout


# ----------------------------------------------------- non-loopback refusal


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_mode_none_refuses_non_loopback(host):
    rc, err = refused_start({"HOST": host})
    assert rc not in (0, None), err
    assert "refusing to listen on a non-loopback address without authentication" in err, err
    assert "ALLOW_UNAUTHENTICATED" in err, err


def test_mode_none_non_loopback_allowed_when_told(chatd):
    # Binds every interface for the length of this test; the test connects via 127.0.0.1 only.
    s = chatd({"HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "on"})
    assert s.client.get("/healthz").status_code == 200
    assert s.client.get("/v1/sessions").status_code == 200


def test_token_mode_on_loopback_alias_starts(chatd):
    # 127.0.0.0/8 is loopback: no refusal, and a token protects it anyway.
    s = chatd({"HOST": "127.0.0.1", "API_TOKEN": TOKEN})
    assert_401(s.client.get("/v1/sessions"), "v1", WWW_MISSING)


# ----------------------------------------------------------- rate limits


def _chat(c, i, route="/v1/chat", headers=None):
    body = {"message": f"rl {i}", "session_id": f"rl-{i}"}
    return c.post(route, json=body, headers=headers or {})


def test_rate_limit_requests(chatd, fake):
    s = chatd({"RATE_LIMIT": "3/minute"})
    c = s.client
    rs = [_chat(c, 0, "/v1/chat"), _chat(c, 1, "/chat")]
    resp, sse = stream_v1(c, {"message": "rl 2", "session_id": "rl-2"})
    rs.append(resp)
    assert sse is not None and sse.names()[-1] == "done"
    for want, r in zip((2, 1, 0), rs):
        assert r.status_code == 200, r.text
        assert r.headers["ratelimit-limit"] == "3"
        assert r.headers["ratelimit-remaining"] == str(want)
        reset = int(r.headers["ratelimit-reset"])
        assert 1 <= reset <= 60, reset
        assert "retry-after" not in r.headers
    n_up = len(fake.requests())
    # The 4th on any chat route is refused, with the headers and the error envelope.
    for route in ("/v1/chat", "/v1/chat/stream", "/v1/chat/completions", "/chat", "/chat-stream"):
        body = ({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "x"}]}
                if route.endswith("completions") else {"message": "x", "session_id": "rl-over"})
        r = c.post(route, json=body)
        assert r.status_code == 429, (route, r.status_code, r.text)
        ra = r.headers.get("retry-after")
        assert ra and re.fullmatch(r"[0-9]+", ra) and 1 <= int(ra) <= 60, (route, dict(r.headers))
        assert r.headers["ratelimit-limit"] == "3"
        assert r.headers["ratelimit-remaining"] == "0"
        if route.startswith("/v1/chat/completions"):
            pass  # envelope: test_openai_route_gate_errors
        elif route.startswith("/v1/"):
            err = assert_v1_error(r, 429, "rate_limited")
            assert "rate limit" in err["message"]
        else:
            assert_seed_detail(r, 429)
    assert len(fake.requests()) == n_up, "a refused request reached the provider"
    assert c.get("/v1/sessions/rl-over").status_code == 404
    # Non-chat routes are not limited and carry no RateLimit headers.
    for _ in range(5):
        for path in ("/v1/sessions", "/sessions", "/healthz", "/v1/sessions/rl-0", "/v1/models"):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
            assert "ratelimit-limit" not in r.headers and "retry-after" not in r.headers, path


def test_openai_route_gate_errors(chatd, fake):
    """/v1/chat/completions promises OpenAI's error envelope {message, type, param, code}
    for its errors, so OpenAI SDKs can read them: the gate's 401 and 429 included."""
    s = chatd({"API_TOKEN": TOKEN, "RATE_LIMIT": "1/minute"})
    c = s.client
    body = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]}
    r = c.post("/v1/chat/completions", json=body)
    assert r.headers.get("www-authenticate") == WWW_MISSING
    assert_openai_error(r, 401)
    assert_openai_error(c.post("/v1/chat/completions", json=body, headers=bearer("nope")), 401)
    assert c.post("/v1/chat/completions", json=body, headers=bearer(TOKEN)).status_code == 200
    r = c.post("/v1/chat/completions", json=body, headers=bearer(TOKEN))
    assert int(r.headers["retry-after"]) >= 1
    assert_openai_error(r, 429)


def test_rate_limit_off_sends_no_headers(chatd):
    s = chatd({"RATE_LIMIT": "off"})
    for i in range(12):
        r = _chat(s.client, i)
        assert r.status_code == 200
        assert "ratelimit-limit" not in r.headers


def test_rate_limit_per_key_override(chatd, fake):
    s = chatd({"AUTH_MODE": "keys", "RATE_LIMIT": "3/minute"})
    _, slow = create_key(s, "slow", rate_limit="1/minute")
    _, normal = create_key(s, "normal")
    _, normal2 = create_key(s, "normal2")
    c = s.client
    r = _chat(c, 1, headers=bearer(slow))
    assert r.status_code == 200 and r.headers["ratelimit-limit"] == "1" and r.headers["ratelimit-remaining"] == "0"
    r = _chat(c, 2, headers=bearer(slow))
    assert_v1_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    # Another key keeps the default, in its own bucket.
    for want in (2, 1, 0):
        r = _chat(c, 10 + want, headers=bearer(normal))
        assert r.status_code == 200, r.text
        assert r.headers["ratelimit-limit"] == "3" and r.headers["ratelimit-remaining"] == str(want)
    assert_v1_error(_chat(c, 20, headers=bearer(normal)), 429, "rate_limited")
    # Buckets are per key, not per client address (all of these come from 127.0.0.1).
    r = _chat(c, 30, headers=bearer(normal2))
    assert r.status_code == 200 and r.headers["ratelimit-remaining"] == "2"


def test_token_limit(chatd, fake):
    s = chatd({"TOKEN_LIMIT": "20/minute"})
    c = s.client
    # ~40 input tokens: more than the whole budget, debited after the turn.
    r = c.post("/v1/chat", json={"message": "t" * 120, "session_id": "tok-1"})
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    assert u["input_tokens"] + u["output_tokens"] > 20
    n_up = len(fake.requests())
    r = c.post("/v1/chat", json={"message": "again", "session_id": "tok-1"})
    err = assert_v1_error(r, 429, "rate_limited")
    assert "token" in err["message"].lower(), err
    ra = r.headers.get("retry-after")
    assert ra and int(ra) >= 1, dict(r.headers)
    # The balance is about 20 - (in + out) tokens: a full minute's refill is 20 tokens.
    deficit = u["input_tokens"] + u["output_tokens"] - 20
    assert int(ra) >= (deficit + 1) * 60 // 20 - 1, (ra, deficit)
    assert_seed_detail(c.post("/chat", json={"message": "x", "session_id": "tok-2"}), 429)
    assert len(fake.requests()) == n_up
    # Non-chat routes still work.
    assert c.get("/v1/sessions/tok-1").json()["turn_count"] == 1


def test_token_limit_small_turn_passes(chatd):
    s = chatd({"TOKEN_LIMIT": "1000/minute"})
    for i in range(3):
        assert s.client.post("/v1/chat", json={"message": "small", "session_id": "tok-s"}).status_code == 200


def test_spoofed_forwarded_for_ignored_without_trusted_proxies(chatd, fake):
    s = chatd({"RATE_LIMIT": "2/minute"})
    c = s.client
    r1 = _chat(c, 1, headers={"X-Forwarded-For": "1.1.1.1"})
    r2 = _chat(c, 2, headers={"X-Forwarded-For": "2.2.2.2"})
    r3 = _chat(c, 3, headers={"X-Forwarded-For": "3.3.3.3"})
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert r2.headers["ratelimit-remaining"] == "0", "spoofed X-Forwarded-For got its own bucket"
    assert_v1_error(r3, 429, "rate_limited")


def test_trusted_proxy_forwarded_for(chatd, fake):
    s = chatd({"RATE_LIMIT": "1/minute", "TRUSTED_PROXIES": "127.0.0.1"})
    c = s.client

    def chat(xff, i):
        h = {"X-Forwarded-For": xff} if xff is not None else {}
        return _chat(c, i, headers=h)

    assert chat("1.1.1.1", 1).status_code == 200
    assert chat("2.2.2.2", 2).status_code == 200          # another client, its own bucket
    assert chat("1.1.1.1", 3).status_code == 429          # the first client again
    # The left part can be forged by the client: the rightmost untrusted entry is the key.
    assert chat("6.6.6.6, 1.2.3.4", 4).status_code == 200
    assert chat("9.9.9.9, 1.2.3.4", 5).status_code == 429
    assert chat("1.2.3.4", 6).status_code == 429
    assert chat("6.6.6.6", 7).status_code == 200          # never keyed on the forged part
    # A chain of trusted proxies is walked through.
    assert chat("5.5.5.5, 127.0.0.1", 8).status_code == 200
    assert chat("5.5.5.5", 9).status_code == 429
    # Without the header, the proxy's own address is the key.
    assert chat(None, 10).status_code == 200
    assert chat(None, 11).status_code == 429


# -------------------------------------------------------------------- CORS

ORIGIN = "https://app.example.com"


def _preflight(c, origin, method="POST", headers="content-type, x-foo, authorization", path="/v1/chat"):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return c.options(path, headers=h)


def _vary(resp):
    return {v.strip().lower() for v in resp.headers.get("vary", "").split(",") if v.strip()}


def test_cors_off_by_default(chatd):
    s = chatd({})
    c = s.client
    r = c.get("/healthz", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert_no_cors(r)
    r = c.post("/v1/chat", json={"message": "x", "session_id": "cors-off"}, headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert_no_cors(r)
    r = _preflight(c, ORIGIN)
    assert r.status_code != 204
    assert_no_cors(r)


def test_cors_explicit_origin(chatd, fake):
    s = chatd({"CORS_ORIGINS": ORIGIN + ", https://other.example.org:8443", "API_TOKEN": TOKEN})
    c = s.client
    # Preflight: allowed, without credentials (browsers send none on a preflight).
    r = _preflight(c, ORIGIN)
    assert r.status_code == 204, (r.status_code, r.text)
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == ORIGIN
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    allowed = [h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")]
    assert sorted(allowed) == ["authorization", "content-type"], allowed  # x-foo filtered out
    assert "origin" in _vary(r)
    assert int(r.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in r.headers
    # The origin matches case-insensitively in scheme and host, with its port.
    r = _preflight(c, "https://other.example.org:8443", "DELETE", "x-request-id, idempotency-key, x-session-id")
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"].lower() == "https://other.example.org:8443"
    assert sorted(h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")) == \
        ["idempotency-key", "x-request-id", "x-session-id"]
    # Denied: another origin, the right host on another scheme or port, a method not offered.
    for origin, method in (("https://evil.example.com", "POST"), ("http://app.example.com", "POST"),
                           ("https://app.example.com:444", "POST"), ("https://other.example.org", "GET"),
                           (ORIGIN, "PUT")):
        r = _preflight(c, origin, method)
        assert r.status_code == 403, (origin, method, r.status_code)
        assert "access-control-allow-origin" not in r.headers, (origin, dict(r.headers))
        assert "origin" in _vary(r)
    # Actual requests: the allowed origin gets Allow-Origin and Expose-Headers.
    r = c.post("/v1/chat", json={"message": "x", "session_id": "cors-1"},
               headers={"Origin": ORIGIN, **bearer(TOKEN)})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
            "x-chatd-overhead-ms"} <= exposed, exposed
    assert "origin" in _vary(r)
    assert "access-control-allow-credentials" not in r.headers
    # Errors carry them too (a browser could not read a 401 otherwise).
    r = c.get("/v1/sessions", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    # Another origin: no CORS grant, but the response still varies on Origin; the request itself is served.
    r = c.get("/healthz", headers={"Origin": "https://evil.example.com"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    assert "origin" in _vary(r)
    # No Origin at all (same-origin or non-browser): no grant, Vary still there for caches.
    r = c.get("/healthz")
    assert "access-control-allow-origin" not in r.headers and "origin" in _vary(r)


def test_cors_any_origin(chatd):
    s = chatd({"CORS_ORIGINS": "*"})
    c = s.client
    r = _preflight(c, "https://anything.example.net")
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    r = c.get("/healthz", headers={"Origin": "https://anything.example.net"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


def test_cors_credentials_with_explicit_origins(chatd):
    s = chatd({"CORS_ORIGINS": ORIGIN, "CORS_CREDENTIALS": "on"})
    c = s.client
    r = _preflight(c, ORIGIN)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    r = c.get("/healthz", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    r = _preflight(c, "https://evil.example.com")
    assert r.status_code == 403 and "access-control-allow-credentials" not in r.headers


@pytest.mark.parametrize("env,needle", [
    ({"CORS_ORIGINS": "*", "CORS_CREDENTIALS": "on"}, "credentials"),
    ({"CORS_ORIGINS": "https://app.example.com/"}, "trailing slash"),
    ({"CORS_ORIGINS": "*, https://app.example.com"}, "mixes"),
    ({"CORS_ORIGINS": "app.example.com"}, "scheme"),
], ids=["star-with-credentials", "trailing-slash", "star-mixed", "no-scheme"])
def test_cors_bad_config_refuses_to_start(env, needle):
    rc, err = refused_start(env)
    assert rc not in (0, None), err
    assert needle in err, err
    assert "CORS" in err, err


# -------------------------------------------------- X-Chatd-Overhead-Ms


def test_overhead_header_on_every_response_kind(chatd, fake):
    s = chatd({"RATE_LIMIT": "1/minute", "API_TOKEN": TOKEN})
    c = s.client
    auth = bearer(TOKEN)
    seen = {}
    seen["json"] = c.post("/v1/chat", json={"message": "x", "session_id": "oh-1"}, headers=auth)
    assert seen["json"].status_code == 200
    seen["429"] = c.post("/v1/chat", json={"message": "x", "session_id": "oh-1"}, headers=auth)
    assert seen["429"].status_code == 429
    seen["404"] = c.get("/v1/sessions/oh-none", headers=auth)
    assert seen["404"].status_code == 404
    seen["404-path"] = c.get("/nope")
    seen["401"] = c.get("/v1/sessions")
    assert seen["401"].status_code == 401
    seen["405"] = c.put("/v1/chat")
    assert seen["405"].status_code == 405
    seen["health"] = c.get("/healthz")
    seen["metrics"] = c.get("/metrics", headers=auth)
    seen["seed"] = c.get("/sessions", headers=auth)
    for kind, r in seen.items():
        assert overhead_ms(r) < 2000, (kind, r.headers["x-chatd-overhead-ms"])


def test_overhead_header_on_sse(chatd, fake):
    s = chatd({})
    resp, sse = stream_v1(s.client, {"message": "x", "session_id": "oh-sse"})
    assert sse is not None and sse.names()[-1] == "done"
    overhead_ms(resp)
    with s.client.stream("POST", "/chat-stream", json={"message": "y", "session_id": "oh-seed"}) as r:
        r.read()
    assert r.status_code == 200
    overhead_ms(r)


def test_overhead_excludes_provider_time(chatd, fake):
    s = chatd({})
    c = s.client
    t0 = time.monotonic()
    r = c.post("/v1/chat", json={"message": "slow " + directive({"ttft_ms": 500}), "session_id": "oh-slow"})
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert r.status_code == 200, r.text
    assert elapsed_ms >= 500
    assert overhead_ms(r) < 250, (r.headers["x-chatd-overhead-ms"], elapsed_ms)
    r = c.post("/chat", json={"message": "slow " + directive({"ttft_ms": 500}), "session_id": "oh-slow2"})
    assert r.status_code == 200
    assert overhead_ms(r) < 250, r.headers["x-chatd-overhead-ms"]
    resp, sse = stream_v1(c, {"message": "slow " + directive({"ttft_ms": 500}), "session_id": "oh-slow3"})
    assert sse is not None and sse.names()[-1] == "done"
    assert overhead_ms(resp) < 250


# ------------------------------------------------- the OpenAPI document


def test_openapi_documents_the_gate():
    """docs/openapi.json says what the tests above observe: 401 with WWW-Authenticate
    on every protected operation, 403 on admin ones, `security: []` on public ones,
    RateLimit-* on chat 200s and 429s, X-Chatd-Overhead-Ms on every response."""
    import json
    doc = json.loads((conftest.REPO / "docs" / "openapi.json").read_text())

    def deref(obj):
        for _ in range(8):
            if "$ref" not in obj:
                return obj
            node = doc
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj

    def op(method, path):
        templ = re.sub(r"/(auth-[sv])(?=/|$)", "/{session_id}", path)
        item = doc["paths"].get(templ)
        assert item and method.lower() in item, (method, path, templ)
        return item[method.lower()]

    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"bearerAuth": []}]
    problems = []
    for method, path, _, _ in PROTECTED:
        o = op(method, path)
        if o.get("security") == []:
            problems.append(f"{method} {path}: marked public")
        r401 = deref(o["responses"].get("401", {}))
        if "WWW-Authenticate" not in r401.get("headers", {}):
            problems.append(f"{method} {path}: no 401 with WWW-Authenticate")
        if path in ("/stats", "/v1/stats", "/metrics") and "403" not in o["responses"]:
            problems.append(f"{method} {path}: no 403")
        if path in ("/chat", "/chat-stream", "/v1/chat", "/v1/chat/stream", "/v1/chat/completions"):
            for st in ("200", "429"):
                hs = deref(o["responses"][st]).get("headers", {})
                missing = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} - set(hs)
                if missing:
                    problems.append(f"{method} {path} {st}: missing {sorted(missing)}")
            if "Retry-After" not in deref(o["responses"]["429"]).get("headers", {}):
                problems.append(f"{method} {path} 429: no Retry-After")
    for path in PUBLIC + ["/ui", "/ui/{file}", "/ui/lib/{file}"]:
        if doc["paths"][path]["get"].get("security") != []:
            problems.append(f"GET {path}: public but not `security: []`")
    for path, item in doc["paths"].items():
        for method, o in item.items():
            if not isinstance(o, dict):
                continue
            for st, r in o.get("responses", {}).items():
                if "X-Chatd-Overhead-Ms" not in deref(r).get("headers", {}):
                    problems.append(f"{method.upper()} {path} {st}: no X-Chatd-Overhead-Ms")
    types = set(doc["components"]["schemas"]["V1ErrorType"]["enum"])
    for t in ("rate_limited", "authentication_error", "permission_error", "context_length_exceeded",
              "idempotency_in_progress", "idempotency_key_reused"):
        if t not in types:
            problems.append(f"V1ErrorType lacks {t}")
    assert problems == []


def test_max_sessions_per_key(chatd):
    s = chatd({"AUTH_MODE": "keys", "MAX_SESSIONS_PER_KEY": "2"})
    _, one = create_key(s, "capped")
    _, two = create_key(s, "other-capped")
    c = s.client
    for sid in ("cap-a", "cap-b"):
        assert c.post("/v1/chat", json={"message": "hi", "session_id": sid}, headers=bearer(one)).status_code == 200
    r = c.post("/v1/chat", json={"message": "hi", "session_id": "cap-c"}, headers=bearer(one))
    assert r.status_code == 403 and r.json()["error"]["type"] == "session_limit_reached", r.text
    # Existing sessions keep working; another key has its own count.
    assert c.post("/v1/chat", json={"message": "again", "session_id": "cap-a"}, headers=bearer(one)).status_code == 200
    assert c.post("/v1/chat", json={"message": "hi", "session_id": "cap-x"}, headers=bearer(two)).status_code == 200
    # Deleting one frees a place.
    assert c.delete("/v1/sessions/cap-b", headers=bearer(one)).status_code == 204
    assert c.post("/v1/chat", json={"message": "hi", "session_id": "cap-c"}, headers=bearer(one)).status_code == 200
