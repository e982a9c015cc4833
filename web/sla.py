"""SLA countdown of a task for display: remaining time, and whether it is near due or overdue.

Near due: less than a quarter of the task's time is left, or less than two hours. The
server renders the text (works without JavaScript); ``static/js/app.js`` keeps it live.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask_babel import gettext as _

NEAR_FRACTION = 0.25
NEAR_ABSOLUTE = timedelta(hours=2)


@dataclass
class Countdown:
    """What the inbox shows for a due date."""

    state: str  # none | ok | near | overdue
    text: str
    due_iso: str | None = None
    created_iso: str | None = None


def duration_text(delta: timedelta) -> str:
    """``3 d 4 h``, ``2 h 05 min``, ``12 min`` (translated; at most two units)."""
    minutes = int(abs(delta).total_seconds() // 60)
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    if days:
        return _("%(d)d d %(h)d h", d=days, h=hours)
    if hours:
        return _("%(h)d h %(m)02d min", h=hours, m=mins)
    return _("%(m)d min", m=mins)


def countdown(due_at: datetime | None, created_at: datetime | None, now: datetime) -> Countdown:
    """The countdown of a task due at ``due_at`` (created at ``created_at``) as of ``now``."""
    if due_at is None:
        return Countdown("none", _("No deadline"))
    left = due_at - now
    due_iso = due_at.isoformat()
    created_iso = created_at.isoformat() if created_at else None
    if left <= timedelta(0):
        return Countdown("overdue", _("Overdue by %(time)s", time=duration_text(left)), due_iso, created_iso)
    total = (due_at - created_at) if created_at else None
    near = left < NEAR_ABSOLUTE or (total is not None and total > timedelta(0) and left < total * NEAR_FRACTION)
    return Countdown("near" if near else "ok", _("%(time)s left", time=duration_text(left)), due_iso, created_iso)
