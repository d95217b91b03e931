"""
test_retention.py: SESSION_TTL. The sweeper (worker 0, every TTL/4) deletes
exactly the sessions idle longer than the TTL: sessions used in the meantime
stay, the listing and both stats endpoints stay consistent with what is left,
and a session with a turn running is never deleted under it.

Idleness is wall-clock time here (the server reads its own clock), so these
tests wait: about 2.5 s and 2 s.
"""
import threading
import time

from helpers import directive, stream_v1

TTL_S = 2.0


def _chat(c, sid, msg="hi"):
    r = c.post("/v1/chat", json={"message": msg, "session_id": sid})
    assert r.status_code == 200, r.text
    return r.json()


def _all_sessions(c):
    out, cursor = {}, None
    while True:
        params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = c.get("/v1/sessions", params=params).json()
        for s in page["data"]:
            out[s["id"]] = s
        cursor = page["next_cursor"]
        if not cursor:
            return out


def _assert_consistent(c):
    """The listing, /v1/stats and /stats agree about what is stored."""
    sessions = _all_sessions(c)
    v1 = c.get("/v1/stats").json()
    seed = c.get("/stats").json()
    seed_list = {s["session_id"] for s in c.get("/sessions").json()["sessions"]}
    assert seed_list == set(sessions), (seed_list, set(sessions))
    n_msgs = sum(s["message_count"] for s in sessions.values())
    n_turns = sum(s["turn_count"] for s in sessions.values())
    assert v1["sessions"] == len(sessions), (v1, sorted(sessions))
    assert v1["messages"] == n_msgs, (v1, n_msgs)
    assert v1["turns"] == n_turns, (v1, n_turns)
    assert seed["total_sessions"] == len(sessions), seed
    assert seed["total_messages"] == n_msgs, seed
    return sessions


def test_sweeper_deletes_exactly_the_idle_sessions(chatd, fake):
    s = chatd({"SESSION_TTL": f"{int(TTL_S)}s"})
    c = s.client
    t0 = time.monotonic()
    for sid in ("old-1", "old-2", "old-3", "touched"):
        _chat(c, sid)
    _chat(c, "old-2", "a second turn, still long ago")
    assert set(_all_sessions(c)) == {"old-1", "old-2", "old-3", "touched"}
    _assert_consistent(c)

    # Well before the TTL: use one old session again, and start a new one.
    time.sleep(max(0.0, t0 + 1.2 - time.monotonic()))
    assert set(_all_sessions(c)) == {"old-1", "old-2", "old-3", "touched"}, "deleted before the TTL"
    _chat(c, "touched", "still here")
    _chat(c, "fresh")
    t_touch = time.monotonic()

    # The old ones go once idle > TTL (plus one sweep period); the others must stay.
    deadline = t0 + TTL_S + 1.0
    while time.monotonic() < deadline:
        left = set(_all_sessions(c))
        if not left & {"old-1", "old-2", "old-3"}:
            break
        time.sleep(0.05)
    now = time.monotonic()
    assert now - t_touch < TTL_S, "too slow to tell the sessions apart; the check below would be meaningless"
    left = _assert_consistent(c)
    assert set(left) == {"touched", "fresh"}, sorted(left)
    assert left["touched"]["turn_count"] == 2 and left["fresh"]["turn_count"] == 1
    # Gone for every endpoint, not only the listing.
    for sid in ("old-1", "old-2", "old-3"):
        assert c.get(f"/v1/sessions/{sid}").status_code == 404
        assert c.get(f"/history/{sid}").status_code == 404
    # A deleted id can be used again from scratch.
    assert _chat(c, "old-1", "born again")["turn_count"] == 1
    sweeps = [o for o in s.logs() if o.get("msg") == "retention sweep"]
    assert sum(o.get("sessions_deleted", 0) for o in sweeps) == 3, sweeps


def test_sweeper_skips_a_session_with_a_running_turn(chatd, fake):
    s = chatd({"SESSION_TTL": "1s"})
    c = s.client
    _chat(c, "busy")       # exists, then idle
    _chat(c, "idle")
    time.sleep(0.3)
    # A second turn on "busy" that runs far longer than the TTL.
    out = {}

    def run():
        out["resp"], out["sse"] = stream_v1(c, {"message": "slow " + directive({"ttft_ms": 2000}),
                                                "session_id": "busy"})

    th = threading.Thread(target=run)
    th.start()
    # Meanwhile the idle one is swept: the sweeper did run while the turn was in flight.
    deadline = time.monotonic() + 1.8
    while time.monotonic() < deadline and c.get("/v1/sessions/idle").status_code != 404:
        time.sleep(0.05)
    assert c.get("/v1/sessions/idle").status_code == 404, "the sweeper never deleted the idle session"
    assert c.get("/v1/sessions/busy").status_code == 200, "a session with a running turn was deleted"
    th.join(10)
    sse = out["sse"]
    assert sse is not None and sse.names()[-1] == "done", (out["resp"].status_code, sse and sse.events)
    assert sse.data("done")[0]["turn_count"] == 2
    busy = c.get("/v1/sessions/busy").json()
    assert busy["turn_count"] == 2 and busy["message_count"] == 4, busy
    msgs = c.get("/v1/sessions/busy/messages").json()["data"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    _assert_consistent(c)


def test_no_ttl_keeps_everything(chatd, fake):
    s = chatd({})
    _chat(s.client, "keep-1")
    time.sleep(0.3)
    assert s.client.get("/v1/sessions/keep-1").status_code == 200
    assert not [o for o in s.logs() if o.get("msg") == "retention sweep"]
