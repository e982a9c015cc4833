"""The hand-computed fixture month of the report tests: March 2026 (Asia/Shanghai).

``build_month(cf)`` inserts rows straight into the ticket, SLA clock, complaint, survey,
revisit, customer and task tables (no process runs); ``tests/test_reports.py`` adds one
real ticket run through the engine on top. Every expected figure is worked out by hand in
the test file from the rows below.

Tickets (created_by / engineer; times are Beijing time):

====  ================  ==============  ================  =====  ==========================================
id    number            created         type / priority   by     clocks
====  ================  ==============  ================  =====  ==========================================
T1    SN20260228001     02-28 23:30     fault / urgent    ann    met, met (February: not in March)
T2    SN20260301001     03-01 00:10     fault / urgent    ann    FR met 1 h; solution met 3 h; closed 5/5
T3    SN20260305001     03-05 10:00     fault / import.   cara   FR met 2 h; solution paused 20 h, met at
                                                                 34 h wall (14 h counted); closed 4,3,4,4
T4    SN20260310001     03-10 09:00     fault / urgent    ann    R1 met 0.5 h / met 3 h; reopened 03-11 10:00;
                                                                 R2 FR breached 3 h, solution breached 6 h
T5    SN20260320001     03-20 15:00     usage / general   cara   FR met 2 h; solution 3WD running, due
                                                                 03-25 15:00: overdue
T6    SN20260331001     03-31 23:30     complaint/import. ann    respond met 50 min, plan met, resolve paused
                                                                 since 04-01 10:00 (pending); owed by CS
T7    SN20260401001     04-01 00:10     other / urgent    ann    met, met (April: not in March)
T8    SN20260325001     03-25 09:00     other / urgent    web    FR met 0.5 h; solution paused at 14:00 after
                                                                 5 h of a 4 h budget: breached
====  ================  ==============  ================  =====  ==========================================
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from engine import accounts
from engine.complaints import Complaint
from engine.customers import Customer
from engine.models import HumanTask, Instance, ProcessVersion
from engine.revisits import CustomerRevisit
from engine.sla import SlaClockRow
from engine.surveys import SurveyResponse
from engine.tickets import Ticket, TicketEvent

SH = ZoneInfo("Asia/Shanghai")
FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 4, 2, 12, 0, tzinfo=SH)  # the report is run after the month
H = timedelta(hours=1)

TEAM_USERS = {  # username: (role, groups)
    "tom": ("agent", ["technical_support"]), "tina": ("agent", ["technical_support"]),
    "tess": ("supervisor", ["technical_support", "supervisor"]),
    "ann": ("agent", ["customer_service"]), "cara": ("agent", ["customer_service"]),
    "sam": ("supervisor", ["customer_service", "supervisor"]),
    "amy": ("agent", ["account_manager"]), "bob": ("agent", ["account_manager"]),
    "carl": ("agent", ["account_manager"]),
}


def sh(mo: int, d: int, h: int = 0, mi: int = 0, y: int = 2026) -> datetime:
    """A Beijing wall-clock time (2026 by default)."""
    return datetime(y, mo, d, h, mi, tzinfo=SH)


def add_team_users(cf, existing: set[str] = frozenset()) -> None:
    """The users and groups of the fixture (skipping usernames that already exist)."""
    for name, (role, groups) in TEAM_USERS.items():
        if name not in existing:
            accounts.add_user(cf, name, role=role, password=None, groups=groups, display_name=name.title())


def _clock(key: str, name: str, budget: str, start: datetime, *, status: str, due: datetime | None,
           stop: datetime | None = None, pauses: list | None = None, priority: str | None = None,
           owner: str | None = None, group: str = "technical_support", subject_type: str = "ticket",
           ticket_type: str | None = "product_fault") -> SlaClockRow:
    return SlaClockRow(subject_type=subject_type, subject_key=key, instance_id=None, name=name, status=status,
                       priority=priority, ticket_type=ticket_type, tier=None, policy="default", budget=budget,
                       calendar_name="cn", started_at=start, pauses=pauses or [], history=[], ladder=[], due_at=due,
                       stopped_at=stop, next_rung_at=None, owner=owner, group_name=group, created_at=start,
                       updated_at=stop or start)


def _pause(start: datetime, end: datetime | None, reason: str = "waiting_for_parts") -> dict:
    return {"paused_at": start.astimezone(UTC).isoformat(),
            "resumed_at": end.astimezone(UTC).isoformat() if end else None, "reason": reason}


def _ticket(number: str, created: datetime, ttype: str, priority: str, status: str, by: str | None,
            engineer: str | None, *, subject: str | None = None, reopen: int = 0, sat: tuple | None = None,
            fault: str | None = None, resolved: datetime | None = None, instance_id: int | None = None) -> Ticket:
    satisfaction = None
    if sat:
        satisfaction = {d: {"score": s} for d, s in zip(("response_speed", "resolution_efficiency",
                                                         "engineer_expertise", "overall"), sat, strict=True)}
    return Ticket(number=number, instance_id=instance_id, customer_id="C1", customer_name="上海示例科技有限公司",
                  customer_type="enterprise", type=ttype, priority=priority, status=status, round=1 + reopen,
                  reopen_count=reopen, received_at=created, created_at=created, created_by=by, engineer=engineer,
                  sla_subject=subject or number, fault_category=fault, spare_parts=[], facts={},
                  satisfaction=satisfaction, overall_score=sat[3] if sat else None, resolved_at=resolved,
                  last_update_at=created)


def build_month(cf) -> dict[str, int]:
    """Insert the fixture month; returns ids of rows other tests refer to (instances, customers...)."""
    pv_id, process_id = _process_version(cf)
    with cf.Session() as s, s.begin():
        inst = {}
        for key, status in (("T5", "running"), ("T6", "running"), ("X", "running"), ("F1", "completed"),
                            ("F2", "running")):
            row = Instance(process_version_id=pv_id, process_id=process_id, status=status, revision=1, state="{}",
                           serializer_version="fixture", created_at=sh(3, 1), updated_at=sh(3, 1),
                           business_key={"T5": "SN20260320001", "T6": "SN20260331001"}.get(key))
            s.add(row)
            s.flush()
            inst[key] = row.id

        s.add_all([
            _ticket("SN20260228001", sh(2, 28, 23, 30), "product_fault", "urgent", "closed", "ann", "tom",
                    sat=(5, 5, 5, 5)),
            _ticket("SN20260301001", sh(3, 1, 0, 10), "product_fault", "urgent", "closed", "ann", "tom",
                    sat=(5, 5, 5, 5), fault="hardware", resolved=sh(3, 1, 3, 10)),
            _ticket("SN20260305001", sh(3, 5, 10), "product_fault", "important", "closed", "cara", "tom",
                    sat=(4, 3, 4, 4), fault="software", resolved=sh(3, 6, 20)),
            _ticket("SN20260310001", sh(3, 10, 9), "product_fault", "urgent", "closed", "ann", "tina",
                    subject="SN20260310001/R2", reopen=1, sat=(3, 3, 4, 3), fault="hardware",
                    resolved=sh(3, 11, 16)),
            _ticket("SN20260320001", sh(3, 20, 15), "usage_question", "general", "remote", "cara", "tom",
                    instance_id=inst["T5"]),
            _ticket("SN20260331001", sh(3, 31, 23, 30), "service_complaint", "important", "remote", "ann", None,
                    instance_id=inst["T6"]),
            _ticket("SN20260401001", sh(4, 1, 0, 10), "other", "urgent", "closed", "ann", "tom",
                    resolved=sh(4, 1, 2)),
            _ticket("SN20260325001", sh(3, 25, 9), "other", "urgent", "on_site", "web", "tina"),
        ])
        s.add_all([TicketEvent(number="SN20260310001", at=sh(3, 11, 10), status="reopened", round=1,
                               reason="not_solved", by="wang.fang")])

        s.add_all([
            # T1, February
            _clock("SN20260228001", "first_response", "PT2H", sh(2, 28, 23, 30), status="met",
                   due=sh(3, 1, 1, 30), stop=sh(3, 1, 0, 30), priority="urgent", owner="tom"),
            _clock("SN20260228001", "solution", "PT4H", sh(2, 28, 23, 30), status="met",
                   due=sh(3, 1, 3, 30), stop=sh(3, 1, 2), priority="urgent", owner="tom"),
            # T2
            _clock("SN20260301001", "first_response", "PT2H", sh(3, 1, 0, 10), status="met",
                   due=sh(3, 1, 2, 10), stop=sh(3, 1, 1, 10), priority="urgent", owner="tom"),
            _clock("SN20260301001", "solution", "PT4H", sh(3, 1, 0, 10), status="met",
                   due=sh(3, 1, 4, 10), stop=sh(3, 1, 3, 10), priority="urgent", owner="tom"),
            # T3: 20 h waiting for parts moved the solution deadline from 03-06 10:00 to 03-07 06:00
            _clock("SN20260305001", "first_response", "PT4H", sh(3, 5, 10), status="met",
                   due=sh(3, 5, 14), stop=sh(3, 5, 12), priority="important", owner="tom"),
            _clock("SN20260305001", "solution", "PT24H", sh(3, 5, 10), status="met",
                   due=sh(3, 7, 6), stop=sh(3, 6, 20), pauses=[_pause(sh(3, 5, 14), sh(3, 6, 10))],
                   priority="important", owner="tom"),
            # T4 round 1, then round 2 after the reopening
            _clock("SN20260310001", "first_response", "PT2H", sh(3, 10, 9), status="met",
                   due=sh(3, 10, 11), stop=sh(3, 10, 9, 30), priority="urgent", owner="tina"),
            _clock("SN20260310001", "solution", "PT4H", sh(3, 10, 9), status="met",
                   due=sh(3, 10, 13), stop=sh(3, 10, 12), priority="urgent", owner="tina"),
            _clock("SN20260310001/R2", "first_response", "PT2H", sh(3, 11, 10), status="breached",
                   due=sh(3, 11, 12), stop=sh(3, 11, 13), priority="urgent", owner="tina"),
            _clock("SN20260310001/R2", "solution", "PT4H", sh(3, 11, 10), status="breached",
                   due=sh(3, 11, 14), stop=sh(3, 11, 16), priority="urgent", owner="tina"),
            # T5: solution (3 working days from Friday 15:00) still running long after its due time
            _clock("SN20260320001", "first_response", "PT24H", sh(3, 20, 15), status="met",
                   due=sh(3, 21, 15), stop=sh(3, 20, 17), priority="general", owner="tom",
                   ticket_type="usage_question"),
            _clock("SN20260320001", "solution", "3WD", sh(3, 20, 15), status="running",
                   due=sh(3, 25, 15), priority="general", owner="tom", ticket_type="usage_question"),
            # T6: the complaint rule's clocks on a service-complaint ticket, owed by customer service
            _clock("SN20260331001", "respond", "PT1H", sh(3, 31, 23, 30), status="met",
                   due=sh(4, 1, 0, 30), stop=sh(4, 1, 0, 20), priority="important", group="customer_service",
                   ticket_type="service_complaint"),
            _clock("SN20260331001", "plan", "PT24H", sh(3, 31, 23, 30), status="met",
                   due=sh(4, 1, 23, 30), stop=sh(4, 1, 0, 20), priority="important", group="customer_service",
                   ticket_type="service_complaint"),
            _clock("SN20260331001", "resolve", "PT48H", sh(3, 31, 23, 30), status="paused", due=None,
                   pauses=[_pause(sh(4, 1, 10), None, "waiting_for_customer")], priority="important",
                   group="customer_service", ticket_type="service_complaint"),
            # T7, April
            _clock("SN20260401001", "first_response", "PT2H", sh(4, 1, 0, 10), status="met",
                   due=sh(4, 1, 2, 10), stop=sh(4, 1, 1), priority="urgent", owner="tom", ticket_type="other"),
            _clock("SN20260401001", "solution", "PT4H", sh(4, 1, 0, 10), status="met",
                   due=sh(4, 1, 4, 10), stop=sh(4, 1, 2), priority="urgent", owner="tom", ticket_type="other"),
            # T8: paused after the 4 h budget was used up: breached although it stands still
            _clock("SN20260325001", "first_response", "PT2H", sh(3, 25, 9), status="met",
                   due=sh(3, 25, 11), stop=sh(3, 25, 9, 30), priority="urgent", owner="tina", ticket_type="other"),
            _clock("SN20260325001", "solution", "PT4H", sh(3, 25, 9), status="paused", due=None,
                   pauses=[_pause(sh(3, 25, 14), None, "waiting_for_customer")], priority="urgent", owner="tina",
                   ticket_type="other"),
        ])

        def complaint(number, received, cause, by, status, resolved=None, related=None):
            return Complaint(number=number, cause=cause, status=status, round=1, received_at=received,
                             resolved_at=resolved, related_ticket=related, recorded_by=by, facts={},
                             customer_name="上海示例科技有限公司", created_at=received, updated_at=received)

        def cclocks(number, received, by, outcomes):
            out = []
            for (name, budget), (status, stop) in zip((("respond", "PT1H"), ("plan", "PT24H"), ("resolve", "PT48H")),
                                                      outcomes, strict=True):
                due = received + {"PT1H": H, "PT24H": 24 * H, "PT48H": 48 * H}[budget]
                out.append(_clock(number, name, budget, received, status=status, due=due, stop=stop, owner=by,
                                  group="customer_service", subject_type="complaint",
                                  ticket_type="service_complaint"))
            return out

        s.add_all([
            complaint("CP20260228001", sh(2, 28, 23, 30), "billing", "ann", "closed", sh(3, 1, 9)),
            complaint("CP20260303001", sh(3, 3, 10), "response_delay", "ann", "closed", sh(3, 4, 9),
                      related="SN20260301001"),
            complaint("CP20260312001", sh(3, 12, 9), "service_attitude", "cara", "executing"),
            complaint("CP20260331001", sh(3, 31, 23, 30), "service_attitude", "ann", "recorded"),
        ])
        s.add_all([
            *cclocks("CP20260228001", sh(2, 28, 23, 30), "ann",
                     [("met", sh(3, 1, 0)), ("met", sh(3, 1, 8)), ("met", sh(3, 1, 9))]),
            *cclocks("CP20260303001", sh(3, 3, 10), "ann",
                     [("met", sh(3, 3, 10, 30)), ("met", sh(3, 3, 18)), ("met", sh(3, 4, 9))]),
            *cclocks("CP20260312001", sh(3, 12, 9), "cara",
                     [("breached", sh(3, 12, 10, 30)), ("met", sh(3, 12, 20)), ("running", None)]),
            *cclocks("CP20260331001", sh(3, 31, 23, 30), "ann",
                     [("met", sh(3, 31, 23, 50)), ("running", None), ("running", None)]),
        ])

        def customer(name, ctype, tier, am, due, phone):
            return Customer(customer_type=ctype, name=name, phone=phone, phone_key=phone, tier=tier,
                            account_manager=am, status="active", revisit_due_at=due, need_types=[],
                            created_at=sh(1, 1), updated_at=sh(1, 1))

        c1 = customer("上海示例科技有限公司", "enterprise", "core", "amy", sh(4, 2, 9), "13800000001")
        c2 = customer("李四", "individual", "important", "bob", sh(3, 31, 9), "13800000002")
        c3 = customer("杭州小店", "enterprise", "basic", None, sh(4, 30, 9), "13800000003")
        c4 = customer("潜在客户甲", "enterprise", "potential", "carl", sh(4, 10, 9), "13800000004")
        c5 = customer("战略客户乙", "enterprise", "A", "amy", sh(3, 20, 9), "13800000005")
        s.add_all([c1, c2, c3, c4, c5])
        s.flush()

        def revisit(c, due, status, started=None, completed=None, key=None):
            return CustomerRevisit(customer_id=c.id, due_key=key or f"due:{due.date()}", kind="scheduled",
                                   due_at=due, tier=c.tier, mode="phone", status=status, started_at=started,
                                   completed_at=completed, created_at=due)

        s.add_all([
            revisit(c1, sh(3, 2, 9), "completed", sh(3, 2, 9), sh(3, 5, 15)),   # on time
            revisit(c2, sh(3, 3, 9), "completed", sh(3, 3, 9), sh(3, 12, 9)),   # late (limit 03-10 09:00)
            revisit(c2, sh(3, 17, 9), "started", sh(3, 17, 9)),                  # missed; c2 overdue now
            revisit(c3, sh(3, 30, 9), "started", sh(3, 30, 9)),                  # pending until 04-06
            revisit(c1, sh(2, 27, 9), "completed", sh(2, 27, 9), sh(2, 28, 9)),  # February
            revisit(c4, sh(3, 10, 9), "failed"),                                 # missed
        ])

        def answer(c, at, scores, ticket=None, by="customer", channel="link", followup=None):
            return SurveyResponse(customer_id=c.id, ticket_number=ticket, channel=channel, taken_by=by, at=at,
                                  suggestions={}, followup_instance_id=followup,
                                  **dict(zip(("response_speed", "resolution_efficiency", "engineer_expertise",
                                              "overall"), scores, strict=True)))

        s.add_all([
            answer(c1, sh(3, 8, 10), (5, 4, 5, 5), ticket="SN20260305001"),
            answer(c2, sh(3, 15, 10), (2, 2, 3, 1), by="cara", channel="phone", followup=inst["F1"]),
            answer(c1, sh(2, 27, 10), (1, 1, 1, 1), by="ann", channel="phone"),
            answer(c2, sh(3, 31, 23, 30), (3, 3, 3, 2), by="ann", channel="phone", followup=inst["F2"]),
        ])

        def task(name, group, assignee, due, instance, status="ready"):
            return HumanTask(id=str(uuid.uuid4()), instance_id=instance, process_id=process_id,
                             process_version_id=pv_id, name=name, title=f"{name} / {name}", lane=group,
                             group_name=group, assignee=assignee, status=status, created_at=sh(3, 30), due_at=due)

        s.add_all([
            task("ut_remote", "technical_support", "tom", sh(4, 2, 10), inst["T5"]),
            task("ut_diagnose", "technical_support", None, sh(4, 3, 9), inst["T6"]),
            task("ut_record", "customer_service", "ann", None, inst["X"]),
            task("ut_done", "technical_support", "tom", sh(3, 1), inst["X"], status="completed"),
        ])
        return {"c1": c1.id, "c2": c2.id, "c3": c3.id, "c4": c4.id, "c5": c5.id, **inst}


def _process_version(cf) -> tuple[int, str]:
    """A deployed process version for the fixture's instances and tasks (``simple.bpmn`` if none is)."""
    with cf.Session() as s:
        pv = s.scalar(select(ProcessVersion).order_by(ProcessVersion.id).limit(1))
        if pv is not None:
            return pv.id, pv.process_id
    [result] = cf.deploy([FIXTURES / "simple.bpmn"], author="test")
    return result.version_id, "simple_review"
