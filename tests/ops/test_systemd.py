"""deploy/systemd/: the units for running without containers, as systemd itself reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.ops import ROOT, replace_once, require_tool

pytestmark = pytest.mark.unit

UNITS = ROOT / "deploy" / "systemd"
INSTALLED_BIN = "/opt/realtime/.venv/bin/"
# Templates are verified through an instance, as `systemctl enable --now` would start them.
INSTANCES = {
    "realtime-edge@.service": "realtime-edge@8080.service",
    "realtime-notifications@.service": "realtime-notifications@8081.service",
    "realtime-migrate.service": "realtime-migrate.service",
}


def test_systemd_accepts_every_unit_and_finds_each_command(tmp_path: Path) -> None:
    """`systemd-analyze verify` rejects unknown keys and commands that are not executable.

    The units name the install path of docs/scaling.md; here the same console scripts are
    in this workspace's virtualenv, so only that prefix is rewritten.
    """
    analyze = require_tool("systemd-analyze")
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(INSTANCES)
    for name in INSTANCES:
        text = (UNITS / name).read_text()
        text = replace_once(text, INSTALLED_BIN, f"{Path(sys.executable).parent}/")
        (tmp_path / name).write_text(text)

    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / unit) for unit in INSTANCES.values())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # warnings (unknown keys) included
