"""
`chatd export` / `chatd import`: moving a team's history between SQLite and
PostgreSQL (issue 6).

A SQLite database is built through a real chatd (API keys of both roles, one
revoked, one with its own rate limit; seed and /v1 turns, streamed and not;
a reset session; a reply cut by a client disconnect, kept `incomplete`; a
session made with authentication off; unicode; more sessions than one export
page), exported, and imported into another store. The copy must then look the
same through the API of a chatd running on it (sessions, messages, stats), per
key (`chatd keys list`, authentication with the same secrets, ownership), and
in a second export. A second import skips everything; malformed files stop
with exit status 1 and the line number.
"""
import json
import os
import shutil
import tempfile
import time

import httpx
import pytest

from helpers import directive
from pgfixtures import chatd_cli, create_key, pg_db, pg_server, requires_pg  # noqa: F401

BULK_SESSIONS = 205  # more than one export page (200 sessions)


def _auth(secret):
    return {"Authorization": f"Bearer {secret}"}


def _ok(resp):
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.json()


def snapshot(server, token):
    """Everything an admin sees through the API, message ids left out (an
    import numbers messages anew)."""
    c, h = server.client, _auth(token)
    sessions, cursor = [], None
    while True:
        params = {"limit": 37}
        if cursor:
            params["cursor"] = cursor
        body = _ok(c.get("/v1/sessions", params=params, headers=h))
        sessions += body["data"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    messages = {}
    for s in sessions:
        out, after = [], 0
        while True:
            body = _ok(c.get(f"/v1/sessions/{s['id']}/messages", params={"after": after, "limit": 100}, headers=h))
            out += body["data"]
            if not body["has_more"]:
                break
            after = body["data"][-1]["seq"]
        messages[s["id"]] = [{k: v for k, v in m.items() if k != "id"} for m in out]
        hist = _ok(c.get(f"/history/{s['id']}", headers=h))
        messages[s["id"] + "#seed"] = hist
    return {"sessions": sessions, "messages": messages, "stats": _ok(c.get("/v1/stats", headers=h)),
            "seed_stats": _ok(c.get("/stats", headers=h)), "seed_sessions": _ok(c.get("/sessions", headers=h))}


def read_export(path):
    """(header, body lines as dicts)."""
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    return lines[0], lines[1:]


def export(url, path):
    r = chatd_cli(["export", "--out", path], url)
    assert r.returncode == 0, r.stderr
    return read_export(path)


def import_(url, path, *extra):
    return chatd_cli(["import", "--in", path, *extra], url)


def summary(stdout):
    """Parses import's summary into {"keys": (imported, skipped), ...}."""
    out = {}
    for line in stdout.splitlines():
        kind, _, rest = line.partition(":")
        nums = [int(w) for w in rest.replace(",", " ").split() if w.isdigit()]
        out[kind.strip()] = tuple(nums)
    return out


def keys_list(url):
    r = chatd_cli(["keys", "list"], url)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ------------------------------------------------------------------ the source


class Source:
    pass


def _turn(srv, key, sid, msg, **extra):
    return _ok(srv.client.post("/v1/chat", json={"message": msg, "session_id": sid, **extra}, headers=_auth(key)))


def _cut_stream(srv, key, sid):
    """A streamed turn the client abandons after its first delta (kept as an
    incomplete reply under CANCEL_POLICY=keep)."""
    body = {"message": "tell me a long story " + directive({"reply_words": 60, "gap_ms": 40}), "session_id": sid}
    with srv.client.stream("POST", "/v1/chat/stream", json=body, headers=_auth(key)) as resp:
        assert resp.status_code == 200
        seen = b""
        for chunk in resp.iter_raw():
            seen += chunk
            if b"event: delta" in seen:
                break
    deadline = time.monotonic() + 10
    while True:
        r = srv.client.get(f"/v1/sessions/{sid}/messages", headers=_auth(key))
        if r.status_code == 200 and len(r.json()["data"]) == 2:
            return r.json()["data"]
        assert time.monotonic() < deadline, f"the cut turn was not committed: {r.status_code} {r.text}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def source(chatd_module, fake):
    d = tempfile.mkdtemp(prefix="chatd-export-src-")
    src = Source()
    src.dir = d
    src.url = f"sqlite:///{d}/src.db"
    k = src.keys = {
        "admin": create_key(src.url, "ops", role="admin"),
        "alice": create_key(src.url, "alice", rate_limit="500/minute"),
        "bob": create_key(src.url, "bob"),
        "old": create_key(src.url, "old"),
    }
    a, b, adm = k["alice"]["secret"], k["bob"]["secret"], k["admin"]["secret"]
    srv = chatd_module({"DATABASE_URL": src.url, "AUTH_MODE": "keys", "CANCEL_POLICY": "keep"})
    c = srv.client

    _turn(srv, a, "exp-a1", "first question", system_prompt="Be brief.")
    _turn(srv, a, "exp-a1", "second question")
    models = _ok(c.get("/v1/models", headers=_auth(a)))
    other = [m["id"] for m in models["data"] if m["available"] and m["id"] != models["default"]]
    _turn(srv, a, "exp-a1", "third question", **({"model": other[0]} if other else {}))
    with c.stream("POST", "/v1/chat/stream", json={"message": "streamed", "session_id": "exp-a-stream"},
                  headers=_auth(a)) as resp:
        assert resp.status_code == 200
        assert b"event: done" in resp.read()
    src.unicode = "héllo wörld, 你好 🌍 \"quoted\" back\\slash\nnew line\ttab \u2028 end"
    _turn(srv, a, "exp-uni", src.unicode, system_prompt="Réponds en français 🇫🇷")
    _turn(srv, a, "exp-uni", "encore: ñ ß ø ∑ 𝔘")
    _cut_stream(srv, a, "exp-cut")

    for msg in ("seed one", "seed two"):
        _ok(c.post("/chat", json={"message": msg, "session_id": "exp-b1"}, headers=_auth(b)))
    r = c.post("/chat-stream", json={"message": "seed streamed", "session_id": "exp-b2"}, headers=_auth(b))
    assert r.status_code == 200 and "seed streamed" in r.text
    _turn(srv, b, "exp-reset", "before reset 1")
    _turn(srv, b, "exp-reset", "before reset 2")
    assert _ok(c.post("/v1/sessions/exp-reset/reset", headers=_auth(b)))["previous_turns"] == 2
    _turn(srv, b, "exp-reset", "after reset")
    _turn(srv, k["old"]["secret"], "exp-old", "from a key revoked later")
    for i in range(BULK_SESSIONS):
        _turn(srv, adm, f"exp-bulk-{i:03d}", f"bulk {i}")
    assert srv.stop() == 0

    # A session made with authentication off has no owner.
    srv2 = chatd_module({"DATABASE_URL": src.url, "AUTH_MODE": "none"})
    _ok(srv2.client.post("/v1/chat", json={"message": "anonymous", "session_id": "exp-anon"}))
    assert srv2.stop() == 0
    r = chatd_cli(["keys", "revoke", "old"], src.url)
    assert r.returncode == 0, r.stderr

    srv3 = chatd_module({"DATABASE_URL": src.url, "AUTH_MODE": "keys"})
    src.snapshot = snapshot(srv3, adm)
    assert srv3.stop() == 0
    src.n_sessions = len(src.snapshot["sessions"])
    assert src.n_sessions == BULK_SESSIONS + 9
    src.keys_list = keys_list(src.url)
    src.export = os.path.join(d, "src.jsonl")
    src.header, src.body = export(src.url, src.export)
    yield src
    shutil.rmtree(d, ignore_errors=True)


def _target_url(request, kind, tmpdir):
    if kind == "sqlite":
        return f"sqlite:///{tmpdir}/copy.db"
    return request.getfixturevalue("pg_db")


def _start(chatd, url):
    return chatd({"DATABASE_URL": url, "AUTH_MODE": "keys"})


# ------------------------------------------------------------------- the tests


def test_export_file_carries_everything(source):
    h, body = source.header, source.body
    assert h["format"] == "chatd-export" and h["version"] == 1 and h["schema_version"] >= 3
    assert isinstance(h["exported_at"], int)
    end = body[-1]
    keys = [x for x in body if x["type"] == "key"]
    sessions = [x for x in body if x["type"] == "session"]
    assert [x["type"] for x in body] == ["key"] * 4 + ["session"] * source.n_sessions + ["end"]
    assert end == {"type": "end", "keys": 4, "sessions": source.n_sessions,
                   "messages": sum(len(s["messages"]) for s in sessions)}
    text = open(source.export, encoding="utf-8").read()
    by_name = {x["name"]: x for x in keys}
    for name, key in source.keys.items():
        assert key["secret"] not in text  # only hashes
        assert by_name[key["name"]]["id"] == key["id"]
        assert len(by_name[key["name"]]["hash"]) == 64
    assert by_name["old"]["revoked_at"] > 0 and by_name["alice"]["revoked_at"] == 0
    assert by_name["alice"]["rate_limit"] == "500/minute" and by_name["bob"]["rate_limit"] is None
    assert by_name["old"]["turn_count"] == 1 and by_name["ops"]["turn_count"] == BULK_SESSIONS
    assert by_name["alice"]["usage"]["output_tokens"] > 0 and by_name["alice"]["cost_micros"] > 0

    by_id = {s["id"]: s for s in sessions}
    assert by_id["exp-anon"]["owner"] is None
    assert by_id["exp-a1"]["owner"] == source.keys["alice"]["id"]
    assert by_id["exp-a1"]["system_prompt"] == "Be brief."
    uni = by_id["exp-uni"]
    assert uni["messages"][0]["content"] == source.unicode
    assert uni["system_prompt"] == "Réponds en français 🇫🇷"
    assert "\u2028" in text or "\\u2028" in text
    cut = by_id["exp-cut"]["messages"]
    assert [m["status"] for m in cut] == ["complete", "incomplete"]
    reset = by_id["exp-reset"]
    assert reset["turn_count"] == 1 and [m["seq"] for m in reset["messages"]] == [1, 2]
    assert reset["messages"][0]["content"] == "after reset"
    # Usage totals survive the reset: three turns' worth, more than the one kept.
    assert reset["usage"]["output_tokens"] > reset["messages"][1]["usage"]["output_tokens"]
    a1 = by_id["exp-a1"]["messages"]
    assert [m["role"] for m in a1] == ["user", "assistant"] * 3
    assert a1[1]["model"] and a1[0]["model"] is None and a1[1]["stop_reason"] == "end_turn"
    assert all(len(line.encode()) < 1 << 20 for line in text.split("\n"))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=requires_pg)])
