#!/usr/bin/env bash
# Install everything the tests need, then lint, type-check and run the whole test suite.
# Used by newcomers (README) and by CI (.ci/run) alike.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis store tests start their own redis-server; install it from Debian's packages if missing.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing: install it (e.g. sudo apt-get install redis-server) and run again" >&2
    exit 1
  fi
fi

# promtool (from Debian's prometheus package, unpacked, not installed) checks the alert rules.
tools="${PUSH_BRIDGE_TOOLS:-$HOME/.cache/imkit-push-bridge}"
if [ -z "${PROMTOOL:-}" ] && ! command -v promtool >/dev/null 2>&1; then
  if [ ! -x "$tools/promtool/usr/bin/promtool" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== fetching promtool"
    mkdir -p "$tools/promtool" && tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download -qq prometheus >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get download -qq prometheus >/dev/null 2>&1; }; } && dpkg-deb -x prometheus_*.deb "$tools/promtool") \
      || echo "promtool unavailable: the alert-rule unit test will be skipped"
    rm -rf "$tmp"
  fi
  [ -x "$tools/promtool/usr/bin/promtool" ] && export PROMTOOL="$tools/promtool/usr/bin/promtool"
fi

echo "== python environment"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check bridge tests bench
echo "== mypy --strict bridge"
.venv/bin/mypy --strict bridge
echo "== mypy --strict bench"
.venv/bin/mypy --strict bench

if [ -f .ci/helm.sh ]; then
  echo "== helm chart"
  bash .ci/helm.sh
fi

echo "== pytest"
.venv/bin/pytest -q "$@"
