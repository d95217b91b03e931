"""
conftest.py: fixtures for the black-box integration suite of chatd.

The suite runs the real `chatd` binary (CHATD_BIN) against the fake Anthropic
provider (tests/fake_llm/server.mjs) over HTTP on 127.0.0.1, and talks to chatd
with httpx only. Nothing here imports chatd code: the contract is docs/API.md.

Fixtures:
  fake          session-scoped fake provider (reset before every test).
  chatd         function-scoped launcher: chatd(env) starts a server on a fresh
                temp database; every server it started is stopped at teardown
                and must have exited 0 on SIGTERM.
  chatd_module  the same launcher, module-scoped (for servers shared by the
                tests of one file, which then use distinct session ids).
"""
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(os.environ.get("CHATD_SOURCE_DIR") or Path(__file__).resolve().parents[2])
CHATD_BIN = os.environ.get("CHATD_BIN") or str(REPO / "build" / "chatd")
FAKE_SCRIPT = REPO / "tests" / "fake_llm" / "server.mjs"

from helpers import API_KEY
HTTP_TIMEOUT = httpx.Timeout(20.0, connect=5.0)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def _drain(stream, sink, first_lines=None):
    """Reads a child's pipe line by line until EOF so it never fills."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        sink.append(line)
        if first_lines is not None:
            first_lines.put(line)
    if first_lines is not None:
        first_lines.put(None)


# --------------------------------------------------------------------------- fake


class FakeProvider:
    def __init__(self):
        self.out_lines = []
        self.err_lines = []
        node = shutil.which("node") or "/usr/bin/node"
        self.proc = subprocess.Popen(
            [node, str(FAKE_SCRIPT), "--port", "0", "--host", "127.0.0.1"],
            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        q = queue.Queue()
        threading.Thread(target=_drain, args=(self.proc.stdout, self.out_lines, q),
                         daemon=True).start()
        threading.Thread(target=_drain, args=(self.proc.stderr, self.err_lines),
                         daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        while port is None:
            left = deadline - time.monotonic()
            try:
                line = q.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError("fake provider did not print LISTENING; stderr:\n"
                                   + "\n".join(self.err_lines[-30:]))
            if line.startswith("LISTENING "):
                port = int(line.split()[1])
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT)

    def script(self, default=None, queue=None):
        r = self.http.post("/_fake/script", json={"default": default, "queue": list(queue or [])})
        assert r.status_code == 200, r.text

    def reset(self):
        r = self.http.post("/_fake/reset", json={})
        assert r.status_code == 200, r.text

    def requests(self):
        """The /v1/messages requests received since the last reset, oldest first."""
        r = self.http.get("/_fake/requests")
        assert r.status_code == 200, r.text
        return [q for q in r.json()["requests"] if q.get("path", "").startswith("/v1/messages")]

    def stats(self):
        r = self.http.get("/_fake/stats")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_requests(self, n, timeout=5.0):
        """Waits until at least n provider requests were received; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.requests()
            if len(reqs) >= n or time.monotonic() > deadline:
                return reqs
            time.sleep(0.02)

    def stop(self):
        if getattr(self, "http", None) is not None:
            self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="session")
def fake():
    f = FakeProvider()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _reset_fake(fake):
    fake.reset()
    yield


# -------------------------------------------------------------------------- chatd


# CHATD_TEST_BACKEND=postgres runs every server of the suite on PostgreSQL
# (one throwaway cluster for the session, a fresh database per server) instead
# of a fresh SQLite file; tests that name their own DATABASE_URL keep it.
_PG_CLUSTER = None


def _default_database_url(db_path):
    global _PG_CLUSTER
    if os.environ.get("CHATD_TEST_BACKEND", "sqlite") != "postgres":
        return "sqlite:///" + db_path  # sqlite:////abs/path
    if _PG_CLUSTER is None:
        import atexit

        from pgfixtures import PgServer
        _PG_CLUSTER = PgServer()
        atexit.register(_PG_CLUSTER.close)
    return _PG_CLUSTER.url_for(_PG_CLUSTER.create_db())


