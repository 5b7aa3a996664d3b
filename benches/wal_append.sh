#!/usr/bin/env bash
# Quorum append latency and throughput of 3 safekeepers on one disk, side by side with
# fio's write+fdatasync on the same disk.
#
# Starts 3 release `tarn safekeeper` processes (data under DIR), runs `tarn loadgen wal`
# for 8 KiB and 128 KiB records with 1 and 16 streams at in-flight 1 (latency), plus
# pipelined throughput runs, and `fio` write+fdatasync with 8k and 128k blocks plus a
# sequential O_DIRECT write for the disk's bandwidth. Prints one table; raw JSON goes to
# DIR/results. Not run by CI.
#
# Usage: benches/wal_append.sh [DIR]          (default: a new directory under /tmp)
# Environment:
#   DURATION=10 WARMUP=2    seconds per loadgen case (measured, then warmup before it)
#   FIO_SECONDS=5           length of each fio write+fdatasync run. One runs right
#                           before and one right after every loadgen case, with the
#                           case's record size as block size: the disk is shared and
#                           noisy, so the baseline is taken next to each measurement.
#   SAFEKEEPER_CPUS=        e.g. "0,1,0": pin safekeeper i to that CPU (taskset).
#                           Empty: as `tarn up` runs them (each pins its executor to
#                           the first allowed CPU, so all three share CPU 0).
#   BASE_PORT=17400         safekeepers listen on BASE_PORT+1..+3 (127.0.0.1)
#   CASES=                  only run loadgen cases whose name contains this
#   PAIRED_ROUNDS=5         rounds of [fio 2 s, loadgen 2 s] at in-flight 1 for 8k and
#                           128k records; the median of the per-round p50 ratios is
#                           the most noise-resistant latency comparison (0: skip)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
FIO_SECONDS="${FIO_SECONDS:-5}"
SAFEKEEPER_CPUS="${SAFEKEEPER_CPUS:-}"
BASE_PORT="${BASE_PORT:-17400}"
CASES="${CASES:-}"
PAIRED_ROUNDS="${PAIRED_ROUNDS:-5}"
# Bound on a safekeeper starting to listen, in 0.1 s polls.
LISTEN_POLLS=300

say() { echo "wal_append: $*" >&2; }

command -v fio >/dev/null || { say "fio is missing: run scripts/install-postgres.sh"; exit 1; }
command -v python3 >/dev/null || { say "python3 is needed to read JSON results"; exit 1; }

