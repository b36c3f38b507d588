#!/usr/bin/env bash
# MLflow's stores on the cluster's head node, run by cluster.yaml:
#
#   mlflow-db.sh setup   PostgreSQL (MLflow's backend store), the basic-auth user store and
#                        the credentials, all on the head's own disk. Every `ray up` runs it
#                        again, so each step looks before it acts: initdb only into an empty
#                        directory, roles and the database only when missing, credentials
#                        generated once. A new, empty database is filled from the newest dump
#                        on shared storage, so a head replaced after `ray down` keeps history.
#   mlflow-db.sh start   starts PostgreSQL if it is not running (head_start_ray_commands).
#   mlflow-db.sh dump    pg_dump of the backend store to shared storage (cron, nightly), keeping
#                        the newest $GMT_RAY_KEEP_DUMPS.
#
# PostgreSQL listens on no TCP port at all: MLflow and pg_dump on the head reach it through a
# Unix socket, authenticated by the operating system user (peer), so no database password
# exists. The paths default to the cluster's; tests point them at temporary directories.
set -euo pipefail

STATE=${GMT_RAY_STATE:-/var/lib/gmt-ray}  # the head's EBS volume, mounted into the container
SHARED=${GMT_RAY_SHARED:-/mnt/shared}     # EFS, mounted on every node
CREDENTIALS=${GMT_RAY_CREDENTIALS:-$HOME/.gmt-ray/mlflow-credentials}
PG_PORT=${GMT_RAY_PG_PORT:-5432}
KEEP_DUMPS=${GMT_RAY_KEEP_DUMPS:-14}
DATABASE=mlflow
ADMIN=admin

PG=$STATE/postgresql
PGDATA=$PG/data
SOCKET=$PG/run
AUTH=$STATE/mlflow
BACKUPS=$SHARED/mlflow/backups
WORKER_COPY=$SHARED/gmt-ray/secrets/mlflow-credentials  # how worker nodes get the credentials
ME=$(id -un)
PGBIN=${GMT_RAY_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)}

