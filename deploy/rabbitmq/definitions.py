"""Write RabbitMQ's definitions (users, their permissions) from the stack's secret files.

Run by compose's one-shot `rabbitmq-users` service before the broker starts; RabbitMQ
imports the file at every boot (deploy/rabbitmq/rabbitmq.conf), so the secret files stay
the one source of truth: a changed password takes effect at the next restart, and the
broker's own default user is never created. Standard library only, so any Python runs it:

    python definitions.py OUTPUT

Each service's user name and password are read from its AMQP URL file, the same file
the service itself reads, so the two cannot drift apart. Permissions are regular
expressions over resource names (https://www.rabbitmq.com/docs/access-control):
`configure` to declare or delete, `write` to publish to an exchange or bind a queue,
`read` to consume from a queue or bind from an exchange.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

HASHING = "rabbit_password_hashing_sha256"
"""RabbitMQ's default: base64(salt + sha256(salt + password)) with a 4-byte salt."""

DEFAULT_EXCHANGE = "amq.default"
"""The name RabbitMQ's permission checks give the nameless default exchange."""

EDGE_QUEUE_PREFIX = "ws-edge."
"""Every edge process names its exclusive queue `ws-edge.<node id>`."""

SECRETS = Path("/run/secrets")


class DefinitionsError(Exception):
    """A secret file is missing or unusable; the message names it, never its content."""


def password_hash(password: str) -> str:
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def read_secret(variable: str, default_name: str) -> str:
    """The content of the file named by `variable` (or /run/secrets/<default_name>)."""
    path = Path(os.environ.get(variable) or SECRETS / default_name)
    try:
        value = path.read_text().removesuffix("\n")
    except OSError as exc:
        raise DefinitionsError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise DefinitionsError(f"{variable}: {path} is empty")
    return value


def credentials(variable: str, default_name: str) -> tuple[str, str, str]:
    """User, password and vhost from an AMQP URL file."""
    url = urlsplit(read_secret(variable, default_name))
    if url.scheme not in ("amqp", "amqps") or not url.username or not url.password:
        raise DefinitionsError(f"{variable}: not an amqp://user:password@host/ URL")
    vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
    return unquote(url.username), unquote(url.password), vhost


def exact(*names: str) -> str:
    """A permission regex matching exactly these names (and `prefix.*` for a trailing `.`)."""
    parts = [re.escape(n) + ".*" if n.endswith(".") else re.escape(n) for n in names]
    return "^(" + "|".join(parts) + ")$"


def definitions(environ: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    exchange = environ.get("REALTIME_EXCHANGE") or "realtime"
    inbound = environ.get("REALTIME_INBOUND_EXCHANGE") or "realtime.inbound"
    history = f"{exchange}.history.notifications"
    edge_user, edge_password, vhost = credentials("EDGE_AMQP_URL_FILE", "edge_amqp_url")
    api_user, api_password, api_vhost = credentials(
        "NOTIFICATIONS_AMQP_URL_FILE", "notifications_amqp_url"
    )
    admin_user = environ.get("RABBITMQ_ADMIN_USER") or "admin"
    admin_password = read_secret("RABBITMQ_ADMIN_PASSWORD_FILE", "rabbitmq_admin_password")
    if api_vhost != vhost:
        raise DefinitionsError("the edge's and notifications' AMQP URLs name different vhosts")
    if len({edge_user, api_user, admin_user}) < 3:
        raise DefinitionsError("the edge, notifications and admin users need distinct names")

    def user(name: str, password: str, tags: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "password_hash": password_hash(password),
            "hashing_algorithm": HASHING,
            "tags": tags,
        }

    def grant(name: str, configure: str, write: str, read: str) -> dict[str, Any]:
        return {"user": name, "vhost": vhost, "configure": configure, "write": write, "read": read}

    return {
        "users": [
            # The operator's, for the management UI; no service connects with it.
            user(admin_user, admin_password, ["administrator"]),
            user(edge_user, edge_password, []),
            user(api_user, api_password, []),
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            grant(admin_user, ".*", ".*", ".*"),
            # Its own queues; the exchanges it declares; binds from `realtime` (read);
            # publishes client messages to the inbound exchange and history requests
            # through the default exchange (write; answers come by direct reply-to, which
            # needs no grant). It cannot publish to `realtime`.
            grant(
                edge_user,
                configure=exact(EDGE_QUEUE_PREFIX, exchange, inbound),
                write=exact(EDGE_QUEUE_PREFIX, inbound, DEFAULT_EXCHANGE),
                read=exact(EDGE_QUEUE_PREFIX, exchange),
            ),
            # Declares and publishes to `realtime`; owns its history queue (declare,
            # consume) and answers history requests through the default exchange.
            grant(
                api_user,
                configure=exact(exchange, history),
                write=exact(exchange, DEFAULT_EXCHANGE),
                read=exact(history),
            ),
        ],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTPUT", file=sys.stderr)
        return 2
    try:
        document = definitions(dict(os.environ))
    except DefinitionsError as exc:
        print(f"rabbitmq definitions: {exc} (deploy/make-secrets.sh writes them)", file=sys.stderr)
        return 1
    output = Path(argv[1])
    partial = output.with_name(output.name + ".partial")
    # Readable by the broker's own user; the password hashes are salted.
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.chmod(0o644)
    partial.replace(output)  # the broker never reads a half-written file
    names = [user["name"] for user in document["users"]]
    print(f"rabbitmq definitions: users {', '.join(names)} written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
