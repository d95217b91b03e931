#!/usr/bin/python3
"""
run_abort_paths.py: chatd under valgrind (memcheck, full leak check) driven
through its abort paths; fails unless valgrind reports zero errors and nothing
definitely or indirectly lost.

    tests/valgrind/run_abort_paths.py [--chatd build/chatd] [--keep-log]

The paths: client disconnect before the first token, mid-stream (SSE and
/chat-stream) and during a non-streaming call; provider reset mid-stream;
provider 529 (retried, then exhausted; and retried, then success); a provider
stall ended by PROVIDER_IDLE_TIMEOUT; an Idempotency-Key replay and a
cancelled request with a key; then SIGTERM with a stream still running past
DRAIN_TIMEOUT (the shutdown abort). Each step checks at the fake provider that
the path was really taken. WORKERS=1; about 20-40 s on a small machine.

Exit status: 0 clean, 1 a leak/error or a failed step, 77 valgrind missing.
Uses only the standard library (and the repo's fake provider, via node).
"""
import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(REPO, "tests", "fake_llm", "server.mjs")
START_TIMEOUT = 60.0


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def lines_of(pipe, sink, q):
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        sink.append(line)
        q.put(line)
    q.put(None)


def wait_line(q, pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            raise Failure(f"{what}: not seen within {timeout} s")
        r = pred(line)
        if r:
            return r


# ---------------------------------------------------------------- http bits


def http_json(port, method, path, body=None, headers=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def raw_post(port, path, body, headers=None):
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n")
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head.encode() + b"\r\n" + data)
    return s


def read_until(s, pred, timeout=30):
    buf = b""
    deadline = time.monotonic() + timeout
    while not pred(buf):
        check(time.monotonic() < deadline, f"timed out reading; got {buf[-300:]!r}")
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(65536)
        check(chunk, f"connection closed early; got {buf[-300:]!r}")
        buf += chunk
    return buf


def read_all(s, timeout=30):
    buf = b""
    s.settimeout(timeout)
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return buf
        if not chunk:
            return buf
        buf += chunk


def directive(scen):
    return "[[fake:" + json.dumps(scen, separators=(",", ":")) + "]]"


class Fake:
    def __init__(self):
        self.out = []
        q = queue.Queue()
        self.proc = subprocess.Popen([shutil.which("node") or "/usr/bin/node", FAKE, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        threading.Thread(target=lines_of, args=(self.proc.stdout, self.out, q), daemon=True).start()
        self.port = wait_line(q, lambda l: l.startswith("LISTENING ") and int(l.split()[1]), 15, "fake LISTENING")

    def control(self, method, path, body=None):
        st, _, raw = http_json(self.port, method, path, body)
        check(st == 200, f"fake {path}: {st} {raw[:200]!r}")
        return json.loads(raw)

    def reset(self):
        self.control("POST", "/_fake/reset", {})

    def script(self, default=None, queue_=None):
        self.control("POST", "/_fake/script", {"default": default, "queue": queue_ or []})

    def requests(self):
        return [q for q in self.control("GET", "/_fake/requests")["requests"] if q["path"] == "/v1/messages"]

    def wait(self, pred, timeout=30, what="fake state"):
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.requests()
            if pred(reqs):
                return reqs
            check(time.monotonic() < deadline, f"{what}: {[(q['outcome']) for q in reqs]}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ----------------------------------------------------------------- the paths


def step_disconnect_before_first_token(port, fake):
    s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-1", "message": "a " + directive({"ttft_ms": 20000})})
    read_until(s, lambda b: b"event: start" in b)
    fake.wait(lambda rs: len(rs) == 1, what="request at the fake")
    s.close()
    fake.wait(lambda rs: rs[0]["outcome"] == "client_closed", what="abort before the first token")


def step_disconnect_mid_stream(port, fake):
    s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-2",
                                           "message": "b " + directive({"gap_ms": 200, "reply_words": 200})})
    read_until(s, lambda b: b.count(b"event: delta") >= 2)
    s.close()
    fake.wait(lambda rs: rs and rs[0]["outcome"] == "client_closed", what="abort mid-stream")


def step_disconnect_seed_stream(port, fake):
    s = raw_post(port, "/chat-stream", {"session_id": "vg-3",
                                        "message": "c " + directive({"gap_ms": 200, "reply_words": 200})})
    read_until(s, lambda b: b"w2 " in b)
    s.close()
    fake.wait(lambda rs: rs and rs[0]["outcome"] == "client_closed", what="abort of /chat-stream")


def step_disconnect_non_streaming(port, fake):
    s = raw_post(port, "/v1/chat", {"session_id": "vg-4", "message": "d " + directive({"ttft_ms": 20000})})
    fake.wait(lambda rs: len(rs) == 1, what="request at the fake")
    time.sleep(0.2)
    s.close()
    fake.wait(lambda rs: rs[0]["outcome"] == "client_closed", what="abort of a non-streaming call")


def step_provider_reset(port, fake):
    s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-5",
                                           "message": "e f g h " + directive({"fault": "reset", "after": 2})})
    raw = read_all(s)
    s.close()
    check(b"event: error" in raw, f"no error event after a provider reset: {raw[-300:]!r}")


