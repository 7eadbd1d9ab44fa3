# shellcheck shell=bash
# Start a local PostgreSQL for the registry tests and export GLMBOT_TEST_PG_URL.
#
# Sourced by .ci/run (as root on Debian 12); also runnable on its own: `bash .ci/postgres.sh`.
# Idempotent and fast when the server already runs: it installs PostgreSQL only if missing,
# starts the Debian cluster (or a private one made with initdb when postgresql-common is absent),
# sets the postgres user's password for TCP logins on 127.0.0.1 and checks that a login works.
# It never calls `exit` (it is sourced): failures print a line on stderr and return 1.

glmbot_pg_setup() {
  local password="${GLMBOT_PG_PASSWORD:-postgres}" port="${GLMBOT_PG_PORT:-5432}"
  local url="postgresql+psycopg://postgres:${password}@127.0.0.1:${port}/postgres"
  local bin ver

  _pg_ok() { PGPASSWORD="$password" PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p "$port" -U postgres -d postgres \
               -tAc 'select 1' >/dev/null 2>&1; }
  _as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$1"; else bash -c "$1"; fi; }

  if command -v psql >/dev/null && _pg_ok; then
    export GLMBOT_TEST_PG_URL="$url"; echo "postgres: already running at 127.0.0.1:${port}"; return 0
  fi

  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bin" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "postgres: not installed and not root; install it: apt-get install -y postgresql" >&2; return 1
    fi
    echo "postgres: installing (apt-get) ..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
      || { echo "postgres: apt-get install postgresql failed" >&2; return 1; }
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$bin" ] || { echo "postgres: installed, but no /usr/lib/postgresql/*/bin found" >&2; return 1; }
  fi
  ver=$(basename "$(dirname "$bin")")

  if command -v pg_ctlcluster >/dev/null; then
    # Debian's postgresql-common: one cluster "main" per version, listening on localhost.
    pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main"' | grep -q . \
      || pg_createcluster "$ver" main --port "$port" >/dev/null
    pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" {print $4}' | grep -q online \
      || pg_ctlcluster "$ver" main start \
      || { echo "postgres: pg_ctlcluster $ver main start failed (see /var/log/postgresql/)" >&2; return 1; }
  else
    local data=/var/lib/postgresql/glmbot-ci
    if [ ! -s "$data/PG_VERSION" ]; then
      mkdir -p "$data" && chown postgres: "$data" 2>/dev/null
      _as_postgres "'$bin/initdb' -D '$data' -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null" \
        || { echo "postgres: initdb $data failed" >&2; return 1; }
    fi
    _as_postgres "'$bin/pg_ctl' -D '$data' status >/dev/null" \
      || _as_postgres "'$bin/pg_ctl' -D '$data' -l '$data/server.log' -w \
            -o '-c listen_addresses=127.0.0.1 -p $port -k /tmp' start >/dev/null" \
      || { echo "postgres: pg_ctl start failed (see $data/server.log)" >&2; return 1; }
  fi

  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 15 \
    || { echo "postgres: server did not accept connections on 127.0.0.1:${port}" >&2; return 1; }
  # Local socket logins are peer/trust for the postgres OS user: set the TCP password from there.
  _as_postgres "psql -q -p $port -h /var/run/postgresql -d postgres -c \"ALTER USER postgres PASSWORD '$password'\"" \
    >/dev/null 2>&1 \
    || _as_postgres "psql -q -p $port -h /tmp -d postgres -c \"ALTER USER postgres PASSWORD '$password'\"" >/dev/null
  _pg_ok || { echo "postgres: cannot log in as postgres on 127.0.0.1:${port}" >&2; return 1; }
  export GLMBOT_TEST_PG_URL="$url"
  echo "postgres: ready at 127.0.0.1:${port} (GLMBOT_TEST_PG_URL exported)"
}

glmbot_pg_setup
glmbot_pg_status=$?
unset -f glmbot_pg_setup _pg_ok _as_postgres
# Sourced: hand the status to the caller; run directly: exit with it.
return "$glmbot_pg_status" 2>/dev/null || exit "$glmbot_pg_status"