def test_import_gives_the_same_history(source, request, kind, tmp_path):
    url = _target_url(request, kind, tmp_path)
    chatd = request.getfixturevalue("chatd")  # after pg_db: stopped before its database is dropped
    r = import_(url, source.export)
    assert r.returncode == 0, r.stderr
    n_msgs = source.body[-1]["messages"]
    assert summary(r.stdout) == {"keys": (4, 0), "sessions": (source.n_sessions, 0), "messages": (n_msgs,)}, r.stdout

    # Per key: same ids, names, roles, statuses, turns and cost; a second
    # export is the first one line for line.
    assert keys_list(url) == source.keys_list
    header, body = export(url, str(tmp_path / "copy.jsonl"))
    assert header["format"] == "chatd-export"
    assert body == source.body

    srv = _start(chatd, url)
    assert snapshot(srv, source.keys["admin"]["secret"]) == source.snapshot

    # The same secrets authenticate, with the same ownership and revocation.
    alice, bob = _auth(source.keys["alice"]["secret"]), _auth(source.keys["bob"]["secret"])
    assert srv.client.get("/v1/sessions/exp-a1", headers=alice).status_code == 200
    assert srv.client.get("/v1/sessions/exp-b1", headers=alice).status_code == 404
    ids = {s["id"] for s in _ok(srv.client.get("/v1/sessions", headers=bob))["data"]}
    assert ids == {"exp-b1", "exp-b2", "exp-reset"}
    r = srv.client.get("/v1/sessions", headers=_auth(source.keys["old"]["secret"]))
    assert r.status_code == 401
    assert srv.client.get("/v1/stats", headers=alice).status_code == 403

    # A re-run skips everything and changes nothing.
    r = import_(url, source.export)
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout) == {"keys": (0, 4), "sessions": (0, source.n_sessions), "messages": (0,)}, r.stdout
    assert snapshot(srv, source.keys["admin"]["secret"]) == source.snapshot

    # The conversation goes on where it was, with new, larger message ids.
    before = _ok(srv.client.get("/v1/sessions/exp-a1/messages", headers=alice))["data"]
    turn = _turn(srv, source.keys["alice"]["secret"], "exp-a1", "fourth question")
    assert turn["turn_count"] == 4
    after = _ok(srv.client.get("/v1/sessions/exp-a1/messages", headers=alice))["data"]
    assert [m["seq"] for m in after] == list(range(1, 9))
    assert int(after[-1]["id"].split("_")[1]) > max(int(m["id"].split("_")[1]) for m in before)
    # The provider got the imported history with the new turn.
    sent = request.getfixturevalue("fake").requests()[-1]["body"]["messages"]
    assert [_text(m["content"]) for m in sent] == [m["content"] for m in after[:-1]]
    stats = _ok(srv.client.get("/v1/stats", headers=_auth(source.keys["admin"]["secret"])))
    assert stats["messages"] == source.snapshot["stats"]["messages"] + 2