def step_provider_529(port, fake):
    fake.script(default={"status": 529})
    st, _, body = http_json(port, "POST", "/v1/chat", {"session_id": "vg-6", "message": "x"})
    check(st == 503, f"529 exhausted: {st} {body[:200]!r}")
    check(len(fake.requests()) == 2, "PROVIDER_MAX_RETRIES=1: two attempts expected")
    fake.reset()
    fake.script(queue_=[{"status": 529}])
    s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-6", "message": "y"})
    raw = read_all(s)
    s.close()
    check(b"event: done" in raw, f"529 then success: {raw[-300:]!r}")


def step_provider_idle_timeout(port, fake):
    s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-7",
                                           "message": "i j k " + directive({"fault": "stall", "after": 1})})
    raw = read_all(s)
    s.close()
    check(b"provider_timeout" in raw, f"idle timeout: {raw[-300:]!r}")


def step_idempotency(port, fake):
    h = {"Idempotency-Key": "vg-key-1"}
    body = {"session_id": "vg-8", "message": "once"}
    for _ in range(2):
        st, headers, raw = http_json(port, "POST", "/v1/chat", body, h)
        check(st == 200, f"idempotent call: {st} {raw[:200]!r}")
    check(len(fake.requests()) == 1, "the replay called the provider")
    s = raw_post(port, "/v1/chat/stream", body, h)
    check(b"event: done" in read_all(s), "stream replay")
    s.close()
    s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-9", "message": "l " +
                                           directive({"gap_ms": 200, "reply_words": 50})},
                 {"Idempotency-Key": "vg-key-2"})
    read_until(s, lambda b: b.count(b"event: delta") >= 2)
    s.close()
    fake.wait(lambda rs: rs[-1]["outcome"] == "client_closed", what="abort with a key")


def step_ordinary_turns(port, fake):
    for ep in ("/v1/chat", "/chat"):
        st, _, raw = http_json(port, "POST", ep, {"session_id": "vg-0", "message": "hello"})
        check(st == 200, f"{ep}: {st} {raw[:200]!r}")
    s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-0", "message": "stream"})
    check(b"event: done" in read_all(s), "ordinary stream")
    s.close()


STEPS = [step_ordinary_turns, step_disconnect_before_first_token, step_disconnect_mid_stream,
         step_disconnect_seed_stream, step_disconnect_non_streaming, step_provider_reset, step_provider_529,
         step_provider_idle_timeout, step_idempotency]


