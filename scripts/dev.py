"""`make dev`: run the whole system locally, and `make demo-notify`: send the page a notification.

    uv run python scripts/dev.py                 # both services in dev mode, SQLite, demo page
    uv run python scripts/dev.py notify alice    # create a notification for alice

`make dev` has already installed the workspace and made sure RabbitMQ answers (AMQP_URL).
This starts `ws-edge --dev`, `notifications-service --dev` and the example chat backend
(`chat-example`, examples/chat) as child processes (without the JWT keys the environment or
`.env` may hold: dev mode refuses them), prefixes their output, waits until the services
answer /readyz and the chat backend consumes, then prints the demo URL and a `curl` command
that makes a notification appear on the page. Ctrl-C stops them all. The ports can be moved with
DEV_EDGE_PORT / DEV_NOTIFICATIONS_PORT (or --edge-port / --notifications-port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx

from realtime_shared.auth import PERMISSION_MANAGE_NOTIFICATIONS, issue_token
from realtime_shared.settings import FILE_SUFFIX, KEY_VARIABLES, RealtimeSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
DEMO_USER = "alice"
DEMO_SENDER = "demo-admin"
NO_KEYS = {name + suffix: "" for name in KEY_VARIABLES for suffix in ("", FILE_SUFFIX)}
"""Dev mode refuses configured keys, and `.env` may hold compose's: an empty one is unset."""


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/dev.py", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    parser.add_argument(
        "--edge-port", type=int, default=_env_port("DEV_EDGE_PORT", 8080), help="(8080)"
    )
    parser.add_argument(
        "--notifications-port",
        type=int,
        default=_env_port("DEV_NOTIFICATIONS_PORT", 8081),
        help="(8081)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DEV_DATA_DIR") or ROOT),
        help="where the SQLite databases live (the repository root)",
    )
    sub = parser.add_subparsers(dest="command")
    notify = sub.add_parser("notify", help="create a notification on a running `make dev`")
    notify.add_argument("user", nargs="?", default=DEMO_USER, help=f"recipient ({DEMO_USER})")
    notify.add_argument("--title", default="Hello from make demo-notify")
    notify.add_argument("--message", default="This came through REST, RabbitMQ and the edge.")
    notify.add_argument(
        "--severity", default="info", choices=["info", "success", "warning", "error"]
    )
    return parser


def _dev_settings() -> RealtimeSettings:
    """What the services will read from the environment and .env (in dev mode: no keys)."""
    return load_settings(RealtimeSettings, "dev", dev=True)


def _sender_token() -> str:
    """A `notification.manage` token signed like the services verify it: with the dev key."""
    settings = _dev_settings()
    secret = settings.effective_jwt_secret()
    assert secret is not None  # dev mode always has a key
    return issue_token(
        DEMO_SENDER,
        secret,
        ttl=86_400,
        permissions=[PERMISSION_MANAGE_NOTIFICATIONS],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )


def curl_command(notifications_url: str, token: str, user: str) -> str:
    body = (
        f'{{"user_id": "{user}", "type": "demo", "title": "Hello from curl", '
        '"message": "It went REST → outbox → RabbitMQ → edge → your browser.", '
        '"severity": "success"}'
    )
    return (
        f"curl -sS -X POST {notifications_url}/api/notifications \\\n"
        f"      -H 'Authorization: Bearer {token}' \\\n"
        "      -H 'Content-Type: application/json' \\\n"
        f"      -d {shlex.quote(body)}"
    )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class Child:
    """One service process in its own session, so Ctrl-C reaches only us and we stop it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._pump = asyncio.create_task(self._copy_output())

    async def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            print(f"{self.name:>13} | {line}", flush=True)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 1)


async def wait_ready(
    children: dict[str, str], procs: list[Child], logged: dict[str, str] | None = None
) -> None:
    """Poll each /readyz (the services expose readiness over HTTP) and wait for each
    `logged` child's line (the chat backend has no HTTP side)."""
    deadline = time.monotonic() + READY_TIMEOUT
    pending = dict(children)
    lines = dict(logged or {})
    async with httpx.AsyncClient(timeout=1) as client:
        while pending or lines:
            for child in procs:
                if child.proc is not None and child.proc.returncode is not None:
                    raise RuntimeError(f"{child.name} exited with code {child.proc.returncode}")
                if child.name in lines and any(lines[child.name] in o for o in child.output):
                    del lines[child.name]
            for name, url in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{', '.join([*pending, *lines])} not ready after {READY_TIMEOUT:.0f} s"
                    " (see its log)"
                )
            await asyncio.sleep(0.2)


