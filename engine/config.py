"""Settings read from the environment, with defaults that run on one machine.

Every setting is an environment variable so operators can change it without code:

- ``CAREFLOW_DATABASE_URL``: SQLAlchemy URL; default an embedded SQLite file in
  ``$CAREFLOW_HOME/careflow.db``. A ``postgresql://`` URL switches to PostgreSQL.
- ``CAREFLOW_HOME``: folder for the SQLite file and other local state (default ``./instance``).
- ``CAREFLOW_SCRIPT_TIMEOUT``: CPU seconds a BPMN script or condition may use (default 2).
- ``CAREFLOW_MAX_BPMN_BYTES``: largest BPMN upload accepted (default 5 MB).
- ``CAREFLOW_SECRET_KEY``: the deployment secret (web cookies, survey links); default a random
  key created once in ``$CAREFLOW_HOME/secret_key`` (mode 0600), see ``deployment_secret``.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import CareflowError


def _default_home() -> Path:
    return Path(os.environ.get("CAREFLOW_HOME", "instance")).resolve()


def normalize_database_url(url: str) -> str:
    """Map the plain ``postgresql://`` scheme to the psycopg 3 driver SQLAlchemy needs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


@dataclass(frozen=True)
class Settings:
    """Runtime settings of one Careflow deployment."""

    database_url: str
    home: Path
    script_timeout_s: float = 2.0
    max_bpmn_bytes: int = 5 * 1024 * 1024
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from environment variables (see module docstring)."""
        env = os.environ if environ is None else environ
        home = Path(env.get("CAREFLOW_HOME", "instance")).resolve()
        url = env.get("CAREFLOW_DATABASE_URL") or f"sqlite:///{home / 'careflow.db'}"
        return cls(
            database_url=normalize_database_url(url),
            home=home,
            script_timeout_s=float(env.get("CAREFLOW_SCRIPT_TIMEOUT", "2")),
            max_bpmn_bytes=int(env.get("CAREFLOW_MAX_BPMN_BYTES", str(5 * 1024 * 1024))),
        )


def deployment_secret(home: Path) -> str:
    """``CAREFLOW_SECRET_KEY``, else the secret in ``home/secret_key`` (created on first use, mode 0600;
    safe with many processes starting at once)."""
    env = os.environ.get("CAREFLOW_SECRET_KEY")
    if env:
        return env
    path = Path(home) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    for _ in range(50):  # another process may be writing it right now
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.02)
    raise CareflowError(f"{path} is empty; delete it or set CAREFLOW_SECRET_KEY")
