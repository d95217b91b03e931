"""
Identifiers are never cut: two API keys imported with `chatd import` whose
255-byte ids differ only in their last byte (so they share every shorter
prefix: 63 bytes, where the caller's identity used to cut them, and the 155
bytes a rate-limit key used to keep) stay two keys everywhere: sessions and
their ownership, the per-key session cap, rate limits, Idempotency-Key records
and usage. What chatd cannot hold (a key id or session owner over 255 bytes, a
session id the API cannot address) is refused at import with its line number.
"""
import hashlib
import json
import secrets

import pytest

from pgfixtures import chatd_cli

STORE_ID_MAX = 255
COMMON = "key_" + "long-team-id." * 19  # 251 bytes: every truncation point is inside it
assert len(COMMON) == 251


def usage():
    return {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0}


def key_line(key_id, name, secret):
    return {"type": "key", "id": key_id, "name": name, "hash": hashlib.sha256(secret.encode()).hexdigest(),
            "role": "user", "rate_limit": None, "created_at": 1700000000000, "revoked_at": 0, "last_used_at": 0,
            "turn_count": 0, "usage": usage(), "cost_micros": 0}


def session_line(sid, owner):
    return {"type": "session", "id": sid, "owner": owner, "system_prompt": None, "model": None,
            "created_at": 1700000000000, "updated_at": 1700000000000, "turn_count": 0, "message_count": 0,
            "usage": usage(), "cost_micros": 0, "messages": []}


def write_export(path, keys, sessions=()):
    lines = [{"format": "chatd-export", "version": 1, "exported_at": 1700000000000, "schema_version": 1}]
    lines += list(keys) + list(sessions)
    lines.append({"type": "end", "keys": len(keys), "sessions": len(sessions), "messages": 0})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def import_(url, path):
    return chatd_cli(["import", "--in", path], url)


def bearer(secret, **extra):
    return {"Authorization": f"Bearer {secret}", **extra}


def keys_turns(url):
    """{key id: turns} from `chatd keys list` (ID NAME ROLE STATUS CREATED TURNS COST_USD)."""
    r = chatd_cli(["keys", "list"], url)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines()[1:]:
        f = line.split()
        out[f[0]] = int(f[5])
    return out


def test_keys_sharing_a_long_prefix_stay_separate(chatd, fake, tmp_path):
    ids = {"a": COMMON + "-1-a", "b": COMMON + "-1-b"}
    assert all(len(i) == STORE_ID_MAX for i in ids.values()) and ids["a"][:-1] == ids["b"][:-1]
    sec = {k: "chatd_" + secrets.token_hex(24) for k in ids}
    url = f"sqlite:///{tmp_path}/ids.db"
    path = write_export(tmp_path / "keys.jsonl", [key_line(ids[k], "team-" + k, sec[k]) for k in ids])
    r = import_(url, path)
    assert r.returncode == 0, r.stderr
    assert keys_turns(url) == {ids["a"]: 0, ids["b"]: 0}

    s = chatd({"DATABASE_URL": url, "AUTH_MODE": "keys", "MAX_SESSIONS_PER_KEY": "2", "RATE_LIMIT": "4/minute"})
    c = s.client

    def chat(k, sid, msg="hello", **headers):
        return c.post("/v1/chat", json={"message": msg, "session_id": sid}, headers=bearer(sec[k], **headers))

    # The same Idempotency-Key on both keys, with different bodies: two records,
    # neither a replay of the other nor a "reused with another body" error.
    ra = chat("a", "la-1", "from a", **{"Idempotency-Key": "shared-idem-key"})
    assert ra.status_code == 200, ra.text
    rb = chat("b", "lb-1", "from b", **{"Idempotency-Key": "shared-idem-key"})
    assert rb.status_code == 200, rb.text
    assert rb.json()["session_id"] == "lb-1" and "idempotent-replayed" not in rb.headers, rb.headers
    assert "from b" in rb.json()["response"]

    # The session cap counts per key: a has 2 after la-2, b still has room.
    assert chat("a", "la-2").status_code == 200
    r = chat("a", "la-3")
    assert r.status_code == 403 and r.json()["error"]["type"] == "session_limit_reached", r.text
    assert chat("b", "lb-2").status_code == 200

    # Ownership: each key sees its own sessions only.
    listed = {k: {x["id"] for x in c.get("/v1/sessions", headers=bearer(sec[k])).json()["data"]} for k in ids}
    assert listed == {"a": {"la-1", "la-2"}, "b": {"lb-1", "lb-2"}}
    assert c.get("/v1/sessions/la-1", headers=bearer(sec["b"])).status_code == 404
    assert c.get("/v1/sessions/lb-1", headers=bearer(sec["a"])).status_code == 404
    assert c.get("/v1/sessions/la-1", headers=bearer(sec["a"])).json()["turn_count"] == 1

    # Rate limits: a has made 4 chat requests (its 5th is refused), b only 2.
    assert chat("a", "la-1").status_code == 200
    r = chat("a", "la-1")
    assert r.status_code == 429, r.text
    assert chat("b", "lb-1").status_code == 200

    # Usage: each key is charged its own turns (a: la-1 twice, la-2; b: lb-1 twice, lb-2).
    assert keys_turns(url) == {ids["a"]: 3, ids["b"]: 3}
    # The log names each key by its whole id.
    logged = {o.get("key") for o in s.request_logs() if o.get("path") == "/v1/chat"}
    assert logged == set(ids.values()), logged


