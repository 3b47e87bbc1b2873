"""Helpers for the ops tests: the repository's deploy files and the real tools that check them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
from docker.utils.build import exclude_paths  # type: ignore[import-untyped]

from support.missing import missing

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
"""Where the workspace installed the console scripts the images run."""
COMPOSE_FILE = ROOT / "compose.yaml"
EXAMPLE_ENV = ROOT / "deploy" / "example.env"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
DOCKERFILES = {
    "realtime-ws-edge": ROOT / "services" / "ws-edge" / "Dockerfile",
    "realtime-notifications": ROOT / "services" / "notifications" / "Dockerfile",
}

MAKE_SECRETS = ROOT / "deploy" / "make-secrets.sh"
RABBITMQ_DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.py"
RABBITMQ_CONF = ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"
POSTGRES_ROLES = ROOT / "deploy" / "postgres" / "10-roles.sh"


def make_secrets(directory: Path, **environ: str) -> dict[str, str]:
    """Run deploy/make-secrets.sh as an operator would; return each file's content by name."""
    result = subprocess.run(
        ["bash", str(MAKE_SECRETS)],
        env=clean_env(SECRETS_DIR=str(directory), **environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def write_secret(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value)
    return path


def on_test_server(url: str, role: str, server_url: str, database: str) -> str:
    """A database URL from make-secrets.sh (its scheme and password) for `role` and
    `database` on the test server, where roles are shared by everyone's tests."""
    parts, server = urlsplit(url), urlsplit(server_url)
    netloc = f"{role}:{parts.password}@{server.hostname}:{server.port or 5432}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", "", ""))


