#!/usr/bin/env bash
# One command: install the peers (idempotent), then run Parley and each peer
# back to back under the same `parley bench` load and print the ratios.
#   bench/peers/compare.sh [--quick] [--peers parley,socketio,socketio_pg,synapse,picows]
# Needs Parley's virtualenv (.venv at the repo root), root and a local PostgreSQL.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
"$here/setup.sh"
exec "$root/.venv/bin/python" "$here/compare.py" "$@"
