#!/usr/bin/env bash
# GetPage@LSN latency and throughput of the pageserver that `tarn up` runs, against a
# baseline of the same number of 8 KiB `pread`s of Postgres's own data file of the
# same relation (page cache warm), with the same block selection and concurrency.
#
# Steps: `tarn up`, pgbench -i -s SCALE, CHECKPOINT (MIN_LSN = the LSN here), pgbench
# -T HISTORY_SECS to create history, CHECKPOINT, wait until the pageserver has
# ingested it all. Then, on pgbench_accounts, for LSN in {latest, historic (random in
# [MIN_LSN, latest])} × blocks in {random, hot set 10 %} × concurrency in {1, 4}:
# `tarn loadgen getpage` for DURATION seconds, then `tarn loadgen getpage
# --pread-file` for as many reads. Everything started is stopped at exit. Not run by CI.
#
# Usage: benches/getpage.sh [DIR]      (default /tmp/tarn-bench-gp; removed first)
# Environment: PORT=58432 SCALE=10 HISTORY_SECS=20 DURATION=10 WARMUP=1 PIPELINE=1
#   HOT_SET=0.1 CONCURRENCY="1 4" KEEP_DATA=1 keeps DIR's data directories
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-58432}"
SCALE="${SCALE:-10}"
HISTORY_SECS="${HISTORY_SECS:-20}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-1}"
PIPELINE="${PIPELINE:-1}"
HOT_SET="${HOT_SET:-0.1}"
CONCURRENCY="${CONCURRENCY:-1 4}"
PS_ADDR="127.0.0.1:$((PORT + 4))"
READY_POLLS=1800
STOP_POLLS=1200

say() { echo "getpage: $*" >&2; }
die() { say "$*"; exit 1; }
command -v pgbench >/dev/null || die "pgbench is missing"
command -v python3 >/dev/null || die "python3 is needed to format the results"
for var in PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS PGAPPNAME; do
    unset "$var"
done

DIR="${1:-/tmp/tarn-bench-gp}"
rm -rf "$DIR"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
chmod 755 "$DIR"
RESULTS="$DIR/results"
mkdir -p "$RESULTS"

say "building the release binary"
cargo build --release --bin tarn >&2
TARN="$PWD/target/release/tarn"

