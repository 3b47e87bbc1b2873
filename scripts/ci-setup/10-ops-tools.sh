#!/usr/bin/env bash
# The ops tests (tests/ops/) validate compose.yaml and the proxy config with real parsers,
# since no Docker engine runs in CI: Debian's nginx (`nginx -t`, and real traffic through
# it), Debian's docker-compose (`docker-compose config`) and promtool from Debian's
# prometheus (alert rules, their unit tests, the dashboard's queries), and dclint from npm
# (compose.yaml against today's compose-spec schema). hadolint comes from PyPI with the dev
# group. The RabbitMQ and PostgreSQL tests also run Debian's `rabbitmq-server` (a node of
# their own for the broker's users and definitions) and `psql` (the roles script), even
# where the broker and database the other tests use run elsewhere.
# Idempotent: does nothing when all are there.
set -euo pipefail

DCLINT_VERSION=3.1.0
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v dclint >/dev/null 2>&1; then
    echo "10-ops-tools: installing dclint $DCLINT_VERSION from npm" >&2
    as_root npm install --global --no-audit --no-fund --silent "dclint@$DCLINT_VERSION" >&2
fi

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "10-ops-tools: installing Debian packages: ${missing[*]}" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
# --no-install-recommends keeps docker-compose from pulling in the Docker engine.
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
# The packages may start system daemons (nginx on 80, Prometheus on 9090); the tests need
# only the binaries and run their own nginx on free ports.
if command -v service >/dev/null 2>&1; then
    for daemon in nginx prometheus; do as_root service "$daemon" stop >/dev/null 2>&1 || true; done
fi
nginx -v >&2
docker-compose version >&2
promtool --version >&2
