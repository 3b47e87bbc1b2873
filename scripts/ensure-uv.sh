#!/usr/bin/env bash
# Make sure `uv` is on PATH (installs it from PyPI with pip when missing) and print its path.
set -euo pipefail
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
    echo "ensure-uv: installing uv from PyPI" >&2
    python3 -m pip install --quiet --user uv >&2 2>/dev/null \
        || python3 -m pip install --quiet uv >&2 \
        || python3 -m pip install --quiet --break-system-packages uv >&2
    hash -r
fi
command -v uv
