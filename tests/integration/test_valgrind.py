"""
test_valgrind.py: runs tests/valgrind/run_abort_paths.py (chatd under valgrind
memcheck, driven through the abort paths: disconnects, provider reset and 529,
timeouts, idempotency, shutdown with a running stream) and requires zero
errors and nothing definitely or indirectly lost.

Skipped only when valgrind is not installed, or when CHATD_BIN is a sanitizer
build (valgrind cannot run ASan binaries; that build checks leaks itself).
"""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import CHATD_BIN, REPO
from reliability import sanitized

SCRIPT = REPO / "tests" / "valgrind" / "run_abort_paths.py"


def test_abort_paths_under_valgrind():
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    if not os.access(CHATD_BIN, os.X_OK):
        pytest.fail(f"chatd binary not found at {CHATD_BIN}")
    if sanitized(CHATD_BIN):
        pytest.skip("CHATD_BIN is a sanitizer build (leaks are checked by LeakSanitizer there)")
    p = subprocess.run([sys.executable, str(SCRIPT), "--chatd", CHATD_BIN], capture_output=True, text=True,
                       timeout=120)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr[-8000:]
    assert "ERROR SUMMARY: 0 errors; definitely lost 0 bytes, indirectly lost 0 bytes; exit 0" in p.stdout