def banner(edge_url: str, notifications_url: str, data_dir: Path) -> str:
    token = _sender_token()
    return f"""
  ──────────────────────────────────────────────────────────────────────────────
  realtime is running in dev mode (insecure dev key, SQLite files in {data_dir})

  demo page        {edge_url}/            (pick a user at the top; alice by default)
  chat             {edge_url}/?user=alice and {edge_url}/?user=bob in two tabs
  REST API docs    {notifications_url}/docs
  edge metrics     {edge_url}/metrics

  Make a notification appear on the page:

    {curl_command(notifications_url, token, DEMO_USER)}

  or:  make demo-notify USER=alice

  Ctrl-C stops everything.
  ──────────────────────────────────────────────────────────────────────────────
"""


async def rabbitmq_answers(amqp_url: str) -> str | None:
    """None when an AMQP connection opens; otherwise why not (checked before anything starts)."""
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


async def run(args: argparse.Namespace) -> int:
    amqp_url = _dev_settings().amqp_url
    problem = await rabbitmq_answers(amqp_url)
    if problem is not None:
        print(
            f"dev: RabbitMQ does not answer at {_redact(amqp_url)} ({problem}).\n"
            "     Install and start it (sudo apt-get install rabbitmq-server), or run\n"
            "     `docker compose up -d rabbitmq`, or set AMQP_URL to a broker you have.",
            file=sys.stderr,
        )
        return 1
    taken = [p for p in (args.edge_port, args.notifications_port) if port_taken(args.host, p)]
    if taken:
        print(
            f"dev: port {' and '.join(map(str, taken))} on {args.host} is already in use "
            "(another `make dev`?). Stop what holds it, or pick other ports, e.g.\n"
            "     DEV_EDGE_PORT=9080 DEV_NOTIFICATIONS_PORT=9081 make dev",
            file=sys.stderr,
        )
        return 1
    public = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    edge_url = f"http://{public}:{args.edge_port}"
    notifications_url = f"http://{public}:{args.notifications_port}"
    data_dir = args.data_dir.resolve()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **NO_KEYS}
    children = [
        Child(
            "notifications",
            [
                *(str(BIN / "notifications-service"), "--dev"),
                *("--host", args.host, "--port", str(args.notifications_port)),
            ],
            {**env, "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'notifications.db'}"},
        ),
        Child(
            "chat",
            [str(BIN / "chat-example")],
            {**env, "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'chat.db'}"},
        ),
        Child(
            "ws-edge",
            [str(BIN / "ws-edge"), "--dev", "--host", args.host, "--port", str(args.edge_port)],
            {**env, "EDGE_DEMO": "true", "EDGE_NOTIFICATIONS_URL": notifications_url},
        ),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for child in children:
            await child.start()
        ready = asyncio.create_task(
            wait_ready(
                {"ws-edge": edge_url, "notifications": notifications_url},
                children,
                logged={"chat": "consuming chat"},
            )
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped.done():
            ready.cancel()
            return 130
        stopped.cancel()
        try:
            ready.result()
        except (RuntimeError, TimeoutError) as exc:
            print(f"\ndev: {exc}", file=sys.stderr)
            return 1
        print(banner(edge_url, notifications_url, data_dir), flush=True)
        watchers = [asyncio.create_task(c.proc.wait()) for c in children if c.proc is not None]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopper, *watchers):
            task.cancel()
        if stopper not in done:
            print("\ndev: a service exited; stopping the others", file=sys.stderr)
            return 1
        print("\ndev: stopping…", flush=True)
        return 0
    finally:
        await asyncio.gather(*(child.stop() for child in children))


async def notify(args: argparse.Namespace) -> int:
    url = f"http://localhost:{args.notifications_port}/api/notifications"
    body = {
        "user_id": args.user,
        "type": "demo",
        "title": args.title,
        "message": args.message,
        "severity": args.severity,
    }
    headers = {"Authorization": f"Bearer {_sender_token()}"}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.TransportError as exc:
        print(f"notify: cannot reach {url} ({exc}); is `make dev` running?", file=sys.stderr)
        return 1
    if response.status_code != 201:
        print(f"notify: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    created = response.json()
    print(f"notify: created {created['id']} for {created['user_id']}: {created['title']!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "notify":
        return asyncio.run(notify(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