DIR="${1:-$(mktemp -d /tmp/tarn-bench-wal.XXXXXX)}"
mkdir -p "$DIR/results"
DIR="$(cd "$DIR" && pwd)"
RESULTS="$DIR/results"
rm -f "$RESULTS"/*.json "$RESULTS/cases"

say "building the release binary"
cargo build --release --bin tarn >&2
TARN="$PWD/target/release/tarn"

# Every case starts on freshly started safekeepers with empty data directories: cases
# do not see each other's segments, and the disk does not fill up (a 10 s throughput
# case leaves several GB of WAL and zero-filled segments behind).
PIDS=()
stop_safekeepers() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    rm -rf "$DIR/sk1" "$DIR/sk2" "$DIR/sk3"
}
cleanup() {
    stop_safekeepers
    rm -rf "$DIR/fio"
}
trap cleanup EXIT

IFS=',' read -r -a CPU_OF <<<"$SAFEKEEPER_CPUS"
SK_LIST=""
for i in 1 2 3; do SK_LIST="${SK_LIST:+$SK_LIST,}127.0.0.1:$((BASE_PORT + i))"; done
start_safekeepers() {
    for i in 1 2 3; do
        local port=$((BASE_PORT + i)) pin=()
        rm -rf "$DIR/sk$i"
        if [ -n "$SAFEKEEPER_CPUS" ]; then pin=(taskset -c "${CPU_OF[$((i - 1))]}"); fi
        "${pin[@]}" "$TARN" safekeeper --id "$i" --listen "127.0.0.1:$port" --dir "$DIR/sk$i" \
            >>"$DIR/sk$i.log" 2>&1 &
        PIDS+=("$!")
    done
    for i in 1 2 3; do
        local port=$((BASE_PORT + i))
        for n in $(seq "$LISTEN_POLLS"); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
            [ "$n" -eq "$LISTEN_POLLS" ] && { say "safekeeper $i did not listen; see $DIR/sk$i.log"; exit 1; }
            sleep 0.1
        done
    done
}
rm -f "$DIR"/sk?.log
say "safekeepers: $SK_LIST (data in $DIR, cpus: ${SAFEKEEPER_CPUS:-as tarn up})"

# Sum over the safekeepers of a /proc/PID/io field, or of CPU ticks (utime+stime).
sum_io() { local t=0; for pid in "${PIDS[@]}"; do t=$((t + $(awk -v k="$1:" '$1==k{print $2}' "/proc/$pid/io"))); done; echo "$t"; }
sum_cpu_ticks() { local t=0; for pid in "${PIDS[@]}"; do t=$((t + $(awk '{print $14+$15}' "/proc/$pid/stat"))); done; echo "$t"; }

run_fio() { # name bs
    # The file is written and fsynced once first, so the measured writes overwrite
    # allocated blocks, as a safekeeper's writes into its zero-filled segments do (no
    # extent conversion for fdatasync to journal).
    mkdir -p "$DIR/fio"
    if [ ! -f "$DIR/fio/fio.dat" ]; then
        fio --name=layout --filename="$DIR/fio/fio.dat" --rw=write --bs=1m --size=256m \
            --direct=1 --ioengine=libaio --iodepth=8 --end_fsync=1 >/dev/null
    fi
    fio --name="$1" --filename="$DIR/fio/fio.dat" --rw=write --bs="$2" --fdatasync=1 \
        --size=256m --runtime="$FIO_SECONDS" --direct=1 --ioengine=sync \
        --output-format=json >"$RESULTS/fio-$1.json"
}
say "fio sequential O_DIRECT write bandwidth (1m blocks, depth 8, 1g)"
rm -rf "$DIR/fio" && mkdir -p "$DIR/fio"
fio --name=seq --directory="$DIR/fio" --rw=write --bs=1m --size=1g --direct=1 \
    --ioengine=libaio --iodepth=8 --end_fsync=1 --output-format=json >"$RESULTS/fio-seq.json"
rm -rf "$DIR/fio"  # the fdatasync runs lay out their own file

# name | loadgen arguments ("one-sk": the first safekeeper alone, a majority of one)
CASE_LIST=(
    "8k-s1-if1-one-sk|--record-size 8k --streams 1 --in-flight 1"
    "8k-s1-if1|--record-size 8k --streams 1 --in-flight 1"
    "8k-s16-if1|--record-size 8k --streams 16 --in-flight 1"
    "128k-s1-if1|--record-size 128k --streams 1 --in-flight 1"
    "128k-s16-if1|--record-size 128k --streams 16 --in-flight 1"
    "8k-s1-if64|--record-size 8k --streams 1 --in-flight 64"
    "128k-s1-if16|--record-size 128k --streams 1 --in-flight 16"
    "128k-s4-if4-1m|--record-size 128k --append-size 1m --streams 4 --in-flight 4"
)
for entry in "${CASE_LIST[@]}"; do
    name="${entry%%|*}"
    args="${entry#*|}"
    if [ -n "$CASES" ] && [[ "$name" != *"$CASES"* ]]; then continue; fi
    targets="$SK_LIST"
    if [[ "$name" == *one-sk ]]; then targets="${SK_LIST%%,*}"; fi
    say "fio write+fdatasync ${name%%-*} blocks, ${FIO_SECONDS}s, before $name"
    run_fio "$name.before" "${name%%-*}"
    say "loadgen $name: $args (${WARMUP}s warmup + ${DURATION}s)"
    start_safekeepers
    wb0=$(sum_io write_bytes); cpu0=$(sum_cpu_ticks)
    # shellcheck disable=SC2086
    "$TARN" loadgen wal --safekeepers "$targets" --duration "$DURATION" --warmup "$WARMUP" \
        $args --json >"$RESULTS/loadgen-$name.json"
    wb1=$(sum_io write_bytes); cpu1=$(sum_cpu_ticks)
    stop_safekeepers
    say "fio write+fdatasync ${name%%-*} blocks, ${FIO_SECONDS}s, after $name"
    run_fio "$name.after" "${name%%-*}"
    echo "$name" >>"$RESULTS/cases"
    echo "{\"disk_write_bytes\": $((wb1 - wb0)), \"cpu_ticks\": $((cpu1 - cpu0)), \"ticks_per_sec\": $(getconf CLK_TCK)}" \
        >"$RESULTS/safekeepers-$name.json"
done

# Paired rounds: a short fio and a short loadgen back to back, several times, so each
# ratio compares measurements taken seconds apart.
for bs in 8k 128k; do
    for round in $(seq "$PAIRED_ROUNDS"); do
        say "paired round $round/$PAIRED_ROUNDS, $bs: fio 2 s then loadgen 2 s"
        FIO_SECONDS=2 run_fio "paired-$bs-$round" "$bs"
        start_safekeepers
        "$TARN" loadgen wal --safekeepers "$SK_LIST" --duration 2 --warmup 0.5 \
            --record-size "$bs" --json >"$RESULTS/paired-loadgen-$bs-$round.json"
        stop_safekeepers
    done
done

python3 - "$RESULTS" "$PAIRED_ROUNDS" <<'EOF'
import json, os, sys
res = sys.argv[1]
def load(n):
    with open(os.path.join(res, n)) as f:
        return json.load(f)
def p50(d):
    return d["percentile"]["50.000000"] / 1000.0
def lsn(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)
seq = load("fio-seq.json")["jobs"][0]["write"]
print(f"disk: fio sequential 1 MiB O_DIRECT writes, depth 8: {seq['bw_bytes']/2**20:.0f} MiB/s")
print()
print("Latencies in µs. fio: write+fdatasync with the case's record size as block size; mean of the")
print("p50s of the runs just before and just after the case. ratio = loadgen p50 / fio p50.")
print("one-sk: the first safekeeper alone (majority of one); disk/WAL and CPU still sum all three.")
print("disk/WAL: bytes the 3 safekeepers wrote to disk per WAL byte generated (3.0 = one copy each).")
print()
hdr = f"{'case':<16}{'appends/s':>10}{'MiB/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>8} | {'fio w+sync':>10}{'fio sync':>9}{'ratio':>7}{'ratio':>7} | {'disk/WAL':>8}{'CPU s/GiB':>10}"
print(hdr)
print(f"{'':<16}{'':>10}{'':>8}{'quorum append latency':>48} | {'p50':>10}{'p50':>9}{'w+sync':>7}{'sync':>7} | {'':>8}{'(sk)':>10}")
for name in open(os.path.join(res, "cases")).read().split():
    r = load(f"loadgen-{name}.json")
    sk = load(f"safekeepers-{name}.json")
    fio = [load(f"fio-{name}.{when}.json")["jobs"][0] for when in ("before", "after")]
    sync = sum(p50(j["sync"]["lat_ns"]) for j in fio) / 2
    one = sum(p50(j["write"]["clat_ns"]) + p50(j["sync"]["lat_ns"]) for j in fio) / 2
    l = r["latency"]
    wal_total = sum(lsn(t["end_lsn"]) - lsn(t["start_lsn"]) for t in r["timelines"])
    amp = sk["disk_write_bytes"] / wal_total if wal_total else 0
    cpu = sk["cpu_ticks"] / sk["ticks_per_sec"] / (wal_total / 2**30) if wal_total else 0
    print(f"{name:<16}{r['appends_per_sec']:>10.0f}{r['wal_mib_per_sec']:>8.1f}{l['p50_us']:>8.0f}{l['p90_us']:>8.0f}{l['p99_us']:>8.0f}{l['p999_us']:>8.0f}{l['max_us']:>8.0f} | {one:>10.0f}{sync:>9.0f}{l['p50_us']/one:>7.2f}{l['p50_us']/sync:>7.2f} | {amp:>8.2f}{cpu:>10.1f}")
rounds = int(sys.argv[2])
if rounds:
    print()
    print("Paired rounds (fio write+fdatasync 2 s, then loadgen 2 s, 1 stream, in-flight 1):")
    print(f"{'records':<8}{'round':>6}{'fio w+sync p50':>16}{'fio sync p50':>14}{'quorum p50':>12}{'ratio w+sync':>14}{'ratio sync':>12}")
    for bs in ("8k", "128k"):
        ratios, sratios = [], []
        for i in range(1, rounds + 1):
            j = load(f"fio-paired-{bs}-{i}.json")["jobs"][0]
            sync = p50(j["sync"]["lat_ns"])
            one = p50(j["write"]["clat_ns"]) + sync
            q = load(f"paired-loadgen-{bs}-{i}.json")["latency"]["p50_us"]
            ratios.append(q / one)
            sratios.append(q / sync)
            print(f"{bs:<8}{i:>6}{one:>16.0f}{sync:>14.0f}{q:>12.0f}{q/one:>14.2f}{q/sync:>12.2f}")
        ratios.sort()
        sratios.sort()
        print(f"{bs:<8}{'median':>6}{'':>16}{'':>14}{'':>12}{ratios[len(ratios)//2]:>14.2f}{sratios[len(sratios)//2]:>12.2f}")
EOF
say "raw results in $RESULTS"
