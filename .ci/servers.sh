#!/usr/bin/env bash
# Redis and PostgreSQL server binaries for the integration tests (the tests start their own
# servers from them), and Debian's Chromium for the dashboard's browser tests (Playwright drives
# /usr/bin/chromium; it never downloads a browser of its own). Under CI=true a missing one is
# installed with apt; elsewhere the tests that need it are skipped with a note.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || need+=(postgresql)
command -v chromium >/dev/null || need+=(chromium fonts-liberation)  # its recommended fonts: --no-install-recommends skips them
[ ${#need[@]} -eq 0 ] && exit 0

if [ "${CI:-}" != "true" ]; then
    echo "note: ${need[*]} not installed; tests that need them are skipped (CI=true installs them)" >&2
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
