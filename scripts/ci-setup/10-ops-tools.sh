#!/usr/bin/env bash
# The ops tests (tests/ops/) validate compose.yaml and the proxy config with real parsers,
# since no Docker engine runs in CI: Debian's nginx (`nginx -t`, and real traffic through
# it) and Debian's docker-compose (`docker-compose config`). hadolint comes from PyPI with
# the dev group. Idempotent: does nothing when both are there.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "10-ops-tools: installing Debian packages: ${missing[*]}" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
# --no-install-recommends keeps docker-compose from pulling in the Docker engine.
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
# The package may start a system nginx on port 80; the tests run their own on free ports.
if command -v service >/dev/null 2>&1; then as_root service nginx stop >/dev/null 2>&1 || true; fi
nginx -v >&2
docker-compose version >&2
