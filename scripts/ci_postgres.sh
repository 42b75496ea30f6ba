#!/usr/bin/env bash
# A throwaway PostgreSQL server for the leaderboard tests: a fresh cluster in a temp dir, listening on
# 127.0.0.1 on a free port, with one empty database. Exports (and prints)
#   NANORESEARCH_TEST_PG_URL=postgresql://postgres@127.0.0.1:PORT/nanoresearch_test
#
#   source scripts/ci_postgres.sh   # CI: the server is stopped and deleted when the sourcing shell exits
#   bash scripts/ci_postgres.sh     # by hand: the server keeps running; the stop command is printed
#
# Installs Debian's `postgresql` when no server binaries are found (needs root). initdb refuses to run
# as root, so as root the cluster belongs to the `postgres` user. Durability is off (fsync, synchronous
# commit): the data is thrown away, and the tests and CI run faster for it.

_nanoresearch_pg_main() {
    local bindir="" candidate
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$candidate/initdb" ]; then bindir=$candidate; break; fi
    done
    if [ -z "$bindir" ] && command -v initdb >/dev/null 2>&1; then
        bindir=$(dirname "$(command -v initdb)")
    fi
    if [ -z "$bindir" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "ci_postgres: no PostgreSQL server found and not root: install postgresql" >&2
            return 1
        fi
        echo "ci_postgres: installing postgresql (apt-get)" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || {
            echo "ci_postgres: apt-get install postgresql failed" >&2; return 1; }
        bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V -r | head -n 1)
    fi

    local dir port
    dir=$(mktemp -d "${TMPDIR:-/tmp}/nanoresearch-pg.XXXXXX") || return 1
    # A free port: bind to port 0 and read what the kernel picked.
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || return 1

    local as_owner=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
        as_owner=(runuser -u postgres --)
    fi
    "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
        echo "ci_postgres: initdb failed, see $dir/initdb.log" >&2; return 1; }
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null || {
        echo "ci_postgres: server did not start, see $dir/server.log" >&2; return 1; }
    "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE nanoresearch_test" >/dev/null || {
        echo "ci_postgres: could not create the test database" >&2; return 1; }

    NANORESEARCH_PG_DIR=$dir
    NANORESEARCH_PG_STOP="${as_owner[*]} $bindir/pg_ctl -D $dir/data -m immediate stop >/dev/null; rm -rf $dir"
    export NANORESEARCH_TEST_PG_URL="postgresql://postgres@127.0.0.1:$port/nanoresearch_test"
    echo "NANORESEARCH_TEST_PG_URL=$NANORESEARCH_TEST_PG_URL"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    _nanoresearch_pg_main || return 1
    trap 'eval "$NANORESEARCH_PG_STOP"' EXIT
else
    _nanoresearch_pg_main || exit 1
    echo "stop it with: $NANORESEARCH_PG_STOP" >&2
fi
