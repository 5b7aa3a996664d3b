#!/usr/bin/env bash
# pgbench TPS and WAL bytes per transaction, side by side on this machine, for:
#   a) PostgreSQL 15 alone: synchronous_commit=on, fsync=on, full_page_writes=on
#   b) the same with a real streaming physical standby (pg_basebackup -R, second
#      Postgres on another port) as its synchronous standby
#   c) PostgreSQL with fsync=off and full_page_writes=off, and tarn (3 safekeepers +
#      proposer via `tarn up`) as its synchronous standby: the configuration tarn is
#      for (DESIGN.md, decision 3)
#   d) `tarn up` with fsync and full_page_writes turned back on, for reference
# Each runs alone (the previous one is stopped first), with the same Postgres settings
# otherwise: pgbench -i -s SCALE, CHECKPOINT, then pgbench -n -c CLIENTS -j CLIENTS
# -T DURATION. WAL bytes per transaction = pg_current_wal_lsn() delta / transactions.
#
# `tarn up` runs Postgres with fsync and full_page_writes off (its compute is rebuilt
# from the pageserver after a crash); (c) makes sure of it and (d) turns both back on
# with ALTER SYSTEM + pg_reload_conf() (both are reloadable).
#
# As root, Postgres (initdb, pg_ctl, pg_basebackup) runs as the `postgres` user, as
# tarn does. Not run by CI.
#
# WORKLOAD=tpcc runs the TPC-C-like workload of tests/data/tpcc-lite instead (schema.sql
# with 4 warehouses, then pgbench -f neworder.sql@45 -f payment.sql@43 -f
# delivery.sql@4 -f orderstatus.sql@4 -f stocklevel.sql@4; SCALE is then unused).
#
# Usage: benches/pgbench_sync.sh [DIR]        (default: a new directory under /tmp)
# Environment: DURATION=60 SCALE=10 CLIENTS=4 BASE_PORT=17500 CONFIGS="a b c d"
#   WORKLOAD=pgbench|tpcc
#   KEEP_DATA=1 keeps the data directories (several GB) instead of removing them at exit
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-60}"
SCALE="${SCALE:-10}"
CLIENTS="${CLIENTS:-4}"
BASE_PORT="${BASE_PORT:-17500}"
CONFIGS="${CONFIGS:-a b c d}"
WORKLOAD="${WORKLOAD:-pgbench}"
TPCC_DIR="$PWD/tests/data/tpcc-lite"
case "$WORKLOAD" in pgbench|tpcc) ;; *) echo "WORKLOAD must be pgbench or tpcc" >&2; exit 1 ;; esac
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# Bounds on waits, in 0.1 s polls.
READY_POLLS=1800
STOP_POLLS=1200

say() { echo "pgbench_sync: $*" >&2; }
die() { say "$*"; exit 1; }

[ -x "$PG_BIN/postgres" ] || die "PostgreSQL 15 is missing in $PG_BIN: run scripts/install-postgres.sh"
command -v python3 >/dev/null || die "python3 is needed to format the results"
for var in PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS PGAPPNAME; do
    unset "$var"
done

DIR="${1:-$(mktemp -d /tmp/tarn-bench-pg.XXXXXX)}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
chmod 755 "$DIR"
RESULTS="$DIR/results"
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*