def _text(content):
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


@requires_pg
def test_postgres_to_sqlite_round_trip(source, pg_db, chatd, tmp_path):
    r = import_(pg_db, source.export)
    assert r.returncode == 0, r.stderr
    _, from_pg = export(pg_db, str(tmp_path / "pg.jsonl"))
    assert from_pg == source.body
    back = f"sqlite:///{tmp_path}/back.db"
    r = import_(back, str(tmp_path / "pg.jsonl"))
    assert r.returncode == 0, r.stderr
    _, body = export(back, str(tmp_path / "back.jsonl"))
    assert body == source.body
    assert keys_list(back) == source.keys_list
    srv = _start(chatd, back)
    assert snapshot(srv, source.keys["admin"]["secret"]) == source.snapshot


def test_stdout_and_stdin(source, tmp_path):
    r = chatd_cli(["export"], source.url)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.rstrip("\n").split("\n")]
    assert lines[1:] == source.body
    assert "exported 4 keys" in r.stderr
    url = f"sqlite:///{tmp_path}/stdin.db"
    r = chatd_cli(["import"], url, input=r.stdout)
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout)["sessions"] == (source.n_sessions, 0)


def test_export_to_an_unwritable_place_fails(source, tmp_path):
    r = chatd_cli(["export", "--out", str(tmp_path / "no" / "such" / "dir.jsonl")], source.url)
    assert r.returncode == 1
    assert "cannot open" in r.stderr