class ChatdServer:
    """One chatd process (restartable on the same database)."""

    def __init__(self, fake_url, extra_env=None, tmpdir=None):
        self.tmpdir = tmpdir or tempfile.mkdtemp(prefix="chatd-it-")
        self.db_path = os.path.join(self.tmpdir, "chatd.db")
        env = {
            "PATH": "/usr/bin:/bin",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": fake_url,
            "DATABASE_URL": None,
            "PORT": "0",
            "HOST": "127.0.0.1",
            "WORKERS": "2",
            "PROVIDER_MAX_RETRIES": "0",
            # The default (10/minute, as the template) would throttle the suite;
            # test_guard.py tests the limiter with its own settings.
            "RATE_LIMIT": "off",
            "LOG_LEVEL": "info",
        }
        # Sanitizer builds: keep their settings.
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                env[k] = os.environ[k]
        for k, v in (extra_env or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        if env.get("DATABASE_URL") is None:
            env["DATABASE_URL"] = _default_database_url(self.db_path)
        self.env = env
        self.proc = None
        self.client = None
        self.url = None
        self.port = None
        self._lines = []       # every stderr line of every run of this server
        self.exit_codes = []
        self.start()

    def start(self):
        assert self.proc is None
        run_dir = os.path.join(self.tmpdir, "cwd")
        os.makedirs(run_dir, exist_ok=True)
        self.proc = subprocess.Popen(
            [CHATD_BIN, "serve"], env=self.env, cwd=run_dir,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        q = queue.Queue()
        t = threading.Thread(target=_drain, args=(self.proc.stderr, self._lines, q), daemon=True)
        t.start()
        self._drainer = t
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        while port is None:
            left = deadline - time.monotonic()
            try:
                line = q.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
            if line is None:
                rc = self.proc.poll()
                if rc is None:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
                self.proc = None
                raise RuntimeError(f"chatd did not log 'listening' (exit {rc}); stderr:\n"
                                   + "\n".join(self._lines[-40:]))
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("msg") == "listening":
                port = int(obj["port"])
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT)

    def stop(self):
        """SIGTERM, wait up to 10 s, SIGKILL otherwise. Returns the exit code."""
        if self.proc is None:
            return None
        if self.client is not None:
            self.client.close()
            self.client = None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            rc = "killed after SIGTERM timeout"
        self._drainer.join(timeout=5)
        self.proc = None
        self.exit_codes.append(rc)
        return rc

    def wait_exit(self, timeout=STOP_TIMEOUT_S):
        """After a signal sent by the test: waits for the exit, returns the code."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            rc = "killed after timeout"
        self._drainer.join(timeout=5)
        if self.client is not None:
            self.client.close()
            self.client = None
        self.proc = None
        self.exit_codes.append(rc)
        return rc

    def restart(self):
        rc = self.stop()
        assert rc == 0, f"chatd exited {rc!r} on SIGTERM; stderr tail:\n" + "\n".join(self._lines[-20:])
        self.start()

    # --- logs
    def log_lines(self):
        return list(self._lines)

    def logs(self):
        """Every stderr line that parses as a JSON object."""
        out = []
        for line in list(self._lines):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def request_logs(self):
        return [o for o in self.logs() if "request_id" in o and "path" in o and "status" in o]

    def wait_request_log(self, request_id, timeout=3.0):
        deadline = time.monotonic() + timeout
        while True:
            found = [o for o in self.request_logs() if o.get("request_id") == request_id]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


class Launcher:
    def __init__(self, fake):
        self.fake = fake
        self.servers = []

    def __call__(self, env=None):
        s = ChatdServer(self.fake.url, env)
        self.servers.append(s)
        return s

    def close(self):
        bad = []
        for s in self.servers:
            s.stop()
            if any(c != 0 for c in s.exit_codes):
                bad.append((s.url, s.exit_codes, "\n".join(s._lines[-20:])))
            shutil.rmtree(s.tmpdir, ignore_errors=True)
        self.servers = []
        assert not bad, f"chatd did not exit 0 on SIGTERM: {bad}"


def _require_binary():
    if not os.access(CHATD_BIN, os.X_OK):
        pytest.fail(f"chatd binary not found at {CHATD_BIN} (set CHATD_BIN)")


@pytest.fixture
def chatd(fake):
    _require_binary()
    launcher = Launcher(fake)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def chatd_module(fake):
    _require_binary()
    launcher = Launcher(fake)
    yield launcher
    launcher.close()
