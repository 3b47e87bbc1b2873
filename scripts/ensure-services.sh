#!/usr/bin/env bash
# Make sure RabbitMQ answers (and PostgreSQL when available); print `export` lines for their URLs.
#
#   eval "$(scripts/ensure-services.sh)"
#
# RabbitMQ: uses AMQP_URL when set. Otherwise starts a local `rabbitmq-server` on
# 127.0.0.1:5672 when nothing answers there, installing Debian's package first when
# we are root (or CI=true) and it is missing, then waits until it accepts AMQP.
# PostgreSQL: exports POSTGRES_URL for a local server on 127.0.0.1:5432 when one answers
# (starting an installed cluster if needed); tests that need it skip otherwise, except
# under CI=true, where they fail.
set -euo pipefail

log() { echo "ensure-services: $*" >&2; }

answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # host port seconds
    local deadline=$((SECONDS + $3))
    until answers "$1" "$2"; do
        if ((SECONDS > deadline)); then return 1; fi
        sleep 1
    done
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_install() {
    log "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_rabbitmq() {
    if [ -n "${AMQP_URL:-}" ]; then
        echo "export AMQP_URL='$AMQP_URL'"
        return
    fi
    if ! answers 127.0.0.1 5672; then
        if ! command -v rabbitmq-server >/dev/null 2>&1; then
            if [ "${CI:-}" = true ] || [ "$(id -u)" = 0 ]; then
                apt_install rabbitmq-server
            else
                log "RabbitMQ is not running and not installed."
                log "Install it (sudo apt-get install rabbitmq-server), or run 'docker compose up rabbitmq',"
                log "or set AMQP_URL to a broker you have."
                return 1
            fi
        fi
        log "starting rabbitmq-server"
        as_root rabbitmq-server -detached >&2 || true
        if ! wait_for 127.0.0.1 5672 90; then
            log "RabbitMQ did not start listening on 127.0.0.1:5672 within 90 s"
            return 1
        fi
    fi
    # The port opens before the broker accepts connections; wait for a real AMQP handshake.
    if command -v rabbitmq-diagnostics >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        timeout 90 rabbitmq-diagnostics -q check_port_listener 5672 >/dev/null 2>&1 || true
    fi
    echo "export AMQP_URL='amqp://guest:guest@127.0.0.1:5672/'"
}

ensure_postgres() {
    if [ -n "${POSTGRES_URL:-}" ]; then
        echo "export POSTGRES_URL='$POSTGRES_URL'"
        return
    fi
    if ! answers 127.0.0.1 5432 && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        log "starting the local PostgreSQL cluster"
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >&2 || true
        wait_for 127.0.0.1 5432 30 || true
    fi
    if answers 127.0.0.1 5432; then
        echo "export POSTGRES_URL='postgresql://postgres@127.0.0.1:5432/test'"
    else
        log "PostgreSQL is not running: PostgreSQL tests will be skipped (set POSTGRES_URL to run them)"
    fi
}

ensure_rabbitmq
ensure_postgres
