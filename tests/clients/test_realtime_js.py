"""realtime.js's unit tests (Node's test runner), run from pytest: CI's one summary covers them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.missing import missing

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_realtime_js_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        missing("node is not installed: realtime.js's tests (tests/js/) cannot run")
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) > 0, f"node ran no test:\n{output}"
    assert re.search(r"^# fail 0$", output, re.MULTILINE), output
