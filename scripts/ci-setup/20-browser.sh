#!/usr/bin/env bash
# The e2e tests drive Debian's Chromium through Playwright (never Playwright's own browser
# downloads, which this network cannot fetch). Idempotent: does nothing when it is there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "20-browser: installing Debian's chromium" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >&2
/usr/bin/chromium --version >&2
