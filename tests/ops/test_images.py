"""The builder stage of each Dockerfile, replayed without an engine: the venv it makes works alone.

The runtime stage copies only `/app/.venv` from the builder. So this replays the builder's
COPY and `uv sync` instructions in order, from the build context that `.dockerignore`
leaves, deletes the source tree, and runs what the container would run. A file missing
from the context, a package file a wheel leaves out (migrations, the demo page), or an
editable install pointing back at the source would all fail here as in the image.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import dockerfile  # type: ignore[import-not-found]
import pytest
from support.ops import DOCKERFILES, ROOT, clean_env, context_files, require_tool

pytestmark = pytest.mark.integration


def builder_stage(package: str) -> list[dockerfile.Command]:
    commands = list(dockerfile.parse_file(str(DOCKERFILES[package])))
    start = next(i for i, c in enumerate(commands) if c.original.endswith(" AS builder"))
    end = next(i for i, c in enumerate(commands) if i > start and c.cmd == "FROM")
    return commands[start:end]


def build_context(tmp: Path) -> Path:
    context = tmp / "context"
    for rel in context_files(ROOT):
        if (ROOT / rel).is_file():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / rel, context / rel)
    return context


def replay_builder(package: str, tmp: Path) -> Path:
    """Run the builder's COPY and `uv sync` steps; returns the virtualenv it leaves."""
    uv = require_tool("uv")
    context, workdir, venv = build_context(tmp), tmp / "src", tmp / "venv"
    env = clean_env(UV_OFFLINE="1")
    for command in builder_stage(package):
        if command.cmd == "ENV":
            pairs = command.value
            env.update({pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)})
        elif command.cmd == "COPY" and not command.flags:
            *sources, dest = command.value
            for source in sources:
                target = workdir / dest
                if (context / source).is_dir():
                    shutil.copytree(context / source, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(context / source, target / Path(source).name)
        elif command.cmd == "RUN":
            argv = shlex.split(command.value[0])
            assert argv[:2] == ["uv", "sync"], f"unexpected builder step: {command.original}"
            # Same variables as the image, but the venv in tmp and no bytecode (time only).
            env.update(UV_PROJECT_ENVIRONMENT=str(venv), UV_COMPILE_BYTECODE="0")
            result = subprocess.run(
                [uv, *argv[1:]],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, f"{command.original}\n{result.stderr}"
    shutil.rmtree(workdir)  # the runtime stage has no source tree
    shutil.rmtree(context)
    return venv


def run(venv: Path, *argv: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        env=clean_env(**environ),
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_edge_image_venv_runs_alone(tmp_path: Path) -> None:
    venv = replay_builder("realtime-ws-edge", tmp_path)

    # The source tree is gone: an editable install would fail to import here.
    assert run(venv, "ws-edge", "--help").returncode == 0
    page = run(
        venv,
        "python",
        "-c",
        "from importlib.resources import files; "
        "print((files('realtime_edge') / 'static' / 'index.html').read_text()[:15])",
    )
    assert page.stdout.strip() == "<!doctype html>", page.stderr


def test_the_notifications_image_venv_migrates_a_database(tmp_path: Path) -> None:
    venv = replay_builder("realtime-notifications", tmp_path)
    database = tmp_path / "notifications.db"

    migrated = run(
        venv, "notifications-service", "migrate", DATABASE_URL=f"sqlite+aiosqlite:///{database}"
    )

    assert migrated.returncode == 0, migrated.stderr
    assert database.stat().st_size > 0
    tables = run(
        venv,
        "python",
        "-c",
        f"import sqlite3; print(sorted(r[0] for r in sqlite3.connect('{database}')"
        ".execute(\"select name from sqlite_master where type='table'\")))",
    )
    assert "notifications" in tables.stdout, tables.stdout + tables.stderr