def _lines(source):
    with open(source.export, encoding="utf-8") as f:
        # Not splitlines(): it would also split at U+2028 inside a message.
        return f.read().rstrip("\n").split("\n")


def _session_line(source, sid):
    for i, line in enumerate(_lines(source)):
        if f'"id":"{sid}"' in line and '"type":"session"' in line:
            return i
    raise AssertionError(sid)


def _mutate_field(source, sid, field, value):
    lines = _lines(source)
    i = _session_line(source, sid)
    obj = json.loads(lines[i])
    obj[field] = value
    lines[i] = json.dumps(obj, ensure_ascii=False)
    return lines, i + 1


def _case_bad_json(source):
    lines = _lines(source)
    lines[5] = lines[5][: len(lines[5]) // 2]
    return lines, 6, "not valid JSON"


def _case_not_an_export(source):
    return ['{"hello":"world"}'] + _lines(source)[1:], 1, "not a chatd export"


def _case_newer_version(source):
    lines = _lines(source)
    lines[0] = lines[0].replace('"version":1', '"version":2')
    return lines, 1, "newer"


def _case_wrong_type(source):
    lines, n = _mutate_field(source, "exp-a1", "turn_count", "3")
    return lines, n, '"turn_count" must be an integer'


def _case_count_mismatch(source):
    lines, n = _mutate_field(source, "exp-uni", "message_count", 3)
    return lines, n, "message_count is 3 but 4 messages follow"


def _case_bad_message(source):
    lines = _lines(source)
    i = _session_line(source, "exp-b1")
    obj = json.loads(lines[i])
    obj["messages"][1]["role"] = "system"
    lines[i] = json.dumps(obj)
    return lines, i + 1, "refused by the store"


def _case_unknown_type(source):
    lines = _lines(source)
    lines.insert(3, '{"type":"widget"}')
    return lines, 4, 'unknown line type "widget"'


def _case_key_after_session(source):
    lines = _lines(source)
    key = lines.pop(1)
    lines.insert(len(lines) - 1, key)
    return lines, len(lines) - 1, "key lines must come before the session lines"


def _case_truncated(source):
    lines = _lines(source)[:-1]
    return lines, None, "cut short"


def _case_end_counts(source):
    lines = _lines(source)
    lines[-1] = lines[-1].replace('"keys":4', '"keys":5')
    return lines, len(lines), "the end line counts 5 keys"


def _case_after_end(source):
    lines = _lines(source)
    return lines + [lines[1]], len(lines) + 1, "data after the end line"


def _case_not_object(source):
    lines = _lines(source)
    lines[2] = "[1,2,3]"
    return lines, 3, "not a JSON object"


def _case_bad_hash(source):
    lines = _lines(source)
    obj = json.loads(lines[2])
    obj["hash"] = obj["hash"].upper()
    lines[2] = json.dumps(obj)
    return lines, 3, "refused by the store"


def _case_nul_byte(source):
    lines = _lines(source)
    lines[-1] = lines[-1][:-1] + "\0}"
    return lines, len(lines), "NUL byte"


CASES = [_case_nul_byte, _case_bad_json, _case_not_an_export, _case_newer_version, _case_wrong_type, _case_count_mismatch,
         _case_bad_message, _case_unknown_type, _case_key_after_session, _case_truncated, _case_end_counts,
         _case_after_end, _case_not_object, _case_bad_hash]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[6:] for c in CASES])
