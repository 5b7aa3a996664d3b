#!/usr/bin/env bash
# Runs every test: the WAL decoder's fuzz targets for a bounded time, then unit tests,
# the deterministic quorum simulation, and the end-to-end tests that start real
# PostgreSQL 15 (installed with apt-get when missing).
# Extra arguments go to `cargo test` (e.g. a test name filter) and skip the fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-postgres.sh
# Fuzzing first, so the test runner's summary is the last thing printed.
# TARN_FUZZ_SECONDS=0 skips it; the first run installs cargo-fuzz and builds
# instrumented (~10 minutes on 2 cores), later runs reuse wal/fuzz/target.
fuzz_seconds="${TARN_FUZZ_SECONDS:-30}"
if [ "$fuzz_seconds" -gt 0 ] && [ "$#" -eq 0 ]; then
    scripts/fuzz.sh "$fuzz_seconds"
fi
# End-to-end tests run the `tarn` binary itself, so build it first.
cargo build --bin tarn
cargo test --workspace "$@"
