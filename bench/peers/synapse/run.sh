#!/usr/bin/env bash
# Run the benchmark Synapse in the foreground (setup.sh first).
set -euo pipefail
dir="${SYNAPSE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/parley-bench/synapse}"
cd "$dir"
exec "$dir/venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" -c "$dir/bench.yaml"
