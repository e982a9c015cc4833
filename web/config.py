"""Configuration of the web app, from environment variables with safe defaults.

- ``CAREFLOW_SECRET_KEY``: signs cookies. Default: a random key created once in
  ``$CAREFLOW_HOME/secret_key`` (mode 0600) and shared by every worker process.
- ``CAREFLOW_INSECURE_COOKIES=1``: send cookies over plain http (local development on
  http://127.0.0.1 only; the run command sets it). Default: cookies are ``Secure``.
- ``CAREFLOW_IDLE_TIMEOUT`` / ``CAREFLOW_ABSOLUTE_TIMEOUT``: seconds a sign-in lasts
  without activity (default 1800) and at most (default 43200).
- ``CAREFLOW_LOGIN_MAX_FAILURES`` (5) per username and address, ``CAREFLOW_LOGIN_MAX_FAILURES_PER_IP``
  (50), within ``CAREFLOW_LOGIN_WINDOW`` seconds (900): then sign-in answers 429.
- ``CAREFLOW_NODE_MODULES``: where npm installed the browser packages (default ``./node_modules``
  of the source tree).
- ``CAREFLOW_TIMEZONE``: the time zone dates are shown in (default ``Asia/Shanghai``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def load_config() -> dict[str, Any]:
    """Flask config from the environment."""
    insecure = _flag("CAREFLOW_INSECURE_COOKIES")
    return {
        "SECRET_KEY": os.environ.get("CAREFLOW_SECRET_KEY") or None,
        "CAREFLOW_ENGINE": None,
        "SESSION_COOKIE_NAME": "careflow_session" if insecure else "__Host-careflow_session",
        "SESSION_COOKIE_SECURE": not insecure,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_PATH": "/",
        "CAREFLOW_IDLE_TIMEOUT": int(os.environ.get("CAREFLOW_IDLE_TIMEOUT", "1800")),
        "CAREFLOW_ABSOLUTE_TIMEOUT": int(os.environ.get("CAREFLOW_ABSOLUTE_TIMEOUT", "43200")),
        "CAREFLOW_LOGIN_MAX_FAILURES": int(os.environ.get("CAREFLOW_LOGIN_MAX_FAILURES", "5")),
        "CAREFLOW_LOGIN_MAX_FAILURES_PER_IP": int(os.environ.get("CAREFLOW_LOGIN_MAX_FAILURES_PER_IP", "50")),
        "CAREFLOW_LOGIN_WINDOW": int(os.environ.get("CAREFLOW_LOGIN_WINDOW", "900")),
        "CAREFLOW_NODE_MODULES": os.environ.get("CAREFLOW_NODE_MODULES") or str(ROOT / "node_modules"),
        "CAREFLOW_PAGE_SIZE": 50,
        "WTF_CSRF_TIME_LIMIT": None,  # valid for the sign-in session, which has its own timeouts
        "WTF_CSRF_SSL_STRICT": not insecure,
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
        "BABEL_DEFAULT_LOCALE": "zh",
        "BABEL_DEFAULT_TIMEZONE": os.environ.get("CAREFLOW_TIMEZONE", "Asia/Shanghai"),
        "BABEL_TRANSLATION_DIRECTORIES": str(Path(__file__).parent / "translations"),
        "JSON_SORT_KEYS": False,
    }