if [ "$(id -u)" -eq 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
    give_to_pg() { chown -R postgres:postgres "$@"; }
else
    as_pg() { "$@"; }
    give_to_pg() { :; }
fi

say "building the release binary"
cargo build --release --bin tarn >&2
TARN="$PWD/target/release/tarn"

psql_at() { # port sql
    "$PG_BIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$2"
}

# Everything started, for the exit trap: data directories and tarn up's pid.
CLUSTERS=()
TARN_UP_PID=""
stop_cluster() {
    as_pg "$PG_BIN/pg_ctl" stop -D "$1" -m fast -w -t 60 >/dev/null 2>&1 ||
        as_pg "$PG_BIN/pg_ctl" stop -D "$1" -m immediate -w >/dev/null 2>&1 || true
}
stop_tarn_up() {
    [ -n "$TARN_UP_PID" ] || return 0
    kill -TERM "$TARN_UP_PID" 2>/dev/null || true
    for _ in $(seq "$STOP_POLLS"); do kill -0 "$TARN_UP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$TARN_UP_PID" 2>/dev/null || true
    wait "$TARN_UP_PID" 2>/dev/null || true
    TARN_UP_PID=""
}
cleanup() {
    stop_tarn_up
    for d in "${CLUSTERS[@]}"; do stop_cluster "$d"; done
    if [ "${KEEP_DATA:-0}" != 1 ]; then
        rm -rf "$DIR/a-alone" "$DIR/b-primary" "$DIR/b-standby" "$DIR/c-tarn" "$DIR/d-tarn"
    fi
}
trap cleanup EXIT

init_cluster() { # dir port [extra settings...]
    local dir="$1" port="$2"
    shift 2
    mkdir -p "$dir"
    give_to_pg "$dir"
    chmod 700 "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir" -A trust -U postgres -E UTF8 --locale=C --no-instructions \
        >"$dir.initdb.log" 2>&1
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = ''"
        echo "wal_level = replica"
        echo "max_wal_senders = 10"
        echo "wal_keep_size = '1GB'"
        echo "synchronous_commit = on"
        echo "fsync = on"
        echo "full_page_writes = on"
        for setting in "$@"; do echo "$setting"; done
    } >>"$dir/postgresql.conf"
}
start_cluster() { # dir
    CLUSTERS+=("$1")
    as_pg "$PG_BIN/pg_ctl" start -D "$1" -l "$1/server.log" -w -t 120 >/dev/null
}
wait_sync_standby() { # port application_name
    for _ in $(seq "$READY_POLLS"); do
        state=$(psql_at "$1" "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$2' AND state = 'streaming'" 2>/dev/null || true)
        [ "$state" = "sync" ] && return 0
        sleep 0.1
    done
    die "$2 did not become the synchronous standby of port $1"
}

# Runs pgbench against the server on PORT and writes RESULTS/LABEL.json.
bench() { # label port
    local label="$1" port="$2"
    local scripts=()
    if [ "$WORKLOAD" = tpcc ]; then
        say "[$label] tpcc-lite schema"
        "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 \
            -f "$TPCC_DIR/schema.sql" >"$RESULTS/$label.init.log" 2>&1
        scripts=(-f "$TPCC_DIR/neworder.sql@45" -f "$TPCC_DIR/payment.sql@43" -f "$TPCC_DIR/delivery.sql@4"
            -f "$TPCC_DIR/orderstatus.sql@4" -f "$TPCC_DIR/stocklevel.sql@4")
    else
        say "[$label] pgbench -i -s $SCALE"
        "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$SCALE" -q postgres \
            >"$RESULTS/$label.init.log" 2>&1
    fi
    psql_at "$port" "CHECKPOINT" >/dev/null
    local settings lsn0 lsn1
    settings=$(psql_at "$port" "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync','full_page_writes','synchronous_commit','synchronous_standby_names')")
    lsn0=$(psql_at "$port" "SELECT pg_current_wal_lsn()")
    say "[$label] pgbench -c $CLIENTS -j $CLIENTS -T $DURATION ($settings)"
    "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$CLIENTS" -j "$CLIENTS" \
        -T "$DURATION" "${scripts[@]}" postgres >"$RESULTS/$label.pgbench.log" 2>&1
    lsn1=$(psql_at "$port" "SELECT pg_current_wal_lsn()")
    local wal_bytes
    wal_bytes=$(psql_at "$port" "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
    python3 - "$RESULTS/$label.pgbench.log" "$wal_bytes" "$settings" >"$RESULTS/$label.json" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text).group(1))
tx = int(re.search(r"number of transactions actually processed: (\d+)", text).group(1))
lat = re.search(r"latency average = ([0-9.]+) ms", text)
wal = int(sys.argv[2])
print(json.dumps({"tps": tps, "transactions": tx, "wal_bytes": wal,
                  "wal_bytes_per_tx": wal / tx if tx else 0,
                  "latency_avg_ms": float(lat.group(1)) if lat else None,
                  "settings": sys.argv[3]}))
EOF
    say "[$label] $(cat "$RESULTS/$label.json")"
}

run_a() {
    local d="$DIR/a-alone" port=$((BASE_PORT + 1))
    init_cluster "$d" "$port"
    start_cluster "$d"
    bench a "$port"
    stop_cluster "$d"
}

