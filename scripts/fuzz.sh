#!/usr/bin/env bash
# Fuzzes tarn-wal's record decoder and WAL reader for a bounded time:
#   scripts/fuzz.sh SECONDS [TARGET...]
# runs each target (default: all of them) for SECONDS with libFuzzer, after installing
# cargo-fuzz if it is missing. Exits non-zero if a target finds a crash; the input is
# left in wal/fuzz/artifacts/TARGET/ (replay: scripts/fuzz.sh replay TARGET FILE).
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address); on a stable
# toolchain they are enabled with RUSTC_BOOTSTRAP=1. The first build instruments
# tarn-wal and all its dependencies and takes a few minutes on 2 cores; later runs
# reuse wal/fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/../wal/fuzz"

# Limits: total time per target is the caller's; one input may not run longer than
# this (a hang is a bug), nor use more memory.
PER_INPUT_TIMEOUT_SECONDS=10
RSS_LIMIT_MB=2048
# Largest input: big enough for records spanning several WAL pages.
MAX_LEN_BYTES=65536

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets_all=(decode_record wal_reader)

if [[ "${1:-}" == "replay" ]]; then
    target="${2:?usage: scripts/fuzz.sh replay TARGET FILE}"
    file="${3:?usage: scripts/fuzz.sh replay TARGET FILE}"
    exec cargo fuzz run "$target" "$file"
fi

seconds="${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}"
shift
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=("${targets_all[@]}")
fi

build_start=$(date +%s)
for target in "${targets[@]}"; do
    cargo fuzz build "$target"
done
echo "fuzz build: $(( $(date +%s) - build_start )) s" >&2

for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    echo "fuzzing $target for ${seconds} s" >&2
    cargo fuzz run "$target" "$corpus" seeds/"$target" -- \
        -max_total_time="$seconds" \
        -timeout="$PER_INPUT_TIMEOUT_SECONDS" \
        -rss_limit_mb="$RSS_LIMIT_MB" \
        -max_len="$MAX_LEN_BYTES" \
        -print_final_stats=1
done
