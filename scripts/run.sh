#!/usr/bin/env bash
# Set up and run Careflow on an embedded SQLite database with demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
setup_python
setup_web
export CAREFLOW_HOME=${CAREFLOW_HOME:-$PWD/instance}
# plain http on localhost: let the browser send the session cookie without TLS (see README)
export CAREFLOW_INSECURE_COOKIES=${CAREFLOW_INSECURE_COOKIES:-1}
# survey links sent to customers point at this server
export CAREFLOW_BASE_URL=${CAREFLOW_BASE_URL:-http://127.0.0.1:8000}
# notifications sent by the log channel go to a file rather than the console
export CAREFLOW_NOTIFY_LOG=${CAREFLOW_NOTIFY_LOG:-$CAREFLOW_HOME/notifications.jsonl}
echo "Notifications (log channel) are written to $CAREFLOW_NOTIFY_LOG"
.venv/bin/careflow init-db
.venv/bin/careflow demo-data
if .venv/bin/careflow serve --help >/dev/null 2>&1; then
  exec .venv/bin/careflow serve
fi
echo "Careflow is set up. Try: .venv/bin/careflow tasks"
