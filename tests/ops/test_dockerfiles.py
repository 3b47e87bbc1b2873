"""The two Dockerfiles, read by BuildKit's own parser and hadolint; their uv layer, replayed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import dockerfile  # type: ignore[import-not-found]
import pytest
from support.ops import DOCKERFILES, ROOT, clean_env, context_files, require_tool

pytestmark = pytest.mark.unit

PACKAGES = sorted(DOCKERFILES)


def instructions(package: str) -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILES[package])))


def final_stage(package: str) -> list[dockerfile.Command]:
    commands = instructions(package)
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


def member_dir(package: str) -> Path:
    return DOCKERFILES[package].parent


def console_scripts(package: str) -> dict[str, str]:
    project = tomllib.loads((member_dir(package) / "pyproject.toml").read_text())["project"]
    assert project["name"] == package
    scripts: dict[str, str] = project["scripts"]
    return scripts


def uv_syncs(package: str) -> list[tuple[int, list[str]]]:
    out = []
    for index, command in enumerate(instructions(package)):
        if command.cmd == "RUN" and command.value[0].lstrip().startswith("uv sync"):
            out.append((index, shlex.split(command.value[0])))
    return out


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_the_image_runs_the_service_as_a_non_root_user(package: str) -> None:
    stage = final_stage(package)
    users = [c.value[0] for c in stage if c.cmd == "USER"]

    assert len([c for c in instructions(package) if c.cmd == "FROM"]) >= 2, "multi-stage"
    assert users, "the runtime stage sets a USER"
    uid = users[-1].split(":")[0]
    # Numeric, so an orchestrator's runAsNonRoot check can verify it without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
    # Nothing but the virtualenv comes from the builder: no compilers, no source, no uv cache.
    copies = [c for c in stage if c.cmd == "COPY"]
    assert [(c.flags, c.value) for c in copies] == [
        (("--from=builder",), ("/app/.venv", "/app/.venv"))
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_the_image_starts_the_console_script_and_checks_healthz(package: str) -> None:
    stage = final_stage(package)
    by_cmd = {c.cmd: c for c in stage}
    exposed = by_cmd["EXPOSE"].value[0]
    entrypoint = by_cmd["ENTRYPOINT"].value
    cmd = by_cmd["CMD"].value
    health = by_cmd["HEALTHCHECK"]

    assert list(entrypoint) == [next(iter(console_scripts(package)))]
    assert cmd[cmd.index("--port") + 1] == exposed
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert health.value[0] == "CMD"
    assert f"http://127.0.0.1:{exposed}/healthz" in " ".join(health.value)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_secret_is_baked_into_the_image(package: str) -> None:
    secretish = re.compile(r"SECRET|PASSWORD|TOKEN|PRIVATE|_KEY|DATABASE_URL|AMQP_URL", re.I)
    for command in instructions(package):
        if command.cmd in {"ENV", "ARG"}:
            names = command.value[::2] if command.cmd == "ENV" else command.value
            for name in names:
                assert not secretish.search(name.split("=")[0]), command.original


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_install_in_their_own_layer_before_the_source(package: str) -> None:
    commands = instructions(package)
    (deps_at, deps), (code_at, code) = uv_syncs(package)
    copied_before = [c.value[:-1] for c in commands[:deps_at] if c.cmd == "COPY" and not c.flags]
    sources_before = [src for srcs in copied_before for src in srcs]

    assert {"--locked", "--no-install-workspace", "--no-dev"} <= set(deps)
    assert deps[deps.index("--package") + 1] == package
    assert {"--locked", "--no-editable", "--no-dev"} <= set(code)
    assert deps_at < code_at
    # Before the dependency layer: manifests and the lock only, so code edits keep its cache.
    assert all(Path(src).name in {"pyproject.toml", "uv.lock"} for src in sources_before)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_dependency_layer_resolves_from_the_files_it_copies(
    package: str, tmp_path: Path
) -> None:
    """Replays the first `uv sync` in a directory holding only what the image has by then.

    uv checks the whole workspace against uv.lock, so a member missing from the COPY lines
    (or a lock out of date with a pyproject) fails here as it would in `docker build`.
    """
    uv = require_tool("uv")
    commands = instructions(package)
    (deps_at, deps), _ = uv_syncs(package)
    for command in commands[:deps_at]:
        if command.cmd == "COPY" and not command.flags:
            *sources, dest = command.value
            for source in sources:
                target = tmp_path / dest / Path(source).name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    env = clean_env(UV_PROJECT_ENVIRONMENT=str(tmp_path / "venv"), UV_OFFLINE="1")

    result = subprocess.run(
        [uv, *deps[1:], "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "Would install" in result.stderr or "Would make no changes" in result.stderr


def test_the_build_context_holds_the_code_but_never_local_secrets(tmp_path: Path) -> None:
    """.dockerignore, applied by docker-py's implementation of Docker's matching rules."""
    tree = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "node_modules", ".*_cache", ".hypothesis", "__pycache__"
        ),
    )
    planted = [
        ".env",
        "services/ws-edge/.env",
        "services/notifications/notifications.db",
        "shared/src/realtime_shared/__pycache__/auth.cpython-311.pyc",
        ".venv/bin/python",
        ".git/config",
    ]
    for rel in planted:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("secret")
    context = context_files(tree)

    assert not context & set(planted)
    assert not any(p.startswith(("tests/", "docs/", "deploy/")) for p in context)
    for package in PACKAGES:
        for command in instructions(package):
            if command.cmd == "COPY" and not command.flags:
                for source in command.value[:-1]:
                    assert source.rstrip("/") in context, (package, source)
    for package in PACKAGES:
        module = next(iter(console_scripts(package).values())).split(":")[0]
        source = Path(str(member_dir(package).relative_to(ROOT)), "src", *module.split("."))
        assert f"{source}.py" in context
