"""Plugin configuration, read from environment variables (documented in docs/plugins.md).

Read once when the plugin manager is built; a bad value is a ``ConfigError`` naming the
variable and what it accepts, never a traceback deep inside a step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import CareflowError

TIER_SCHEMES = ("spend", "abc")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class ConfigError(CareflowError):
    """An environment variable of the plugin system has a value it cannot use."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: use 1/true/yes/on or 0/false/no/off")


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _names(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def _lane_groups(raw: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        lane, sep, group = part.partition("=")
        if not sep or not lane.strip() or not group.strip():
            raise ConfigError(f"CAREFLOW_LANE_GROUPS: {part.strip()!r} is not lane=group "
                              "(e.g. technical_support=tech_team,customer_service=hotline)")
        out[lane.strip()] = group.strip()
    return out


@dataclass(frozen=True)
class PluginSettings:
    """Everything the plugin system and the shipped plugins read from the environment."""

    allowed: frozenset[str] | None = None  # CAREFLOW_PLUGINS; None = every installed plugin
    trace: bool = False  # CAREFLOW_TRACE_HOOKS
    tier_scheme: str = "spend"  # CAREFLOW_TIER_SCHEME
    observer_timeout_s: float = 5.0  # CAREFLOW_PLUGIN_TIMEOUT
    channel_timeout_s: float = 10.0  # CAREFLOW_CHANNEL_TIMEOUT
    notify_log: str | None = None  # CAREFLOW_NOTIFY_LOG: None = logging, "off", or a file path
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_from: str = "careflow@localhost"
    smtp_starttls: bool = False
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    lane_groups: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PluginSettings:
        """Settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        scheme = (env.get("CAREFLOW_TIER_SCHEME") or "spend").strip().lower()
        if scheme not in TIER_SCHEMES:
            raise ConfigError(f"CAREFLOW_TIER_SCHEME={scheme!r}: use 'spend' (core/important/basic/potential) "
                              "or 'abc' (A/B/C by strategic value)")
        port = _number(env, "CAREFLOW_SMTP_PORT", 25, minimum=1)
        if port != int(port) or port > 65535:
            raise ConfigError(f"CAREFLOW_SMTP_PORT={env.get('CAREFLOW_SMTP_PORT')!r} is not a TCP port")
        url = (env.get("CAREFLOW_WEBHOOK_URL") or "").strip() or None
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"CAREFLOW_WEBHOOK_URL={url!r} must start with http:// or https://")
        return cls(
            allowed=_names(env.get("CAREFLOW_PLUGINS")),
            trace=_bool(env, "CAREFLOW_TRACE_HOOKS", False),
            tier_scheme=scheme,
            observer_timeout_s=_number(env, "CAREFLOW_PLUGIN_TIMEOUT", 5.0, minimum=0.01),
            channel_timeout_s=_number(env, "CAREFLOW_CHANNEL_TIMEOUT", 10.0, minimum=0.01),
            notify_log=env.get("CAREFLOW_NOTIFY_LOG") or None,
            smtp_host=(env.get("CAREFLOW_SMTP_HOST") or "").strip() or None,
            smtp_port=int(port),
            smtp_user=env.get("CAREFLOW_SMTP_USER") or None,
            smtp_password=env.get("CAREFLOW_SMTP_PASSWORD") or None,
            smtp_from=(env.get("CAREFLOW_SMTP_FROM") or "").strip() or "careflow@localhost",
            smtp_starttls=_bool(env, "CAREFLOW_SMTP_STARTTLS", False),
            webhook_url=url,
            webhook_secret=env.get("CAREFLOW_WEBHOOK_SECRET") or None,
            lane_groups=_lane_groups(env.get("CAREFLOW_LANE_GROUPS")),
        )
