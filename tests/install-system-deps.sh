#!/usr/bin/env bash
# Installs and starts what the test suite talks to for real, only where it is missing:
# Dovecot (IMAP tests), Chromium (panel page tests), PostgreSQL (every test runs on it too).
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: $1 (run as root, or do it by hand)" >&2
    exit 1
  fi
}

missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
# The same names tests/servers/chromium.py looks for on PATH.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || missing+=(chromium)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v pg_lsclusters >/dev/null 2>&1 || missing+=(postgresql)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v make >/dev/null 2>&1 || missing+=(make)
# `make install` creates .venv/ with the system python3, which on Debian needs python3-venv for it.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # verifies config/support-gateway.service
if [ ${#missing[@]} -gt 0 ]; then
  need_root "missing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL: a running cluster that lets postgres in over TCP on 127.0.0.1 (the tests' default
# GATEWAY_TEST_PG_URL). A machine that already has one keeps its configuration untouched.
if [ -z "${GATEWAY_TEST_PG_URL:-}" ]; then
  cluster=$(pg_lsclusters --no-header 2>/dev/null | head -n 1)
  if [ -z "$cluster" ]; then
    need_root "no PostgreSQL cluster"
    pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -n 1)" main >/dev/null
    cluster=$(pg_lsclusters --no-header | head -n 1)
  fi
  read -r version name port status _ <<<"$cluster"
  if [ "$status" != "online" ]; then
    need_root "PostgreSQL $version/$name is down"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
  fi
  if ! psql "postgresql://postgres@127.0.0.1:$port/postgres" -tAc "select 1" >/dev/null 2>&1; then
    need_root "postgres cannot log in over TCP"
    hba=$(su postgres -c "psql -tAc 'show hba_file'")
    sed -i "1i host all postgres 127.0.0.1/32 trust  # added by support-mail-gateway tests" "$hba"
    su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
  fi
fi
