# Functions shared by scripts/run.sh and scripts/test.sh (sourced, not run).

# setup_python [test]: a virtualenv in .venv with Careflow installed (and test extras).
setup_python() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  local extras=""
  [ "${1:-}" = "test" ] && extras="[test]"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".${extras}"
}

# setup_postgres: start a throwaway PostgreSQL and export CAREFLOW_TEST_POSTGRES_URL.
setup_postgres() {
  if [ -n "${CAREFLOW_TEST_POSTGRES_URL:-}" ]; then return 0; fi
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing PostgreSQL (Debian package)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || return 1
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  [ -n "$bindir" ] || { echo "PostgreSQL not available: PostgreSQL tests will be skipped"; return 1; }
  PG_DIR=$(mktemp -d /tmp/careflow-pg.XXXXXX)
  PG_PORT=${CAREFLOW_TEST_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  local as=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$PG_DIR"; as=(runuser -u postgres --); fi
  "${as[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U careflow --auth=trust -E UTF8 >/dev/null
  "${as[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" \
    -l "$PG_DIR/log" -w start >/dev/null
  "${as[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U careflow careflow_test
  export CAREFLOW_TEST_POSTGRES_URL="postgresql://careflow@127.0.0.1:$PG_PORT/careflow_test"
  export PG_BINDIR=$bindir PG_DIR PG_AS="${as[*]}"
  echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') running for the tests on port $PG_PORT"
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    ${PG_AS:-} "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}

# setup_web: the browser packages from package-lock.json (npm ci into node_modules, served by the
# web app) and the compiled translations. Installs Node.js from Debian when missing (as root).
setup_web() {
  if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Node.js and npm (Debian packages)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null 2>&1) || true
  fi
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    if command -v npm >/dev/null; then
      npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1 || echo "npm ci failed: the BPMN diagram viewer will be missing"
    else
      echo "npm not found: the BPMN diagram viewer will be missing"
    fi
  fi
  .venv/bin/pybabel compile -d web/translations -D messages >/dev/null 2>&1 || echo "could not compile the translations"
}

# setup_browser: Debian's Chromium (and a CJK font) for the browser tests; installed when missing (as root).
setup_browser() {
  if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "wenquanyi"; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Chromium (Debian package) for the browser tests..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei \
      >/dev/null 2>&1) || { echo "Chromium could not be installed: browser tests will fail"; return 1; }
  else
    echo "Chromium not available: browser tests will fail"; return 1
  fi
}
