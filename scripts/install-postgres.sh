#!/usr/bin/env bash
# Installs what tarn's end-to-end tests and benchmarks need from Debian's packages:
# PostgreSQL 15 (server, client, contrib modules) and fio. Idempotent: installs only what
# is missing and says what it did. Debian's package is kept from creating and starting a
# cluster of its own: tarn creates and runs its own clusters.
#
# Usage: scripts/install-postgres.sh   (as root, or as a user with sudo)
set -euo pipefail

PG_MAJOR=15
PG_BIN_DIR="/usr/lib/postgresql/${PG_MAJOR}/bin"
CREATECLUSTER_CONF_DIR=/etc/postgresql-common/createcluster.d
CREATECLUSTER_CONF="${CREATECLUSTER_CONF_DIR}/tarn-no-main-cluster.conf"

say() { echo "install-postgres: $*"; }

if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    say "must run as root (or with sudo available) to install packages" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

if [ -x "${PG_BIN_DIR}/postgres" ]; then
    say "PostgreSQL ${PG_MAJOR} already installed in ${PG_BIN_DIR}"
else
    # postgresql-common reads this before the server package's postinst runs: with it,
    # installing postgresql-15 creates no "main" cluster (and so starts none).
    as_root mkdir -p "${CREATECLUSTER_CONF_DIR}"
    if [ ! -f "${CREATECLUSTER_CONF}" ]; then
        echo "create_main_cluster = false" | as_root tee "${CREATECLUSTER_CONF}" >/dev/null
        say "wrote ${CREATECLUSTER_CONF} (no default cluster)"
    fi
    # On Debian, postgresql-contrib-15 is a virtual package provided by postgresql-15
    # (the contrib modules ship inside it); apt resolves it to that.
    apt_install --no-install-recommends \
        "postgresql-${PG_MAJOR}" "postgresql-contrib-${PG_MAJOR}" "postgresql-client-${PG_MAJOR}"
    if [ ! -x "${PG_BIN_DIR}/postgres" ]; then
        say "installed packages but ${PG_BIN_DIR}/postgres is still missing" >&2
        exit 1
    fi
    say "installed PostgreSQL ${PG_MAJOR}: $("${PG_BIN_DIR}/postgres" --version)"
fi

if ! id postgres >/dev/null 2>&1; then
    # The package creates this user; tarn runs Postgres as it when run as root.
    say "user postgres is missing; the postgresql-${PG_MAJOR} package should have created it" >&2
    exit 1
fi

if command -v fio >/dev/null 2>&1; then
    say "fio already installed ($(fio --version))"
else
    apt_install --no-install-recommends fio
    say "installed $(fio --version)"
fi
