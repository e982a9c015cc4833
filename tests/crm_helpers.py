"""Helpers shared by the customer, revisit, survey, care and complaint tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from engine.customers import add_customer, credit_code_check_char
from engine.models import AuditEntry, GroupMembership, User

SH = ZoneInfo("Asia/Shanghai")
ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
FIXTURES = Path(__file__).parent / "fixtures"


def sh(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A Shanghai wall-clock time."""
    return datetime(y, mo, d, h, mi, tzinfo=SH)


def utc(dt: datetime) -> datetime:
    """The same moment in UTC."""
    return dt.astimezone(UTC)


def credit_code(n: int, region: str = "110108") -> str:
    """A valid unified social credit code (GB 32100-2015 check character) numbered ``n``."""
    first = f"91{region}{n:09d}"
    return first + credit_code_check_char(first)


def mobile(n: int) -> str:
    """A valid mainland mobile number numbered ``n``."""
    return f"139{n:08d}"


def enterprise(n: int, **extra) -> dict:
    """A valid enterprise customer record numbered ``n``."""
    return {"customer_type": "enterprise", "name": f"测试科技有限公司{n}号", "credit_code": credit_code(n),
            "phone": mobile(n), "contact_person": "王建国", "account_manager": "zhao.min", **extra}


def add_user(cf, username: str, role: str = "agent", groups: tuple[str, ...] = (), supervisor: str | None = None):
    """A user row (and group memberships) written directly."""
    with cf.Session() as s, s.begin():
        s.add(User(username=username, display_name=username, role=role, supervisor=supervisor, active=True,
                   created_at=cf.now()))
        s.flush()
        for g in groups:
            s.add(GroupMembership(username=username, group_name=g))


def add(cf, data: dict, actor: str = "tester") -> int:
    """Register a customer in its own transaction; returns its id."""
    with cf.Session() as s, s.begin():
        return add_customer(s, data, pm=cf.pm, actor=actor, now=cf.now()).id


def deploy(cf, *names: str) -> None:
    """Deploy shipped workflows by file name (their forms come from forms/)."""
    cf.deploy([WORKFLOWS / n for n in names], author="test")


def audit_rows(cf, action: str) -> list[dict]:
    """Audit rows with this action, in order, as readers see them (personal data masked)."""
    from engine.audit import entries_to_dicts

    with cf.Session() as s:
        rows = list(s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)))
        return entries_to_dicts(s, rows)


def race(engines: list, fn: Callable) -> list:
    """Call ``fn(engine)`` for every engine in a thread of its own, all released at the same moment;
    close the engines. Returns the results (in the order the calls finished)."""
    results: list = []
    barrier = threading.Barrier(len(engines))

    def run(eng):
        barrier.wait()
        results.append(fn(eng))

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for e in engines:
            e.close()
    return results