def test_what_chatd_cannot_hold_is_refused_at_import_with_the_line_number(tmp_path):
    url = f"sqlite:///{tmp_path}/refused.db"
    ok_id = COMMON + "-ok"
    too_long = COMMON + "-2-lg"  # 256 bytes
    assert len(too_long) == STORE_ID_MAX + 1
    path = write_export(tmp_path / "k.jsonl", [key_line(ok_id, "ok", "s1"), key_line(too_long, "long", "s2")])
    r = import_(url, path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "line 3: " in r.stderr and '"id" is 256 bytes: an API key id is 1 to 255 bytes' in r.stderr, r.stderr

    path = write_export(tmp_path / "o.jsonl", [key_line(ok_id, "ok", "s1")],
                        [session_line("fine-1", ok_id), session_line("owner-too-long", too_long)])
    r = import_(f"sqlite:///{tmp_path}/refused2.db", path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "line 4: " in r.stderr and '"owner" is 256 bytes' in r.stderr, r.stderr

    for sid, why in (("s" * 129, "129 bytes"), ("has space", "9 bytes"), ("x" * 255, "255 bytes")):
        path = write_export(tmp_path / "s.jsonl", [], [session_line("fine-2", None), session_line(sid, None)])
        r = import_(f"sqlite:///{tmp_path}/refused3.db", path)
        assert r.returncode == 1, (sid, r.stdout, r.stderr)
        assert "line 3: " in r.stderr and why in r.stderr and "not a session id chatd can serve" in r.stderr, \
            r.stderr

    # The longest ids that fit are taken whole.
    path = write_export(tmp_path / "max.jsonl", [key_line(ok_id + "x" * (STORE_ID_MAX - len(ok_id)), "max", "s3")],
                        [session_line("s" * 128, ok_id + "x" * (STORE_ID_MAX - len(ok_id)))])
    r = import_(f"sqlite:///{tmp_path}/max.db", path)
    assert r.returncode == 0, r.stderr


def test_keys_create_refuses_a_name_longer_than_the_store_holds(tmp_path):
    url = f"sqlite:///{tmp_path}/names.db"
    r = chatd_cli(["keys", "create", "--name", "n" * (STORE_ID_MAX + 1)], url)
    assert r.returncode == 2 and "--name is 256 bytes, longer than 255" in r.stderr, r.stderr
    r = chatd_cli(["keys", "create", "--name", "n" * STORE_ID_MAX], url)
    assert r.returncode == 0, r.stderr
