"""
pgfixtures.py: a throwaway PostgreSQL server for the integration suite.

Test modules that need PostgreSQL import the fixtures by name:

    from pgfixtures import pg_server, pg_db, requires_pg  # noqa: F401

  pg_server  module-scoped PgServer: a fresh cluster started with
             tests/pg/pgserver.sh in a directory under /tmp (not pytest's
             tmp_path, which is 0700 root: the server runs as user postgres),
             stopped and removed at the end.
  pg_db      function-scoped: a new empty database on pg_server for one test
             (so tests never see each other's data); yields its URL, dropped
             at the end.
  requires_pg  skip marker, only for when the PostgreSQL binaries are missing.
"""
import glob
import os
import shutil
import subprocess
import tempfile
import uuid

from pathlib import Path

import pytest

REPO = Path(os.environ.get("CHATD_SOURCE_DIR") or Path(__file__).resolve().parents[2])

PGSERVER = str(REPO / "tests" / "pg" / "pgserver.sh")


def _pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda d: [int(x) for x in d.split("/")[-2].split(".") if x.isdigit()])
    for d in reversed(dirs):
        if os.access(os.path.join(d, "postgres"), os.X_OK):
            return d
    return None


PG_BIN = _pg_bin()
requires_pg = pytest.mark.skipif(
    PG_BIN is None, reason="PostgreSQL binaries are not installed (scripts/deps.sh installs postgresql)")


class PgServer:
    """One PostgreSQL cluster driven by tests/pg/pgserver.sh."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="chatd-pg-", dir="/tmp")
        self.url = self._script("start").strip().splitlines()[-1]
        self.port = int(open(os.path.join(self.dir, "port")).read().strip())

    def _script(self, cmd, env=None):
        r = subprocess.run([PGSERVER, cmd, self.dir], capture_output=True, text=True, timeout=60,
                           env={**os.environ, **(env or {})})
        if r.returncode != 0:
            raise RuntimeError(f"pgserver.sh {cmd} failed ({r.returncode}):\n{r.stderr}")
        return r.stdout

    def url_for(self, dbname):
        return f"postgres://chatd@127.0.0.1:{self.port}/{dbname}"

    def stop_server(self):
        """Stops PostgreSQL (fast shutdown: clients are disconnected); the data stays."""
        self._script("stop")

    def start_server(self):
        """Starts it again on the same port."""
        self._script("start")

    def restart(self):
        self._script("restart")

    def psql(self, sql, db="postgres", timeout=30):
        """Runs sql with psql (ON_ERROR_STOP); returns its unaligned tuples output."""
        r = subprocess.run(
            [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA",
             "-d", self.url_for(db), "-c", sql],
            capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed ({r.returncode}) for {sql!r}:\n{r.stderr}")
        return r.stdout.strip()

    def psql_session(self, db):
        """A long-lived psql reading SQL from stdin (for holding locks). The
        caller writes statements to .stdin and must close it."""
        return subprocess.Popen(
            [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-d", self.url_for(db)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def create_db(self):
        name = "t_" + uuid.uuid4().hex[:16]
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_db(self, name):
        try:
            self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the cluster goes away with its directory anyway

    def close(self):
        try:
            self._script("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server():
    if PG_BIN is None:
        pytest.skip("PostgreSQL binaries are not installed (scripts/deps.sh installs postgresql)")
    srv = PgServer()
    yield srv
    srv.close()


@pytest.fixture
def pg_db(pg_server):
    """A fresh database for one test; yields its URL."""
    name = pg_server.create_db()
    yield pg_server.url_for(name)
    pg_server.drop_db(name)


# ------------------------------------------------------------------ chatd CLI


def chatd_cli(args, database_url, input=None, timeout=120, extra_env=None):
    """Runs `chatd ARGS` on database_url (a clean environment, no .env);
    returns the CompletedProcess (text mode)."""
    from conftest import CHATD_BIN
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url, "LOG_LEVEL": "warn", "ENV_FILE": "/dev/null"}
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(extra_env or {})
    r = subprocess.run([CHATD_BIN, *args], env=env, input=input, capture_output=True, text=True,
                       timeout=timeout, cwd="/tmp")
    # Under a sanitizer build an error can exit 1 like an expected failure: look for its report.
    assert "Sanitizer" not in r.stderr and "runtime error:" not in r.stderr, r.stderr
    return r


def create_key(database_url, name, role="user", rate_limit=None):
    """`chatd keys create` on database_url; returns {"id", "name", "role", "secret"}."""
    args = ["keys", "create", "--name", name, "--role", role]
    if rate_limit:
        args += ["--rate-limit", rate_limit]
    r = chatd_cli(args, database_url)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    assert out.get("secret", "").startswith("chatd_"), r.stdout
    return out
