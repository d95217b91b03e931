#!/usr/bin/python3
"""Long-session phase of bench/run.sh: one session, many turns, one at a time.

    long_session.py --url http://127.0.0.1:PORT --turns 500 --bytes 2048 --out FILE [--timeout S]
                    [--chatd-pid PID] [--fake-pid PID]

Every turn is POST /chat {"message", "session_id"} on one keep-alive
connection, with a message of about --bytes bytes (distinct words per turn, so
nothing can be deduplicated); the fake echoes it, so the history grows by about
twice that per turn. Latency is the whole turn, on the monotonic clock. The
result compares the median of the first ten turns (turn 5 is their middle) with
the median of the last ten (turns 491-500 of 500): a turn's cost should not
depend on how long the session already is (issue 15 asks for at most 1.3x).

A turn's latency also holds the provider's share, which grows with the
session as long as the history fits the context window (the fake parses a
request that grows by ~4 KB a turn). chatd's own share is measured apart: with
--chatd-pid, the CPU time chatd's threads spent on each turn (the sum of
/proc/PID/task/*/schedstat, nanoseconds, read before and after the turn: the
turns run one at a time, so nothing else runs in chatd meanwhile), and the
X-Chatd-Overhead-Ms header; with --fake-pid, the fake's CPU time per turn too.

The phase is bounded: after --timeout seconds no new turn starts, and the
result says how many turns were done. A non-200 answer stops the phase and is
reported (status and the start of the body).
"""
import argparse
import glob
import http.client
import json
import statistics
import sys
import time
import uuid


def message(turn, size):
    head = "turn %d of the long session:" % turn
    words, n = [head], len(head)
    k = 0
    while n < size:
        w = "w%d-%d" % (turn, k)
        words.append(w)
        n += len(w) + 1
        k += 1
    return " ".join(words)


def cpu_ns(pid):
    """CPU time of every thread of pid so far, in ns (0 when unknown)."""
    if not pid:
        return 0
    total = 0
    for f in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def med(xs):
    return round(statistics.median(xs), 3) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--turns", type=int, default=500)
    ap.add_argument("--bytes", type=int, default=2048)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chatd-pid", type=int, default=0)
    ap.add_argument("--fake-pid", type=int, default=0)
    a = ap.parse_args()

    host, port = a.url.replace("http://", "").rstrip("/").split(":")
    sid = "long-" + uuid.uuid4().hex[:12]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    lat_ms, chatd_cpu_ms, fake_cpu_ms, overhead_ms, error = [], [], [], [], None
    t_start = time.monotonic()
    for turn in range(1, a.turns + 1):
        if time.monotonic() - t_start > a.timeout:
            error = "time limit of %.0f s reached after %d turns" % (a.timeout, turn - 1)
            break
        body = json.dumps({"message": message(turn, a.bytes), "session_id": sid})
        c0, f0 = cpu_ns(a.chatd_pid), cpu_ns(a.fake_pid)
        t0 = time.monotonic()
        try:
            conn.request("POST", "/chat", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            error = "turn %d: %s" % (turn, e)
            break
        dt = (time.monotonic() - t0) * 1000.0
        c1, f1 = cpu_ns(a.chatd_pid), cpu_ns(a.fake_pid)
        if resp.status != 200 or b'"response"' not in data:
            error = "turn %d: status %d: %s" % (turn, resp.status, data[:300].decode("utf-8", "replace"))
            break
        lat_ms.append(dt)
        if a.chatd_pid:
            chatd_cpu_ms.append((c1 - c0) / 1e6)
        if a.fake_pid:
            fake_cpu_ms.append((f1 - f0) / 1e6)
        oh = resp.getheader("X-Chatd-Overhead-Ms")
        if oh is not None:
            try:
                overhead_ms.append(float(oh))
            except ValueError:
                pass
    conn.close()

    w = a.window
    done = len(lat_ms)
    first = statistics.median(lat_ms[:w]) if done >= w else None
    last = statistics.median(lat_ms[-w:]) if done >= 2 * w else None
    per50 = []
    for i in range(0, done, 50):
        chunk = lat_ms[i:i + 50]
        per50.append({"turns": "%d-%d" % (i + 1, i + len(chunk)), "median_ms": round(statistics.median(chunk), 3)})
    res = {
        "turns_requested": a.turns,
        "turns_done": done,
        "message_bytes": a.bytes,
        "session_id": sid,
        "error": error,
        "window": w,
        "first_window": "1-%d" % w,
        "last_window": "%d-%d" % (done - w + 1, done),
        "median_first_ms": round(first, 3) if first is not None else None,
        "median_last_ms": round(last, 3) if last is not None else None,
        "ratio_last_over_first": round(last / first, 3) if first and last is not None else None,
        "wall_s": round(time.monotonic() - t_start, 3),
        "median_per_50_turns": per50,
        "latency_ms": [round(x, 3) for x in lat_ms],
    }
    # chatd's own share, and the provider's (the fake), first and last window.
    for key, xs in (("chatd_cpu_ms", chatd_cpu_ms), ("fake_cpu_ms", fake_cpu_ms), ("overhead_ms", overhead_ms)):
        if len(xs) >= 2 * w:
            f_, l_ = med(xs[:w]), med(xs[-w:])
            res[key] = {"median_first": f_, "median_last": l_,
                        "ratio_last_over_first": round(l_ / f_, 3) if f_ else None,
                        "per_turn": [round(x, 4) for x in xs]}
    with open(a.out, "w") as f:
        json.dump(res, f)
        f.write("\n")
    print("bench: long session: %d turns, median turns %s %.2f ms, turns %s %s ms, ratio %s%s"
          % (done, res["first_window"], first or 0, res["last_window"],
             "%.2f" % last if last is not None else "-", res["ratio_last_over_first"],
             ("; " + error) if error else ""), file=sys.stderr)
    if "chatd_cpu_ms" in res:
        c = res["chatd_cpu_ms"]
        print("bench: long session: chatd CPU per turn %s ms -> %s ms (ratio %s)"
              % (c["median_first"], c["median_last"], c["ratio_last_over_first"]), file=sys.stderr)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
