"""`realtime-token`: print a signed JWT for local use (dev tools, curl, the demo)."""

from __future__ import annotations

import argparse
import sys

from realtime_shared.auth import KeyConfigError, TokenVerifier, issue_token, refuse_weak_key
from realtime_shared.settings import RealtimeSettings, load_settings, split_commas


def _list(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        parts = split_commas(value)
        assert isinstance(parts, list)
        out.extend(parts)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-token",
        description=(
            "Print an HS256 token signed with JWT_SECRET (from the environment or .env), "
            "or with the public development key when --dev is given."
        ),
        epilog="example: realtime-token alice --permissions notification.manage --ttl 600 --dev",
    )
    parser.add_argument("user", help="the token's `sub` (the user id)")
    parser.add_argument(
        "--permissions", nargs="*", metavar="P", help="e.g. notification.manage realtime.admin"
    )
    parser.add_argument(
        "--streams", nargs="*", metavar="S", help="limit the streams the token may subscribe to"
    )
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (3600)")
    parser.add_argument("--dev", action="store_true", help="sign with the development key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(RealtimeSettings, "realtime-token", dev=args.dev)
    secret = settings.effective_jwt_secret()  # with --dev the dev key, whatever is configured
    try:
        verifier = TokenVerifier(algorithms=["HS256"], secret=secret)
        assert secret is not None  # TokenVerifier refuses to go without a key
        if not settings.dev:
            refuse_weak_key("JWT_SECRET", secret)  # as the services would
    except KeyConfigError as exc:
        print(f"realtime-token: {exc}", file=sys.stderr)
        return 2
    token = issue_token(
        args.user,
        secret,
        ttl=args.ttl,
        permissions=_list(args.permissions),
        streams=_list(args.streams) if args.streams is not None else None,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    verifier.verify(token)  # fail here, not at the server, if the claims are unusable
    print(token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
