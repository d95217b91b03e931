"""
test_store_owner.py: one chatd server owns a SQLite file.

SQLite's turn locks live in the memory of the server process
(src/store/turn_locks.h), so a second server on the same file would not see
them: it is refused at start, with an error that says why. The command-line
tools (keys, export, import) still work beside the running server, and a new
server takes the file over as soon as the owner is gone, even after kill -9.
"""
import os
import subprocess
import threading

import pytest

import conftest
from conftest import ChatdServer
from helpers import echo
from reliability import kill9

pytestmark = pytest.mark.skipif(os.environ.get("CHATD_TEST_BACKEND", "sqlite") == "postgres",
                                reason="SQLite ownership; PostgreSQL is shared by many servers")


def _second_server(env, timeout=20):
    return subprocess.run([conftest.CHATD_BIN, "serve"], env=dict(env, PORT="0"), capture_output=True, text=True,
                          timeout=timeout)


def test_a_second_server_on_the_same_file_is_refused(chatd):
    s = chatd()
    r = s.client.post("/chat", json={"session_id": "own-1", "message": "hello"})
    assert r.status_code == 200, r.text
    p = _second_server(s.env)
    assert p.returncode != 0, p
    assert "in use by another chatd server" in p.stderr, p.stderr
    assert "PostgreSQL" in p.stderr, p.stderr
    # The owner is unharmed.
    r = s.client.post("/chat", json={"session_id": "own-1", "message": "again"})
    assert r.status_code == 200 and r.json()["response"] == echo("again"), r.text


def test_cli_tools_work_beside_the_server(chatd, tmp_path):
    s = chatd()
    assert s.client.post("/chat", json={"session_id": "own-cli", "message": "hi"}).status_code == 200
    out = tmp_path / "export.jsonl"
    p = subprocess.run([conftest.CHATD_BIN, "export", "--out", str(out)], env=s.env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p
    assert "own-cli" in out.read_text()
    p = subprocess.run([conftest.CHATD_BIN, "keys", "list"], env=s.env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p


def test_the_file_is_free_again_after_the_owner_dies(chatd, fake):
    s = chatd()  # the default LOCK_TTL is longer than TURN_TIMEOUT (15 min)
    fake.script(default={"ttft_ms": 3000})  # a turn holds its lock when the kill lands
    def slow_turn():
        try:
            s.client.post("/chat", json={"session_id": "own-kill", "message": "slow"}, timeout=10)
        except Exception:
            pass

    t = threading.Thread(target=slow_turn)
    t.start()
    fake.wait_requests(1)
    kill9(s)
    t.join(10)
    fake.script(default=None)
    s.start()  # the same file: taken over at once
    # The dead process's turn lock died with it (a lock row would say 409 for minutes).
    r = s.client.post("/chat", json={"session_id": "own-kill", "message": "after"})
    assert r.status_code == 200 and r.json()["response"] == echo("after"), r.text
    # And a second server is still refused while this one runs.
    p = _second_server(s.env)
    assert p.returncode != 0 and "in use by another chatd server" in p.stderr, p.stderr
