#!/usr/bin/env bash
# WAL ingest MB/s per core, in-process GetPage@LSN latency by chain length (hot and
# cold), and the effect of the image pushdown threshold, on real PostgreSQL 15 WAL.
# Every figure comes with a baseline measured side by side in the same process
# (`tarn loadgen ingest`): WAL read + decode without a store for ingest, an 8 KiB
# memcpy and an 8 KiB pread of the store's own layer files for GetPage.
#
# Steps: initdb a fresh cluster; copy its data directory as initdb left it (the base:
# cleanly shut down, the catalogs bootstrap wrote without WAL) and its pg_controldata;
# start Postgres with full_page_writes=off and wal_level=replica (and fsync and
# synchronous_commit off: the WAL is the same, the run is faster); pgbench -i -s SCALE,
# pgbench -T DURATION; stop cleanly. Then `tarn loadgen ingest` on (base, pg_wal).
# Everything started is stopped at exit. Not run by CI.
#
# Usage: benches/ingest.sh [DIR]          (default /tmp/tarn-bench-ingest; removed first)
# Environment: SCALE=10 DURATION=30 CLIENTS=2 PORT=(a free loopback port)
#   TRANSACTIONS=N runs pgbench -t N (per client) instead of -T DURATION: the same WAL
#   size whatever the machine's load
#   THRESHOLDS=4,16,64,off CHAIN_THRESHOLD=64 CHAIN_LENGTHS=0,4,16 CHAIN_SAMPLES=300
#   HOT_PASSES=20 COLD_READS=200 SAMPLE_BLOCKS=2000 COLD_SAMPLE=200 SEED=1
#   KEEP_DATA=1 keeps DIR's data directories and stores;
#   REUSE_WAL=1 reuses DIR's base and WAL from an earlier KEEP_DATA=1 run (no Postgres)
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE="${SCALE:-10}"
DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-2}"
THRESHOLDS="${THRESHOLDS:-4,16,64,off}"
CHAIN_THRESHOLD="${CHAIN_THRESHOLD:-64}"
CHAIN_LENGTHS="${CHAIN_LENGTHS:-0,4,16}"
CHAIN_SAMPLES="${CHAIN_SAMPLES:-300}"
HOT_PASSES="${HOT_PASSES:-20}"
COLD_READS="${COLD_READS:-200}"
SAMPLE_BLOCKS="${SAMPLE_BLOCKS:-2000}"
COLD_SAMPLE="${COLD_SAMPLE:-200}"
SEED="${SEED:-1}"
STOP_POLLS=600

say() { echo "ingest: $*" >&2; }
die() { say "$*"; exit 1; }
command -v python3 >/dev/null || die "python3 is needed to find a free port"
for var in PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS PGAPPNAME; do
    unset "$var"
done

# PostgreSQL 15 as tarn finds it (server/src/postgres.rs, PgBinaries::locate).
if [ -n "${TARN_PG_BIN_DIR:-}" ]; then
    PG_BIN="$TARN_PG_BIN_DIR"
elif [ -x /usr/lib/postgresql/15/bin/postgres ]; then
    PG_BIN=/usr/lib/postgresql/15/bin
elif command -v pg_config >/dev/null && pg_config --version | grep -q 'PostgreSQL 15'; then
    PG_BIN="$(pg_config --bindir)"
else
    die "PostgreSQL 15 is missing: run scripts/install-postgres.sh or set TARN_PG_BIN_DIR"
fi
"$PG_BIN/postgres" --version | grep -q 'PostgreSQL) 15' || die "$PG_BIN/postgres is not PostgreSQL 15"

DIR="${1:-/tmp/tarn-bench-ingest}"
if [ "${REUSE_WAL:-0}" != 1 ]; then
    rm -rf "$DIR"
fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
chmod 755 "$DIR"
PGDATA_DIR="$DIR/pgdata"
BASE_DIR="$DIR/base"
WORK_DIR="$DIR/work"

