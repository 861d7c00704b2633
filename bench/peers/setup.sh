#!/usr/bin/env bash
# Install the peers' servers into bench/peers/.venv (pinned, requirements.txt)
# and create the PostgreSQL databases of the relay (peer b) and of Parley's
# --backend postgres run (PARLEY_DATABASE_URL in compare.py).  Idempotent.
# Needs root for `su postgres` and a local PostgreSQL; Synapse (peer c) has its
# own script, synapse/setup.sh, which the synapse target also runs with --start.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -x "$here/.venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$here/.venv/requirements.txt"; then
    echo "peers: installing into $here/.venv"
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$here/.venv/requirements.txt"
fi
su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'relay_bench') THEN
    CREATE ROLE relay_bench LOGIN PASSWORD 'relay_bench';
  END IF;
END $$;
SELECT 'CREATE DATABASE relay_bench OWNER relay_bench'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'relay_bench')\gexec
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'parley_bench') THEN
    CREATE ROLE parley_bench LOGIN PASSWORD 'parley_bench';
  END IF;
END $$;
SELECT 'CREATE DATABASE parley_bench OWNER parley_bench'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'parley_bench')\gexec
SQL
echo "peers: ready"
