#!/usr/bin/env bash
# Starts the whole tarn stack on the embedded default (local directories, no cloud
# account): PostgreSQL 15, three safekeepers and the proposer. Installs PostgreSQL 15
# with apt-get when it is missing. Arguments are passed to `tarn up`
# (e.g. --dir DIR --port PORT). Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-postgres.sh
cargo build --release --bin tarn
exec target/release/tarn up "$@"