run_b() {
    local p="$DIR/b-primary" s="$DIR/b-standby"
    local pport=$((BASE_PORT + 2)) sport=$((BASE_PORT + 3))
    init_cluster "$p" "$pport" "synchronous_standby_names = 'bench_standby'"
    start_cluster "$p"
    say "[b] pg_basebackup -R into $s"
    mkdir -p "$s"
    give_to_pg "$s"
    chmod 700 "$s"
    as_pg "$PG_BIN/pg_basebackup" -D "$s" -h 127.0.0.1 -p "$pport" -U postgres -R -X stream \
        -c fast >"$s.basebackup.log" 2>&1
    # -R wrote primary_conninfo; this one (later in the file, so it wins) also names the
    # standby the way synchronous_standby_names does, and moves it to its own port.
    {
        echo "port = $sport"
        echo "primary_conninfo = 'host=127.0.0.1 port=$pport user=postgres application_name=bench_standby'"
    } >>"$s/postgresql.auto.conf"
    start_cluster "$s"
    wait_sync_standby "$pport" bench_standby
    bench b "$pport"
    stop_cluster "$p"
    stop_cluster "$s"
}

run_tarn() { # label fsync_off(0|1)
    local label="$1" fsync_off="$2"
    local d="$DIR/$label-tarn" port=$((BASE_PORT + 10))
    rm -rf "$d"
    say "[$label] tarn up --dir $d --port $port"
    "$TARN" up --dir "$d" --port "$port" >"$DIR/$label-tarn.stdout" 2>"$DIR/$label-tarn.stderr" &
    TARN_UP_PID=$!
    for n in $(seq "$READY_POLLS"); do
        grep -q '^psql ' "$DIR/$label-tarn.stdout" 2>/dev/null && break
        kill -0 "$TARN_UP_PID" 2>/dev/null || die "tarn up exited; see $DIR/$label-tarn.stderr"
        [ "$n" -eq "$READY_POLLS" ] && die "tarn up was not ready; see $DIR/$label-tarn.stderr"
        sleep 0.1
    done
    # tarn up runs Postgres with both off; (d) turns them back on for reference.
    local want=off
    [ "$fsync_off" = 1 ] || want=on
    psql_at "$port" "ALTER SYSTEM SET fsync = $want" >/dev/null
    psql_at "$port" "ALTER SYSTEM SET full_page_writes = $want" >/dev/null
    psql_at "$port" "SELECT pg_reload_conf()" >/dev/null
    for n in $(seq "$READY_POLLS"); do
        [ "$(psql_at "$port" "SHOW fsync")/$(psql_at "$port" "SHOW full_page_writes")" = "$want/$want" ] && break
        [ "$n" -eq "$READY_POLLS" ] && die "fsync/full_page_writes did not turn $want"
        sleep 0.1
    done
    wait_sync_standby "$port" tarn_proposer
    bench "$label" "$port"
    "$TARN" status --dir "$d" >"$RESULTS/$label.status.txt" 2>&1 || true
    stop_tarn_up
}

for config in $CONFIGS; do
    case "$config" in
        a) run_a ;;
        b) run_b ;;
        c) run_tarn c 1 ;;
        d) run_tarn d 0 ;;
        *) die "unknown config $config (a, b, c or d)" ;;
    esac
done

python3 - "$RESULTS" "$DURATION" "$SCALE" "$CLIENTS" "$WORKLOAD" <<'EOF'
import json, os, sys
res, duration, scale, clients, workload = sys.argv[1:]
names = {
    "a": "Postgres alone (fsync on, FPW on)",
    "b": "Postgres + streaming sync standby",
    "c": "Postgres fsync/FPW off + tarn",
    "d": "Postgres fsync/FPW on + tarn",
}
rows = {}
for k in "abcd":
    p = os.path.join(res, f"{k}.json")
    if os.path.exists(p):
        rows[k] = json.load(open(p))
what = f"pgbench -s {scale}" if workload == "pgbench" else "TPC-C-like (tpcc-lite, 4 warehouses)"
print(f"{what}, {clients} clients, {duration} s each, one after another on this machine")
print(f"{'':<3}{'configuration':<38}{'TPS':>9}{'avg ms':>9}{'WAL B/tx':>10}")
for k, r in rows.items():
    print(f"{k+')':<3}{names[k]:<38}{r['tps']:>9.1f}{r['latency_avg_ms'] or 0:>9.2f}{r['wal_bytes_per_tx']:>10.0f}")
for num, den in (("c", "b"), ("c", "a"), ("d", "b")):
    if num in rows and den in rows:
        print(f"TPS {num}/{den} = {rows[num]['tps'] / rows[den]['tps']:.2f}")
EOF
say "raw results in $RESULTS"