def test_malformed_input_stops_with_the_line_number(source, tmp_path, case):
    lines, line_no, fragment = case(source)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = import_(f"sqlite:///{tmp_path}/bad.db", str(path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert fragment in r.stderr, r.stderr
    if line_no is not None:
        assert f"line {line_no}: " in r.stderr, r.stderr
    assert "before stopping" in r.stderr


def test_overlong_line_is_refused_clearly(source, tmp_path):
    path = tmp_path / "long.jsonl"
    lines = _lines(source)
    big = next(i for i, line in enumerate(lines) if len(line) > 1100)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = import_(f"sqlite:///{tmp_path}/long.db", str(path), "--max-line-bytes", "1024")
    assert r.returncode == 1
    assert f"line {big + 1}: longer than 1024 bytes" in r.stderr, r.stderr
    r = import_(f"sqlite:///{tmp_path}/long.db", str(path), "--max-line-bytes", "12")
    assert r.returncode == 2 and "--max-line-bytes" in r.stderr


def test_stopped_import_resumes_safely(source, tmp_path):
    """An import stopped by a bad line keeps what it imported; the fixed file
    then imports the rest and skips the rest."""
    url = f"sqlite:///{tmp_path}/resume.db"
    lines = _lines(source)
    stop_at = _session_line(source, "exp-b1")
    bad = list(lines)
    bad[stop_at] = "{broken"
    (tmp_path / "bad.jsonl").write_text("\n".join(bad) + "\n", encoding="utf-8")
    r = import_(url, str(tmp_path / "bad.jsonl"))
    assert r.returncode == 1 and f"line {stop_at + 1}: " in r.stderr
    done_before = stop_at - 1 - 4  # header and keys come first
    assert f"sessions: {done_before} imported" in r.stderr, r.stderr
    r = import_(url, source.export)
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout)["sessions"] == (source.n_sessions - done_before, done_before)
    assert summary(r.stdout)["keys"] == (0, 4)
    _, body = export(url, str(tmp_path / "resumed.jsonl"))
    assert body == source.body


def test_crlf_and_blank_lines_are_accepted(source, tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(("\r\n".join(_lines(source)) + "\r\n\r\n").encode())
    r = import_(f"sqlite:///{tmp_path}/crlf.db", str(path))
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout)["sessions"] == (source.n_sessions, 0)
