#!/usr/bin/env bash
# Writes every secret the compose stack reads, one file each, into deploy/secrets/ (or
# $SECRETS_DIR): random keys and passwords, and the service URLs built from them.
# A file that exists is kept, so running this again only adds what is missing; to change
# one secret, delete its file (or write your own value) and follow docs/operations.md,
# "Changing a secret". Needs openssl.
#
#   deploy/make-secrets.sh && docker compose up -d --build
set -euo pipefail

# Relative paths mean what they mean to compose: from the directory of compose.yaml.
cd "$(dirname "$0")/.."

# A setting from the environment, else from `.env` as compose reads it, else the default.
setting() { # name default
    local value=${!1:-}
    if [ -z "$value" ] && [ -f .env ]; then
        value=$(sed -n "s/^$1=//p" .env | tail -n 1)
    fi
    echo "${value:-$2}"
}

dir=$(setting SECRETS_DIR ./deploy/secrets)
# The URLs name compose.yaml's services and the database; deploy/postgres/10-roles.sh and
# deploy/rabbitmq/definitions.py create the roles and users these files name.
database=$(setting POSTGRES_DB realtime)

umask 077
mkdir -p "$dir"
# Only the operator may list or open the directory on this host. The files inside are
# bind-mounted into containers that read them as their own (non-root) users, and compose
# cannot change a mounted file's owner or mode, so the files themselves are 0644.
chmod 700 "$dir"

random() { openssl rand -hex 32; }

write() { # name value
    local path="$dir/$1"
    if [ -e "$path" ]; then
        echo "make-secrets: kept $path" >&2
        return
    fi
    printf '%s' "$2" >"$path.partial"
    chmod 644 "$path.partial"
    mv "$path.partial" "$path"
    echo "make-secrets: wrote $path" >&2
}

write jwt_secret "$(random)"
# Retired HMAC keys still accepted during a rotation (docs/security.md); empty: none.
write jwt_previous_secrets ""
write edge_amqp_url "amqp://realtime-edge:$(random)@rabbitmq:5672/"
write notifications_amqp_url "amqp://realtime-notifications:$(random)@rabbitmq:5672/"
write rabbitmq_admin_password "$(random)"
write postgres_password "$(random)"
write migrate_database_url "postgresql+asyncpg://realtime_owner:$(random)@postgres:5432/$database"
write notifications_database_url "postgresql+asyncpg://realtime_app:$(random)@postgres:5432/$database"
write grafana_admin_password "$(random)"
