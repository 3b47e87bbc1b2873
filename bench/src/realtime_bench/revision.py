"""The edge as it was at an older commit, for the `ws-edge-before` target.

Its tree is `git archive <commit>` unpacked into a directory of its own, outside the
checkout: no linter, type checker or test collection sees a second copy of the project,
and the shared checkout's git state (branches, worktrees) is left alone while others
commit in it. `uv sync --locked --no-dev --package realtime-ws-edge` then gives that
tree a virtual environment from its own lock file, so the older edge runs with the
dependencies it was written for. Both are kept, keyed by the full commit id, and reused
by later runs; a directory whose set-up did not finish is made again.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

DEFAULT_BEFORE_COMMIT = "a94f27b"
"""The edge before recovery (issue 12) and client messages (issue 13)."""

DEFAULT_ROOT = Path(tempfile.gettempdir()) / "realtime-bench"
READY_MARK = ".bench-ready"
HERE = Path(__file__).resolve().parent


async def _output(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({process.returncode}):\n{tail}")
    return out


def _uv() -> str:
    path = os.environ.get("UV") or shutil.which("uv")  # `uv run` sets UV to itself
    if not path:
        raise RuntimeError("ws-edge-before needs uv to build the older edge's environment")
    return path


def tree_for(root: Path, sha: str) -> Path:
    return root / f"edge-{sha[:12]}"


async def prepare(
    commit: str, root: Path = DEFAULT_ROOT, progress: Callable[[str], None] = print
) -> str:
    """The older edge's `ws-edge` script, building its tree and environment if needed."""
    repo = Path((await _output(["git", "rev-parse", "--show-toplevel"], HERE)).decode().strip())
    spec = f"{commit}^{{commit}}"
    sha = (await _output(["git", "rev-parse", "--verify", spec], repo)).decode().strip()
    tree = tree_for(root, sha)
    script = tree / ".venv" / "bin" / "ws-edge"
    if (tree / READY_MARK).exists() and script.exists():
        return str(script)
    progress(f"preparing ws-edge-before: the edge at {sha[:12]} in {tree}")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = await _output(["git", "archive", "--format=tar", sha], repo)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    # Its own environment: VIRTUAL_ENV (set by `uv run`) would only draw a warning.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    sync = [_uv(), "sync", "--locked", "--no-dev", "--package", "realtime-ws-edge"]
    await _output(sync, tree, env)
    if not script.exists():
        raise RuntimeError(f"the edge at {sha[:12]} has no ws-edge script in {script.parent}")
    (tree / READY_MARK).write_text(sha + "\n")
    return str(script)
