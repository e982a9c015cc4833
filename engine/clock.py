"""The engine's notion of "now", injectable for tests and simulations.

SpiffWorkflow's timer code calls ``datetime.now(timezone.utc)`` through its module
global ``datetime``; we point that global at a subclass whose ``now()`` asks the active
clock, so BPMN timers, SLA clocks and audit times all agree on one (possibly simulated) time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from SpiffWorkflow.bpmn.specs.event_definitions import timer as _spiff_timer


class Clock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        return datetime.now(UTC)


class FrozenClock(Clock):
    """A clock that only moves when told to (for tests and simulations)."""

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware datetime")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        """The frozen time."""
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move time forward by ``delta`` and return the new now."""
        self._now += delta
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when``."""
        self._now = when.astimezone(UTC)


_state = threading.local()
_default = Clock()


def current_clock() -> Clock:
    """The clock active in this thread (the real one unless ``use_clock`` is in effect)."""
    return getattr(_state, "clock", None) or _default


def utcnow() -> datetime:
    """Now according to the active clock."""
    return current_clock().now()


def parse_moment(value: object, what: str, error: type[Exception] = ValueError) -> datetime:
    """An aware UTC datetime from an ISO 8601 string with an offset (``Z`` too) or an aware datetime;
    raises ``error`` naming ``what`` when it is not one or has no time zone."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise error(f"{what} {value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise error(f"{what} {value!r} has no time zone; write e.g. 2026-03-15T09:30:00+08:00")
    return moment.astimezone(UTC)


@contextlib.contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the active clock in this thread for the duration of the block."""
    previous = getattr(_state, "clock", None)
    _state.clock = clock
    try:
        yield clock
    finally:
        _state.clock = previous


class _ClockedDatetime(datetime):
    """``datetime`` whose ``now()`` follows the active Careflow clock."""

    @classmethod
    def now(cls, tz=None):  # noqa: ANN001 - mirrors datetime.now
        now = current_clock().now()
        return now.astimezone(tz) if tz else now.astimezone().replace(tzinfo=None)


_spiff_timer.datetime = _ClockedDatetime