TARN_UP_PID=""
cleanup() {
    if [ -n "$TARN_UP_PID" ]; then
        kill -TERM "$TARN_UP_PID" 2>/dev/null || true
        for _ in $(seq "$STOP_POLLS"); do kill -0 "$TARN_UP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TARN_UP_PID" 2>/dev/null || true
        wait "$TARN_UP_PID" 2>/dev/null || true
    fi
    [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$DIR/cluster"
}
trap cleanup EXIT

say "tarn up --dir $DIR/cluster --port $PORT"
"$TARN" up --dir "$DIR/cluster" --port "$PORT" >"$DIR/tarn.stdout" 2>"$DIR/tarn.stderr" &
TARN_UP_PID=$!
for n in $(seq "$READY_POLLS"); do
    grep -q '^psql ' "$DIR/tarn.stdout" 2>/dev/null && break
    kill -0 "$TARN_UP_PID" 2>/dev/null || die "tarn up exited; see $DIR/tarn.stderr"
    [ "$n" -eq "$READY_POLLS" ] && die "tarn up was not ready; see $DIR/tarn.stderr"
    sleep 0.1
done

sql() { psql -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
say "pgbench -i -s $SCALE"
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$DIR/pgbench-init.log" 2>&1
sql "CHECKPOINT" >/dev/null
MIN_LSN="$(sql "SELECT pg_current_wal_lsn()")"
say "pgbench -T $HISTORY_SECS (history above $MIN_LSN)"
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -c 4 -j 4 -T "$HISTORY_SECS" postgres >"$DIR/pgbench-run.log" 2>&1
sql "CHECKPOINT" >/dev/null
END_LSN="$(sql "SELECT pg_current_wal_lsn()")"
REL="$(sql "SELECT coalesce(nullif(c.reltablespace, 0), (SELECT oid FROM pg_tablespace WHERE spcname = 'pg_default')) || '/' || d.oid || '/' || pg_relation_filenode(c.oid) FROM pg_class c, pg_database d WHERE c.relname = 'pgbench_accounts' AND d.datname = current_database()")"
FILE="$(sql "SHOW data_directory")/$(sql "SELECT pg_relation_filepath('pgbench_accounts')")"
[ -f "$FILE" ] || die "no data file $FILE"
[ -e "$FILE.1" ] && die "$FILE has more than one segment: use a smaller SCALE"

say "waiting for the pageserver to ingest up to $END_LSN"
for n in $(seq 60); do
    BLOCKS="$("$TARN" getpage --pageserver "$PS_ADDR" --rel "$REL" --size --lsn "$END_LSN" 2>/dev/null)" && break
    [ "$n" -eq 60 ] && die "the pageserver did not reach $END_LSN"
    sleep 1
done
MIN_BLOCKS="$("$TARN" getpage --pageserver "$PS_ADDR" --rel "$REL" --size --lsn "$MIN_LSN")"
FILE_BLOCKS=$(( $(stat -c %s "$FILE") / 8192 ))
say "rel $REL: $MIN_BLOCKS blocks at $MIN_LSN and $BLOCKS at $END_LSN in the pageserver, $FILE_BLOCKS in $FILE"
# Read the same blocks in every case: those that exist at MIN_LSN (the relation grows
# during the history; a block read before it existed is BeyondEof) and in the file.
BLOCKS=$(( BLOCKS < FILE_BLOCKS ? BLOCKS : FILE_BLOCKS ))
BLOCKS=$(( BLOCKS < MIN_BLOCKS ? BLOCKS : MIN_BLOCKS ))
cat "$FILE" >/dev/null # warm the page cache
cat >"$RESULTS/setup.txt" <<EOF
rel=$REL file=$FILE blocks=$BLOCKS min_lsn=$MIN_LSN end_lsn=$END_LSN scale=$SCALE history_secs=$HISTORY_SECS
EOF

for lsn in latest historic; do
    for set in random hot; do
        for c in $CONCURRENCY; do
            name="$lsn-$set-c$c"
            args=(--rel "$REL" --blocks "$BLOCKS" --concurrency "$c" --warmup "$WARMUP" --json)
            [ "$set" = hot ] && args+=(--hot-set "$HOT_SET")
            lsn_args=(--lsn "$lsn")
            [ "$lsn" = historic ] && lsn_args+=(--min-lsn "$MIN_LSN")
            say "$name: getpage"
            "$TARN" loadgen getpage --pageserver "$PS_ADDR" "${args[@]}" "${lsn_args[@]}" \
                --pipeline "$PIPELINE" --duration "$DURATION" >"$RESULTS/$name.getpage.json"
            pages="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pages"])' "$RESULTS/$name.getpage.json")"
            say "$name: pread × $pages"
            "$TARN" loadgen getpage --pread-file "$FILE" "${args[@]}" --requests "$pages" \
                >"$RESULTS/$name.pread.json"
        done
    done
done

python3 - "$RESULTS" "$CONCURRENCY" <<'EOF'
import json, sys
results, concurrency = sys.argv[1], sys.argv[2].split()
print(open(f"{results}/setup.txt").read().strip())
print()
print("| LSN | blocks | conns | GetPage pages/s | p50 | p90 | p99 | p99.9 | max | errors | pread pages/s | pread p50 | pread p99 | p50 ratio | p99 ratio | throughput ratio |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for lsn in ("latest", "historic"):
    for s in ("random", "hot"):
        for c in concurrency:
            g = json.load(open(f"{results}/{lsn}-{s}-c{c}.getpage.json"))
            p = json.load(open(f"{results}/{lsn}-{s}-c{c}.pread.json"))
            gl, pl = g["latency"], p["latency"]
            blocks = "all %d" % g["blocks"] if s == "random" else "hot %d" % g["hot_blocks"]
            print(f"| {lsn} | {blocks} | {c} | {g['pages_per_sec']:.0f} | {gl['p50_us']:.0f} | {gl['p90_us']:.0f} | "
                  f"{gl['p99_us']:.0f} | {gl['p999_us']:.0f} | {gl['max_us']:.0f} | {g['errors']} | "
                  f"{p['pages_per_sec']:.0f} | {pl['p50_us']:.1f} | {pl['p99_us']:.1f} | "
                  f"{gl['p50_us'] / pl['p50_us']:.0f}× | {gl['p99_us'] / pl['p99_us']:.0f}× | "
                  f"{p['pages_per_sec'] / g['pages_per_sec']:.0f}× |")
EOF
"$TARN" status --dir "$DIR/cluster" >"$RESULTS/status.txt" 2>&1 || true
