#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
#   ./scripts/test.sh            # all tests
#   ./scripts/test.sh -k audit   # extra arguments go to pytest
# PostgreSQL: a throwaway server is started when Debian's postgresql is present (installed
# here when running as root); in CI (CI=true) the PostgreSQL tests are required.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
setup_python test
setup_web
setup_browser || true
setup_postgres || true
if [ "${CI:-}" = "true" ] && [ -z "${CAREFLOW_TEST_POSTGRES_URL:-}" ]; then
  echo "CI needs PostgreSQL but it could not be started" >&2; exit 1
fi
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -n 2 "$@"
status=$?
set -e
stop_postgres
exit $status