say() { echo "mlflow-db: $*"; }
die() { echo "mlflow-db: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# PostgreSQL refuses to run as root. From / so that it never needs to read our working directory.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else (cd / && sudo -u postgres -- "$@"); fi
}
psql_admin() { as_postgres "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -tA -h "$SOCKET" -p "$PG_PORT" -d postgres "$@"; }
random_secret() { head -c 24 /dev/urandom | base64 | tr '+/' '-_'; }

check_binaries() {
  [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pg_ctl" ] ||
    die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install postgresql (or set GMT_RAY_PG_BINDIR)"
  getent passwd postgres >/dev/null || die "no 'postgres' user (Debian's postgresql package creates it)"
}

start() {
  check_binaries
  if ! as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PG/server.log" -w -t 120 start >/dev/null ||
      die "PostgreSQL did not start; see $PG/server.log"
    say "PostgreSQL started (socket $SOCKET)"
  fi
}

setup_postgres() {
  as_root install -d -m 0755 "$STATE"
  as_root install -d -o postgres -g postgres -m 0755 "$PG" "$SOCKET"
  # A re-created container may have given 'postgres' another uid than the one owning the files.
  if [ -d "$PGDATA" ] && [ "$(stat -c %U "$PGDATA")" != postgres ]; then
    as_root chown -R postgres:postgres "$PGDATA"
  fi
  if ! as_postgres test -s "$PGDATA/PG_VERSION"; then
    as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=reject -E UTF8 \
      --no-locale --no-instructions >/dev/null
    say "initialised a new PostgreSQL cluster in $PGDATA"
  fi
  local data_version server_version
  data_version=$(as_postgres cat "$PGDATA/PG_VERSION")
  server_version=$("$PGBIN/postgres" -V | sed -E 's/.* ([0-9]+).*/\1/')
  [ "$data_version" = "$server_version" ] ||
    die "$PGDATA holds PostgreSQL $data_version data but the installed server is $server_version: move the directory aside and run setup again (it restores the newest dump from $BACKUPS)"

  # Our settings in a file of their own that every run rewrites, so that a changed setting
  # reaches an existing cluster too (with a restart: listen_addresses needs one).
  local settings
  settings="# Written by cluster/mlflow-db.sh on every setup; edit that script instead.
listen_addresses = ''
unix_socket_directories = '$SOCKET'
port = $PG_PORT"
  if [ "$(as_postgres cat "$PGDATA/gmt-ray.conf" 2>/dev/null || true)" != "$settings" ]; then
    printf '%s\n' "$settings" | as_postgres tee "$PGDATA/gmt-ray.conf" >/dev/null
    as_postgres grep -qxF "include 'gmt-ray.conf'" "$PGDATA/postgresql.conf" ||
      echo "include 'gmt-ray.conf'" | as_postgres tee -a "$PGDATA/postgresql.conf" >/dev/null
    if as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
      as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -w -m fast restart -l "$PG/server.log" >/dev/null
    fi
  fi
  start

  # The role is the user that runs the MLflow server and the dumps (peer authentication).
  if [ "$(psql_admin -v name="$ME" <<< "SELECT 1 FROM pg_roles WHERE rolname = :'name'")" != 1 ]; then
    as_postgres "$PGBIN/createuser" -h "$SOCKET" -p "$PG_PORT" "$ME"
  fi
  if [ "$(psql_admin -v name="$DATABASE" <<< "SELECT 1 FROM pg_database WHERE datname = :'name'")" != 1 ]; then
    as_postgres "$PGBIN/createdb" -h "$SOCKET" -p "$PG_PORT" -O "$ME" "$DATABASE"
    say "created database $DATABASE"
    restore_newest_dump
  fi
}

restore_newest_dump() {
  local newest
  newest=$(ls -1 "$BACKUPS/$DATABASE"-*.dump 2>/dev/null | sort | tail -n 1 || true)
  [ -n "$newest" ] || return 0
  say "restoring $newest into the new database"
  if ! "$PGBIN/pg_restore" -h "$SOCKET" -p "$PG_PORT" -d "$DATABASE" --no-owner --single-transaction \
      --exit-on-error "$newest"; then
    # Leave no half-filled database behind: the next run would take it for the real one.
    as_postgres "$PGBIN/dropdb" -h "$SOCKET" -p "$PG_PORT" "$DATABASE"
    die "restoring $newest failed; the database was dropped again (move the dump aside to start empty)"
  fi
}

setup_auth() {
  as_root install -d -o "$ME" -g "$(id -gn)" -m 0700 "$AUTH"
  umask 077
  if [ ! -s "$AUTH/credentials" ]; then
    [ ! -e "$AUTH/basic_auth.db" ] ||
      die "$AUTH/basic_auth.db exists but $AUTH/credentials does not, so nobody knows its admin password: put the credentials file back, or move basic_auth.db aside (its users are lost) and run setup again"
    printf 'MLFLOW_TRACKING_USERNAME=%s\nMLFLOW_TRACKING_PASSWORD=%s\n' "$ADMIN" "$(random_secret)" \
      > "$AUTH/credentials.partial"
    mv "$AUTH/credentials.partial" "$AUTH/credentials"
    say "generated MLflow admin credentials in $AUTH/credentials"
  fi
  # Flask's CSRF key must be the same in every server worker and across restarts.
  [ -s "$AUTH/flask-secret-key" ] || random_secret > "$AUTH/flask-secret-key"
  local password
  password=$(sed -n 's/^MLFLOW_TRACKING_PASSWORD=//p' "$AUTH/credentials")
  # The admin password is not in basic_auth.ini: MLflow reads it from MLFLOW_AUTH_ADMIN_PASSWORD
  # when it first creates the admin in an empty user store, and ships no default.
  cat > "$AUTH/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$AUTH/basic_auth.db
admin_username = $ADMIN
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Every request of every trial carries the login: without the cache each one pays a PBKDF2
# hash (measured 1.7 s per get_run under load, 61 ms without auth).
auth_cache_ttl_seconds = 60
INI
  cat > "$AUTH/server.env" <<ENV
MLFLOW_AUTH_CONFIG_PATH=$AUTH/basic_auth.ini
MLFLOW_AUTH_ADMIN_PASSWORD=$password
MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$AUTH/flask-secret-key")
ENV
  # For the user's shells and the head's Ray processes, and through EFS for the worker
  # nodes (a directory only the cluster's user can open; the nightly dumps beside it hold
  # everything MLflow knows anyway).
  install -d -m 0700 "$(dirname "$CREDENTIALS")" "$(dirname "$WORKER_COPY")"
  install -m 0600 "$AUTH/credentials" "$CREDENTIALS"
  install -m 0600 "$AUTH/credentials" "$WORKER_COPY"
}

dump() {
  check_binaries
  umask 077
  install -d -m 0700 "$BACKUPS"
  out="$BACKUPS/$DATABASE-$(date -u +%Y%m%dT%H%M%SZ).dump"
  trap 'rm -f "$out.partial"' EXIT
  "$PGBIN/pg_dump" -h "$SOCKET" -p "$PG_PORT" -Fc -f "$out.partial" "$DATABASE"
  mv "$out.partial" "$out"
  ls -1 "$BACKUPS/$DATABASE"-*.dump | sort | head -n "-$KEEP_DUMPS" | xargs -r rm -f --
  say "dumped $DATABASE to $out"
}

case "${1:-}" in
  setup) check_binaries; setup_postgres; setup_auth ;;
  start) start ;;
  dump) dump ;;
  *) die "usage: $0 setup|start|dump" ;;
esac
