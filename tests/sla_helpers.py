"""Helpers shared by the SLA, escalation and worker tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from engine.models import AuditEntry, User
from engine.sla import open_clocks, stop_clock
from engine.step import current_step

SH = ZoneInfo("Asia/Shanghai")
FIXTURES = Path(__file__).parent / "fixtures"


def sh(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A Shanghai wall-clock time."""
    return datetime(y, mo, d, h, mi, tzinfo=SH)


def iso(dt: datetime) -> str:
    """ISO 8601 in UTC, as the API and the JSON output give datetimes."""
    return dt.astimezone(UTC).isoformat()


def register_sla_functions(cf, owner: str | None = "alice", group: str = "technical_support") -> None:
    """Host functions the sla_* fixture processes call: they open and stop clocks in the step's session."""

    def sla_open(key: str, priority: str) -> dict:
        step = current_step()
        dues = open_clocks(step.session, subject_type="ticket", subject_key=key, instance_id=step.instance_id,
                           priority=priority, ticket_type="product_fault", tier="important", owner=owner,
                           group=group, started_at=step.now, pm=cf.pm)
        return {k: v.isoformat() if v else None for k, v in dues.items()}

    def sla_open_complaint(key: str) -> dict:
        step = current_step()
        dues = open_clocks(step.session, subject_type="complaint", subject_key=key, instance_id=step.instance_id,
                           priority=None, ticket_type="service_complaint", tier=None, owner=owner,
                           group="customer_service", started_at=step.now, pm=cf.pm)
        return {k: v.isoformat() if v else None for k, v in dues.items()}

    def sla_stop(key: str, name: str) -> None:
        step = current_step()
        stop_clock(step.session, key, name, step.now)

    cf.script_engine.environment.add_functions(
        {"sla_open": sla_open, "sla_open_complaint": sla_open_complaint, "sla_stop": sla_stop})


def deploy(cf, *names: str) -> None:
    """Deploy fixture BPMN files by name (without .bpmn)."""
    cf.deploy([FIXTURES / f"{n}.bpmn" for n in names], author="test")


def add_org(cf, lines: dict[str, str | None], now: datetime) -> None:
    """Create users with their supervisors: ``{"alice": "bob", "bob": "carol", "carol": None}``."""
    with cf.Session() as s, s.begin():
        for user, boss in lines.items():
            s.add(User(username=user, role="agent", supervisor=boss, active=True, created_at=now))


def count_audit(cf, action: str, instance_id: int | None = None) -> int:
    """How many audit rows have ``action`` (of one instance if given)."""
    with cf.Session() as s:
        q = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
        if instance_id is not None:
            q = q.where(AuditEntry.instance_id == instance_id)
        return s.scalar(q)
