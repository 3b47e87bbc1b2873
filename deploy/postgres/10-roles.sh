#!/usr/bin/env bash
# The notifications database's two roles, from the same URL files the services read:
#   owner (migrate_database_url): owns schema `public` and every table in it; only the
#     one-shot `migrate` connects with it.
#   app (notifications_database_url): reads and writes rows, nothing else (SELECT, INSERT,
#     UPDATE, DELETE, and the sequences behind ids), on today's tables and, through default
#     privileges, on every table the owner creates later.
# Nobody else may connect to the database but the superuser.
#
# The postgres image runs this on the first start of an empty volume (it is mounted in
# /docker-entrypoint-initdb.d). It is idempotent: run it again after changing one of the
# two URL files, or on a volume made before these roles existed (it hands the existing
# tables to the owner):
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-roles.sh
set -euo pipefail

owner_file=${MIGRATE_DATABASE_URL_FILE:-/run/secrets/migrate_database_url}
app_file=${NOTIFICATIONS_DATABASE_URL_FILE:-/run/secrets/notifications_database_url}
database=${POSTGRES_DB:?POSTGRES_DB names the database}

fail() {
    echo "10-roles.sh: $*" >&2
    exit 1
}

# Sets role, password and url_database from a postgresql://role:password@host/db URL file;
# says which file is wrong, never what it holds.
parse() {
    local url
    [ -r "$1" ] || fail "cannot read $1 (deploy/make-secrets.sh writes it)"
    url=$(cat "$1")
    [[ $url =~ ^postgres(ql)?(\+[a-z0-9]+)?://([^:@/]+):([^@]+)@[^/]+/([^?]+) ]] ||
        fail "$1 is not a postgresql://role:password@host/database URL"
    # Percent-decoded, as the services' driver reads the same URL.
    printf -v role '%b' "${BASH_REMATCH[3]//%/\\x}"
    printf -v password '%b' "${BASH_REMATCH[4]//%/\\x}"
    printf -v url_database '%b' "${BASH_REMATCH[5]//%/\\x}"
}

parse "$owner_file"
owner=$role owner_password=$password
[ "$url_database" = "$database" ] || fail "$owner_file names another database than POSTGRES_DB"
parse "$app_file"
app=$role app_password=$password
[ "$url_database" = "$database" ] || fail "$app_file names another database than POSTGRES_DB"
[ "$owner" != "$app" ] || fail "the owner and app roles must differ"

# psql's :'name' and :"name" quote the values as a literal and an identifier.
psql -v ON_ERROR_STOP=1 --quiet --no-psqlrc \
    --username "${POSTGRES_USER:-postgres}" --dbname "$database" \
    --set owner="$owner" --set owner_password="$owner_password" \
    --set app="$app" --set app_password="$app_password" --set database="$database" <<'SQL'
SELECT format('CREATE ROLE %I', wanted.role)
  FROM unnest(ARRAY[:'owner', :'app']) AS wanted(role)
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = wanted.role) \gexec
ALTER ROLE :"owner" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'owner_password';
ALTER ROLE :"app" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'app_password';

REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"owner", :"app";

ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";
-- Tables from before these roles (their sequences and indexes follow them).
SELECT format('ALTER TABLE public.%I OWNER TO %I', tablename, :'owner')
  FROM pg_tables WHERE schemaname = 'public' AND tableowner <> :'owner' \gexec

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";
SQL
echo "10-roles.sh: roles $owner (owner) and $app (rows only) ready in $database" >&2
