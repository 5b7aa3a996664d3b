#!/usr/bin/env bash
# Runs every test: unit tests, the deterministic quorum simulation, and the end-to-end
# tests that start real PostgreSQL 15 (installed with apt-get when missing).
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-postgres.sh
# End-to-end tests run the `tarn` binary itself, so build it first.
cargo build --bin tarn
cargo test --workspace "$@"