def apply_postgres_roles(
    server_url: str, database: str, secrets: Path
) -> subprocess.CompletedProcess[str]:
    """deploy/postgres/10-roles.sh as the postgres image runs it, over TCP, not its socket."""
    require_tool("psql")  # what the script runs
    server = urlsplit(server_url)
    return subprocess.run(
        ["bash", str(POSTGRES_ROLES)],
        env=clean_env(
            PGHOST=server.hostname or "127.0.0.1",
            PGPORT=str(server.port or 5432),
            PGPASSWORD=server.password or "",
            POSTGRES_USER=server.username or "postgres",
            POSTGRES_DB=database,
            MIGRATE_DATABASE_URL_FILE=str(secrets / "migrate_database_url"),
            NOTIFICATIONS_DATABASE_URL_FILE=str(secrets / "notifications_database_url"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def drop_roles(server_url: str, *roles: str) -> None:
    """After their database is dropped (nothing of theirs is left to block it)."""
    conn = await asyncpg.connect(server_url)
    try:
        for role in roles:
            await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await conn.close()


def context_files(root: Path) -> set[str]:
    """The paths `docker build` sends from `root`: .dockerignore applied by docker-py's matcher."""
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return set(exclude_paths(str(root), patterns))


def require_tool(name: str) -> str:
    """The tool's path; skip without it, except under CI=true where it must be installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path:
        return path
    missing(f"{name} is not installed (scripts/ci-setup/10-ops-tools.sh installs it)")


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so the caller's own JWT_SECRET or .env cannot leak into a check."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    if "UV_CACHE_DIR" in os.environ:  # offline uv runs need the cache the workspace used
        env["UV_CACHE_DIR"] = os.environ["UV_CACHE_DIR"]
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listened on 127.0.0.1:{port} within {deadline_s} s")


def replace_once(text: str, old: str, new: str) -> str:
    """Fail loudly when the shipped config no longer has the line a test copy rewrites."""
    count = text.count(old)
    assert count == 1, f"expected exactly one {old!r} in the shipped config, found {count}"
    return text.replace(old, new)


@dataclass(frozen=True)
class ProxyFiles:
    prefix: Path
    conf: Path
    access_log: Path
    error_log: Path


TRUSTED_PROXY_LINE = "# set_real_ip_from <load balancer address or CIDR>;"
"""Where an operator lists the load balancers in front of nginx (none as shipped)."""


def proxy_test_copy(
    tmp: Path,
    *,
    listen: int,
    edge: str | None = None,
    api: str | None = None,
    trusted_proxy: str | None = None,
) -> ProxyFiles:
    """deploy/nginx/nginx.conf with only what cannot work here rewritten.

    In compose the upstreams are the service names `edge` and `notifications`, resolved by
    Docker's DNS while the proxy runs; here they become loopback addresses of test servers.
    Without `edge`/`api` the service names stay (nginx resolves them only per request).
    `trusted_proxy` is filled in where the file tells an operator to name a load balancer
    in front. Logs go to files the test reads; everything else (routes, headers, timeouts,
    log format, error pages) is the shipped config, unchanged.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    files = ProxyFiles(tmp, tmp / "nginx.conf", tmp / "access.log", tmp / "error.log")
    text = NGINX_CONF.read_text()
    text = replace_once(text, "listen 8000;", f"listen 127.0.0.1:{listen};")
    if edge is not None:
        text = replace_once(text, "set $edge_upstream edge:8080;", f"set $edge_upstream {edge};")
    if api is not None:
        text = replace_once(
            text, "set $api_upstream notifications:8081;", f"set $api_upstream {api};"
        )
    if trusted_proxy is not None:
        text = replace_once(text, TRUSTED_PROXY_LINE, f"set_real_ip_from {trusted_proxy};")
    text = replace_once(text, "error_log /dev/stderr crit;", f"error_log {files.error_log} crit;")
    text = replace_once(
        text, "access_log /dev/stdout realtime;", f"access_log {files.access_log} realtime;"
    )
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = replace_once(text, "http {\n", "http {\n" + temp_paths)
    files.conf.write_text(text)
    return files


def nginx_command(nginx: str, files: ProxyFiles, *args: str) -> list[str]:
    return [
        nginx,
        "-p",
        str(files.prefix),
        "-c",
        str(files.conf),
        "-e",
        str(files.error_log),
        "-g",
        f"pid {files.prefix / 'nginx.pid'};" + (" daemon off;" if "-t" not in args else ""),
        *args,
    ]


@contextmanager
def running_nginx(nginx: str, files: ProxyFiles, port: int) -> Iterator[None]:
    """nginx in the foreground on `port` until the block ends; stopped even when a test fails."""
    process = subprocess.Popen(nginx_command(nginx, files), stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM, as `docker stop` sends; SIGKILL if it has not exited after `grace_s`."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


STARTUP_S = 30.0
"""How long a service process may take to answer /readyz (RabbitMQ, migrations)."""


@contextmanager
def service(
    argv: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A console script as compose would run it; SIGTERM at the end, as `docker stop` does."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop(process)


def wait_ready(port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"127.0.0.1:{port} not ready in {STARTUP_S} s:\n{log.read_text()}")


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own, on free ports, with deploy/rabbitmq/rabbitmq.conf.

    The shared broker's users must not change, so tests of users and permissions boot
    this one: same settings file as compose mounts, with only the definitions path (and
    the listener) changed. `restart()` boots the same node again, as `docker compose
    restart rabbitmq` does.
    """

    BOOT_S = 90.0
    """A node boots in about 5 s on a quiet machine; CI machines are shared."""

    def __init__(self, tmp: Path, definitions: Path) -> None:
        server = require_tool("rabbitmq-server")
        # Debian's /usr/sbin wrapper re-runs itself as the `rabbitmq` user, which cannot
        # reach a test's private directories; the script it wraps runs as anyone.
        debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        self._server = str(debian if debian.exists() else server)
        self.port, dist_port = free_port(), free_port()
        self.log = tmp / "rabbitmq.log"
        conf_d = tmp / "conf.d"
        conf_d.mkdir(parents=True)
        conf = replace_once(
            RABBITMQ_CONF.read_text(),
            "/etc/rabbitmq/definitions/definitions.json",
            str(definitions),
        )
        (conf_d / "20-realtime.conf").write_text(conf)
        (tmp / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (tmp / "enabled_plugins").write_text("[].\n")
        self._env = clean_env(
            RABBITMQ_NODENAME=f"rabbit-test-{self.port}@localhost",
            RABBITMQ_DIST_PORT=str(dist_port),
            RABBITMQ_MNESIA_BASE=str(tmp / "mnesia"),
            RABBITMQ_LOG_BASE=str(tmp / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_CONFIG_FILE=str(tmp / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(conf_d),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(tmp / "enabled_plugins"),
            # Not the host's rabbitmq-env.conf: it names the shared node.
            RABBITMQ_CONF_ENV_FILE="/dev/null",
        )
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    def start(self) -> None:
        with self.log.open("ab") as out:
            # Its own session, so stopping it takes the Erlang VM the script starts too.
            self._process = subprocess.Popen(
                [self._server],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, self._process, self.BOOT_S)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.log.read_text()[-4000:]}") from None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of the node still in its group

    def restart(self) -> None:
        self.stop()
        self.start()


def access_log_lines(files: ProxyFiles, count: int, deadline_s: float = 5.0) -> list[str]:
    """nginx writes a request's access line after its response: wait for `count` of them."""
    deadline = time.monotonic() + deadline_s
    while True:
        lines = files.access_log.read_text().splitlines() if files.access_log.exists() else []
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(lines)} access log lines after {deadline_s} s: {lines}")
        time.sleep(0.02)
