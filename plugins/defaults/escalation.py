"""Default escalation ladder: remind the owner at 50 %, alert the supervisor at 100 %, the manager at 150 %."""

from __future__ import annotations

from plugins.hookspecs import hookimpl

DEFAULT_LADDER = (
    {"name": "remind_owner", "at_fraction": 0.5, "notify": "owner", "repeat_every": None},
    {"name": "alert_supervisor", "at_fraction": 1.0, "notify": "supervisor", "repeat_every": None},
    {"name": "alert_manager", "at_fraction": 1.5, "notify": "manager", "repeat_every": None},
)


@hookimpl(trylast=True)
def careflow_escalation_ladder(clock: dict) -> list[dict]:
    """Default ladder: remind the owner at 50 %, the supervisor at 100 %, the manager at 150 %."""
    return [dict(rung) for rung in DEFAULT_LADDER]
