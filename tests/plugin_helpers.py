"""Helpers shared by the plugin, outbox and channel tests."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from engine.clock import FrozenClock
from engine.models import Incident, OutboxMessage, User
from engine.outbox import OutboxPolicy
from engine.runtime import Careflow
from plugins.channels import PermanentDeliveryError
from plugins.hookspecs import hookimpl
from plugins.manager import get_plugin_manager

FIXTURES = Path(__file__).parent / "fixtures"
NOTIFY_BPMN = FIXTURES / "plugins_notify.bpmn"
T0 = datetime(2024, 3, 15, 2, 0, tzinfo=UTC)  # 10:00 in Beijing

FAST = OutboxPolicy(max_attempts=3, backoff_s=60, backoff_max_s=600, channel_timeout_s=5, concurrency=4)


def engine_factory(settings):
    """Generator behind the ``make_cf`` fixtures: build engines on the test database with
    chosen plugins and configuration, closed afterwards.

    ``make_cf(*plugins, environ={...}, clock=...)``: the configuration comes only from
    ``environ`` (not the process environment); entry-point plugins are not loaded.
    """
    made: list[Careflow] = []

    def make(*plugins, environ: dict | None = None, clock=None, deploy: bool = True) -> Careflow:
        pm = get_plugin_manager(load_entry_points=False, environ={"CAREFLOW_NOTIFY_LOG": "off", **(environ or {})})
        for plugin in plugins:
            pm.register(plugin)
        cf = Careflow(settings, plugin_manager=pm, clock=clock or FrozenClock(T0))
        made.append(cf)
        if deploy:
            cf.deploy([NOTIFY_BPMN], author="test")
        return cf

    yield make
    for cf in made:
        cf.close()


def ticket(number: str = "SN20240315001", *, spend: float = 5000, email: str | None = "zhao@acme.cn",
           phone: str | None = "13800000000", fail: bool = False, priority: str = "general", **customer) -> dict:
    """Start data for the ``plugins_notify`` fixture process."""
    return {"number": number, "fail": fail, "fail_after": False, "priority": priority,
            "customer": {"name": "ACME 有限公司", "annual_spend": spend, "email": email, "phone": phone, **customer}}


def outbox(cf) -> list[OutboxMessage]:
    """Every outbox row, in id order."""
    with cf.Session() as s:
        return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def incidents(cf, kind: str | None = None) -> list[Incident]:
    """Every incident (of one kind), in id order."""
    with cf.Session() as s:
        q = select(Incident).order_by(Incident.id)
        if kind:
            q = q.where(Incident.kind == kind)
        return list(s.scalars(q))


def add_user(cf, username: str, *, email: str | None = None, role: str = "agent", supervisor: str | None = None,
             locale: str | None = None, groups: tuple[str, ...] = ()) -> None:
    """Create a user (and group memberships)."""
    from engine.models import GroupMembership

    with cf.Session() as s, s.begin():
        s.add(User(username=username, display_name=username.title(), email=email, role=role, supervisor=supervisor,
                   locale=locale, active=True, created_at=T0))
        s.flush()
        for g in groups:
            s.add(GroupMembership(username=username, group_name=g))


class RecordingChannel:
    """A channel that records what it is asked to send; can fail, fail for good, or hang."""

    def __init__(self, name: str = "test", *, fail_times: int = 0, permanent: bool = False,
                 hang: threading.Event | None = None, accepts=None, timeout: float | None = None,
                 delay: float = 0.0) -> None:
        self.name, self.fail_times, self.permanent, self.hang = name, fail_times, permanent, hang
        self._accepts, self.timeout, self.delay = accepts, timeout, delay
        self.calls: list[dict] = []
        self.sent: list[dict] = []
        self.lock = threading.Lock()

    def accepts(self, message: dict) -> bool:
        return True if self._accepts is None else self._accepts(message)

    def send(self, message: dict) -> None:
        with self.lock:
            self.calls.append(message)
            failing = self.fail_times != 0
            if self.fail_times > 0:
                self.fail_times -= 1
        if self.hang is not None:
            self.hang.wait(30)
        if self.delay:
            threading.Event().wait(self.delay)
        if failing and self.permanent:
            raise PermanentDeliveryError(f"{self.name}: address refused")
        if failing:
            raise RuntimeError(f"{self.name}: service unavailable")
        with self.lock:
            self.sent.append(message)


class ChannelPlugin:
    """A plugin contributing the given channels."""

    def __init__(self, *channels) -> None:
        self.channels = list(channels)

    @hookimpl
    def careflow_notification_channels(self) -> list:
        return list(self.channels)
