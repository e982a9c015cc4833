#!/usr/bin/env bash
# Set up and run Careflow on an embedded SQLite database with demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
setup_python
export CAREFLOW_HOME=${CAREFLOW_HOME:-$PWD/instance}
.venv/bin/careflow init-db
.venv/bin/careflow demo-data
if .venv/bin/careflow serve --help >/dev/null 2>&1; then
  exec .venv/bin/careflow serve
fi
echo "Careflow is set up. Try: .venv/bin/careflow tasks"