def parse_valgrind(text):
    errors = re.findall(r"ERROR SUMMARY: (\d+) errors", text)
    definitely = [int(x.replace(",", "")) for x in re.findall(r"definitely lost: ([\d,]+) bytes", text)]
    indirectly = [int(x.replace(",", "")) for x in re.findall(r"indirectly lost: ([\d,]+) bytes", text)]
    return (int(errors[-1]) if errors else None, sum(definitely), sum(indirectly))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chatd", default=os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd"))
    ap.add_argument("--keep-log", action="store_true", help="print the valgrind log path instead of deleting it")
    args = ap.parse_args()
    valgrind = shutil.which("valgrind")
    if not valgrind:
        print("valgrind not installed", file=sys.stderr)
        return 77
    tmp = tempfile.mkdtemp(prefix="chatd-vg-")
    log = os.path.join(tmp, "valgrind.log")
    fake = Fake()
    chatd = None
    t0 = time.monotonic()
    ok = False
    try:
        env = {"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": "sk-vg", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{fake.port}",
               "DATABASE_URL": "sqlite:///" + os.path.join(tmp, "chatd.db"), "PORT": "0", "HOST": "127.0.0.1",
               "WORKERS": "1", "RATE_LIMIT": "off", "PROVIDER_MAX_RETRIES": "1", "PROVIDER_IDLE_TIMEOUT": "1s",
               "DRAIN_TIMEOUT": "1s", "LOG_LEVEL": "info"}
        cmd = [valgrind, "--leak-check=full", "--show-leak-kinds=definite,indirect",
               "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99", "--num-callers=30",
               "--soname-synonyms=somalloc=*jemalloc*",
               f"--log-file={log}", os.path.abspath(args.chatd), "serve"]
        chatd = subprocess.Popen(cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        lines, q = [], queue.Queue()
        threading.Thread(target=lines_of, args=(chatd.stderr, lines, q), daemon=True).start()

        def listening(line):
            try:
                o = json.loads(line)
            except ValueError:
                return None
            return o.get("msg") == "listening" and int(o["port"])

        port = wait_line(q, listening, START_TIMEOUT, "chatd 'listening' under valgrind")
        for step in STEPS:
            fake.reset()
            t = time.monotonic()
            step(port, fake)
            print(f"ok   {step.__name__[5:]} ({time.monotonic() - t:.1f} s)", flush=True)

        # Shutdown with a stream still running past DRAIN_TIMEOUT: the abort path.
        fake.reset()
        s = raw_post(port, "/v1/chat/stream", {"session_id": "vg-10",
                                               "message": "m " + directive({"gap_ms": 300, "reply_words": 500})})
        read_until(s, lambda b: b"event: delta" in b)
        chatd.send_signal(signal.SIGTERM)
        raw = read_all(s)
        s.close()
        rc = chatd.wait(timeout=60)
        print(f"ok   shutdown with a running stream (exit {rc})", flush=True)
        # The path was taken: the drain deadline passed and the stream was cancelled.
        # (Whether its error event reaches the client is test_shutdown.py's business.)
        check(any("drain deadline passed" in l for l in lines), "the shutdown abort path was not taken")
        check(b"event: delta" in raw, "no delta before the shutdown")
        text = open(log).read()
        errors, definitely, indirectly = parse_valgrind(text)
        print(f"valgrind: ERROR SUMMARY: {errors} errors; definitely lost {definitely} bytes, "
              f"indirectly lost {indirectly} bytes; exit {rc}; {time.monotonic() - t0:.1f} s", flush=True)
        check(errors == 0, "valgrind reported errors")
        check(definitely == 0 and indirectly == 0, "valgrind reported leaks")
        check(rc == 0, f"chatd exited {rc} (99: valgrind errors)")
        ok = True
    except (Failure, OSError, subprocess.TimeoutExpired) as e:
        print(f"FAIL {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        if chatd is not None and chatd.poll() is None:
            chatd.kill()
            chatd.wait(10)
        fake.stop()
        if not ok and os.path.exists(log):
            sys.stderr.write(open(log).read()[-20000:])
        if args.keep_log:
            print(f"valgrind log: {log}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
