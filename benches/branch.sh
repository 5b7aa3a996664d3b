#!/usr/bin/env bash
# Branch creation and endpoint boot time against database size, side by side in one
# run of `tarn up`: the same steps on an empty database (a branch of main right after
# initdb) and on a database grown with `pgbench -i -s SCALE` (~15 MB per scale unit).
#
# For each size: `tarn branch create` (the pageserver's own time, printed by the
# command, and the command's wall time), then `tarn endpoint start` on the branch (the
# time from asking for the basebackup to Postgres accepting connections, printed by the
# command, and the command's wall time, which includes becoming the proposer's sync
# standby), then `tarn endpoint stop`. Everything started is stopped at exit. Not run
# by CI.
#
# Before each size, the script waits until the pageserver has ingested all of
# Postgres's WAL and creates one unmeasured branch (see `settle`).
#
# Usage: benches/branch.sh [DIR]      (default /tmp/tarn-bench-branch; removed first)
# Environment: PORT=58532 SCALE=70 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-58532}"
SCALE="${SCALE:-70}"
ROUNDS="${ROUNDS:-3}"
READY_POLLS=1800
STOP_POLLS=1200

say() { echo "branch: $*" >&2; }
die() { say "$*"; exit 1; }
command -v pgbench >/dev/null || die "pgbench is missing"
for var in PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS PGAPPNAME; do
    unset "$var"
done

DIR="${1:-/tmp/tarn-bench-branch}"
rm -rf "$DIR"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
chmod 755 "$DIR"

say "building the release binary"
cargo build --release --bin tarn >&2
TARN="$PWD/target/release/tarn"
CLUSTER="$DIR/cluster"

TARN_UP_PID=""
ENDPOINTS=()
cleanup() {
    for ep in "${ENDPOINTS[@]}"; do "$TARN" endpoint stop "$ep" --dir "$CLUSTER" >/dev/null 2>&1 || true; done
    if [ -n "$TARN_UP_PID" ]; then
        kill -TERM "$TARN_UP_PID" 2>/dev/null || true
        for _ in $(seq "$STOP_POLLS"); do kill -0 "$TARN_UP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TARN_UP_PID" 2>/dev/null || true
        wait "$TARN_UP_PID" 2>/dev/null || true
    fi
    rm -rf "$CLUSTER"
}
trap cleanup EXIT

say "tarn up --dir $CLUSTER --port $PORT"
"$TARN" up --dir "$CLUSTER" --port "$PORT" >"$DIR/tarn.stdout" 2>"$DIR/tarn.stderr" &
TARN_UP_PID=$!
for n in $(seq "$READY_POLLS"); do
    grep -q '^psql ' "$DIR/tarn.stdout" 2>/dev/null && break
    kill -0 "$TARN_UP_PID" 2>/dev/null || die "tarn up exited; see $DIR/tarn.stderr"
    [ "$n" -eq "$READY_POLLS" ] && die "tarn up was not ready; see $DIR/tarn.stderr"
    sleep 0.1
done
sql() { psql -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

now_ms() { date +%s%3N; }
EP_PORT=$((PORT + 10))
RESULTS="$DIR/results.tsv"
printf 'size\tdb_bytes\tround\tbranch_ms_pageserver\tbranch_ms_wall\tboot_ms\tstart_ms_wall\n' >"$RESULTS"

# Waits until the pageserver has ingested everything Postgres wrote, then creates one
# branch that is not measured: the measured ones then do not include catching up
# (or the first flush of the parent's open layer, which branch creation makes durable).
settle() { # label
    local target ingested
    target="$(sql "SELECT pg_current_wal_lsn()")"
    for n in $(seq 600); do
        ingested="$("$TARN" status --dir "$CLUSTER" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pageserver"]["last_ingested_lsn"] or "")')"
        python3 -c 'import sys; f=lambda s:(int(s.split("/")[0],16)<<32)|int(s.split("/")[1],16); sys.exit(0 if sys.argv[1] and f(sys.argv[1])>=f(sys.argv[2]) else 1)' "$ingested" "$target" && break
        [ "$n" -eq 600 ] && die "the pageserver did not reach $target"
        sleep 0.5
    done
    "$TARN" branch create "$1-warmup" --dir "$CLUSTER" >/dev/null
}

measure() { # size label
    local label="$1" bytes
    settle "$label"
    bytes="$(sql "SELECT pg_database_size('postgres')")"
    for round in $(seq "$ROUNDS"); do
        local name="$label-$round" t0 t1 out ps_ms boot_ms t2 t3
        t0="$(now_ms)"
        out="$("$TARN" branch create "$name" --dir "$CLUSTER")"
        t1="$(now_ms)"
        ps_ms="$(sed -n 's/.* in \([0-9.]*\) ms$/\1/p' <<<"$out")"
        ENDPOINTS+=("$name")
        t2="$(now_ms)"
        out="$("$TARN" endpoint start "$name" --port "$EP_PORT" --dir "$CLUSTER" 2>&1 >/dev/null)"
        t3="$(now_ms)"
        boot_ms="$(sed -n 's/.* in \([0-9]*\) ms$/\1/p' <<<"$out")"
        "$TARN" endpoint stop "$name" --dir "$CLUSTER" >/dev/null
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$bytes" "$round" "$ps_ms" "$((t1 - t0))" "$boot_ms" "$((t3 - t2))" >>"$RESULTS"
        say "$label round $round: branch ${ps_ms} ms (wall $((t1 - t0)) ms), boot ${boot_ms} ms (start wall $((t3 - t2)) ms)"
    done
}

measure empty
say "pgbench -i -s $SCALE"
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$DIR/pgbench-init.log" 2>&1
sql "CHECKPOINT" >/dev/null
measure "scale$SCALE"

python3 - "$RESULTS" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
sizes = []
for r in rows:
    if r["size"] not in sizes:
        sizes.append(r["size"])
med = lambda size, col: statistics.median(float(r[col]) for r in rows if r["size"] == size)
print("| database | size | branch create (pageserver) | branch create (command) | endpoint boot (basebackup → ready) | endpoint start (command) |")
print("| --- | --- | --- | --- | --- | --- |")
for s in sizes:
    b = next(int(r["db_bytes"]) for r in rows if r["size"] == s)
    print(f"| {s} | {b / 2**20:.0f} MiB | {med(s, 'branch_ms_pageserver'):.1f} ms | {med(s, 'branch_ms_wall'):.0f} ms | {med(s, 'boot_ms'):.0f} ms | {med(s, 'start_ms_wall'):.0f} ms |")
base, big = sizes[0], sizes[-1]
for col, what in (("branch_ms_pageserver", "branch create (pageserver)"), ("boot_ms", "endpoint boot")):
    print(f"\n{what}: {big} / {base} = {med(big, col) / max(med(base, col), 1e-3):.2f}x (medians of the rounds)")
EOF