if [ "$(id -u)" -eq 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
    give_to_pg() { chown -R postgres:postgres "$@"; }
else
    as_pg() { "$@"; }
    give_to_pg() { :; }
fi

PG_STARTED=0
cleanup() {
    if [ "$PG_STARTED" = 1 ]; then
        as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t 60 >/dev/null 2>&1 ||
            as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w >/dev/null 2>&1 || true
    fi
    if [ "${KEEP_DATA:-0}" != 1 ]; then
        rm -rf "$PGDATA_DIR" "$BASE_DIR" "$WORK_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building the release binary"
cargo build --release --bin tarn >&2
TARN="$PWD/target/release/tarn"

controldata() { LC_ALL=C "$PG_BIN/pg_controldata" -D "$1"; }
control_field() { # file name
    sed -n "s/^$2: *//p" "$1"
}

if [ "${REUSE_WAL:-0}" = 1 ] && [ -f "$DIR/end.controldata" ] && [ -f "$DIR/rels.txt" ] &&
    [ -f "$DIR/workload.txt" ]; then
    say "reusing the base and WAL in $DIR"
else
    [ "${REUSE_WAL:-0}" = 1 ] && die "REUSE_WAL=1 but $DIR holds no complete earlier run"
    PORT="${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    mkdir -p "$PGDATA_DIR"
    give_to_pg "$PGDATA_DIR"
    chmod 700 "$PGDATA_DIR"
    say "initdb $PGDATA_DIR"
    as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres -E UTF8 --locale=C \
        --no-instructions >"$DIR/initdb.log" 2>&1
    # The base: the files as initdb left them, before the first start.
    cp -a "$PGDATA_DIR" "$BASE_DIR"
    controldata "$BASE_DIR" >"$DIR/base.controldata"
    [ "$(control_field "$DIR/base.controldata" "Database cluster state")" = "shut down" ] ||
        die "the base is not cleanly shut down"
    {
        echo "port = $PORT"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = ''"
        echo "wal_level = replica"
        echo "full_page_writes = off"
        echo "fsync = off"
        echo "synchronous_commit = off"
        # Keep every segment from the base on: no removal or recycling.
        echo "wal_keep_size = '64GB'"
        echo "max_wal_size = '64GB'"
        echo "checkpoint_timeout = '1h'"
    } >>"$PGDATA_DIR/postgresql.conf"
    say "starting Postgres on 127.0.0.1:$PORT"
    : >"$DIR/postgres.log"
    give_to_pg "$DIR/postgres.log"
    PG_STARTED=1
    as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA_DIR" -l "$DIR/postgres.log" -w -t 120 >/dev/null
    pgb() { "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
    sql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
    say "pgbench -i -s $SCALE"
    pgb -i -s "$SCALE" -q postgres >"$DIR/pgbench-init.log" 2>&1
    if [ -n "${TRANSACTIONS:-}" ]; then
        RUN_ARGS=(-t "$TRANSACTIONS")
    else
        RUN_ARGS=(-T "$DURATION")
    fi
    say "pgbench -c $CLIENTS ${RUN_ARGS[*]}"
    echo "pgbench -i -s $SCALE, then pgbench -n -c $CLIENTS -j $CLIENTS ${RUN_ARGS[*]}" >"$DIR/workload.txt"
    pgb -n -c "$CLIENTS" -j "$CLIENTS" "${RUN_ARGS[@]}" postgres >"$DIR/pgbench-run.log" 2>&1
    sql "SELECT c.relname || '=' || coalesce(nullif(c.reltablespace, 0), (SELECT oid FROM pg_tablespace WHERE spcname = 'pg_default')) || '/' || d.oid || '/' || pg_relation_filenode(c.oid)
         FROM pg_class c, pg_database d
         WHERE c.relname IN ('pgbench_accounts', 'pgbench_history', 'pgbench_branches', 'pgbench_tellers', 'pgbench_accounts_pkey')
           AND d.datname = current_database() ORDER BY c.relname" >"$DIR/rels.txt"
    say "stopping Postgres"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t 120 >/dev/null
    PG_STARTED=0
    controldata "$PGDATA_DIR" >"$DIR/end.controldata"
    [ "$(control_field "$DIR/end.controldata" "Database cluster state")" = "shut down" ] ||
        die "Postgres did not shut down cleanly"
fi

END_LSN="$(control_field "$DIR/end.controldata" "Latest checkpoint location")"
REL_ARGS=()
while IFS= read -r rel; do
    [ -n "$rel" ] && REL_ARGS+=(--rel "${rel#pgbench_}")
done <"$DIR/rels.txt"
[ "${#REL_ARGS[@]}" -gt 0 ] || die "no pgbench relations in $DIR/rels.txt"

EXTRA_ARGS=()
if [ "${KEEP_DATA:-0}" = 1 ]; then
    EXTRA_ARGS+=(--keep-stores)
fi
rm -rf "$WORK_DIR"
say "tarn loadgen ingest (WAL up to the shutdown checkpoint at $END_LSN)"
echo "$(cat "$DIR/workload.txt"): $(grep -E '^(tps|number of transactions actually processed)' "$DIR/pgbench-run.log" | tr '\n' ' ')"
echo
"$TARN" loadgen ingest \
    --base-datadir "$BASE_DIR" --controldata "$DIR/base.controldata" \
    --wal-dir "$PGDATA_DIR/pg_wal" --end-lsn "$END_LSN" --work-dir "$WORK_DIR" \
    "${REL_ARGS[@]}" \
    --thresholds "$THRESHOLDS" --chain-threshold "$CHAIN_THRESHOLD" \
    --chain-lengths "$CHAIN_LENGTHS" --chain-samples "$CHAIN_SAMPLES" \
    --hot-passes "$HOT_PASSES" --cold-reads "$COLD_READS" \
    --sample-blocks "$SAMPLE_BLOCKS" --cold-sample "$COLD_SAMPLE" --seed "$SEED" \
    "${EXTRA_ARGS[@]}" | tee "$DIR/results.md"
