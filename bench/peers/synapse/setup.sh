#!/usr/bin/env bash
# Install Matrix Synapse (pinned) into its own virtualenv, create its PostgreSQL
# database (C collation, as Synapse requires) and write a benchmark config:
# loopback listener, no federation, presence off, rate limits lifted, logs at
# WARNING.  Idempotent.  Needs root (for `su postgres`) and a local PostgreSQL.
#
#   bench/peers/synapse/setup.sh            # then: bench/peers/synapse/run.sh
#
# Environment: SYNAPSE_PORT (8808), SYNAPSE_DIR (cache dir), PG_HOST/PG_PORT.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${SYNAPSE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/parley-bench/synapse}"
port="${SYNAPSE_PORT:-8808}"
pg_host="${PG_HOST:-127.0.0.1}"
pg_port="${PG_PORT:-5432}"
mkdir -p "$dir"

if [ ! -x "$dir/venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$dir/requirements.txt"; then
    echo "synapse: installing into $dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$dir/requirements.txt"
fi

su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'synapse_bench') THEN
    CREATE ROLE synapse_bench LOGIN PASSWORD 'synapse_bench';
  END IF;
END $$;
SELECT 'CREATE DATABASE synapse_bench OWNER synapse_bench ENCODING ''UTF8'' LC_COLLATE ''C'' LC_CTYPE ''C'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'synapse_bench')\gexec
SQL

if [ ! -f "$dir/homeserver.yaml" ]; then
    (cd "$dir" && "$dir/venv/bin/python" -m synapse.app.homeserver --server-name bench.local \
        --config-path "$dir/homeserver.yaml" --generate-config --report-stats=no >/dev/null)
fi

cat > "$dir/log.yaml" <<YAML
version: 1
formatters:
  plain: {format: '%(asctime)s %(levelname)s %(name)s %(message)s'}
handlers:
  file: {class: logging.FileHandler, filename: $dir/homeserver.log, formatter: plain}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
YAML

# Read after homeserver.yaml: top-level keys here replace the generated ones.
cat > "$dir/bench.yaml" <<YAML
public_baseurl: http://127.0.0.1:$port/
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources: [{names: [client], compress: false}]
database:
  name: psycopg2
  args:
    user: synapse_bench
    password: synapse_bench
    dbname: synapse_bench
    host: $pg_host
    port: $pg_port
    cp_min: 5
    cp_max: 10
log_config: $dir/log.yaml
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: false
presence: {enabled: false}
bcrypt_rounds: 4  # provisioning only: logins are not part of the measured workload
rc_message: {per_second: 1000000, burst_count: 1000000}
rc_registration: {per_second: 1000000, burst_count: 1000000}
rc_login:
  address: {per_second: 1000000, burst_count: 1000000}
  account: {per_second: 1000000, burst_count: 1000000}
  failed_attempts: {per_second: 1000000, burst_count: 1000000}
rc_joins:
  local: {per_second: 1000000, burst_count: 1000000}
  remote: {per_second: 1000000, burst_count: 1000000}
rc_joins_per_room: {per_second: 1000000, burst_count: 1000000}
rc_invites:
  per_room: {per_second: 1000000, burst_count: 1000000}
  per_user: {per_second: 1000000, burst_count: 1000000}
  per_issuer: {per_second: 1000000, burst_count: 1000000}
rc_room_creation: {per_second: 1000000, burst_count: 1000000}
rc_admin_redaction: {per_second: 1000000, burst_count: 1000000}
rc_presence:
  per_user: {per_second: 1000000, burst_count: 1000000}
YAML
echo "synapse: ready in $dir (port $port); start with $here/run.sh"
