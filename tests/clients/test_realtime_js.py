"""realtime.js's unit tests (Node's test runner), run from pytest so CI's one summary covers them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_realtime_js_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        message = "node is not installed: realtime.js's tests (tests/js/) cannot run"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ℹ fail 0" in output, output
    assert "ℹ pass 0\n" not in output, "node ran no test"
