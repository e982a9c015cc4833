"""Monthly report speed over 100,000 tickets (rows bulk-inserted, no process runs).

    .venv/bin/python bench/reports.py [--tickets 100000] [--months 12] [--database-url URL]

Builds a year of after-sales data in a temporary SQLite database (or the given one): tickets
with their SLA clocks (pauses, breaches, reopened rounds, complaint-rule clocks), complaints
with their 1-24-48 clocks, customers with revisits, survey answers and open tasks. Then times
``engine.reports.month_report`` for the last month. Prints ``name: value`` lines:
``month_report_ms`` (all teams; median of 15 runs, target <= 500), ``month_report_team_ms``
(one team), ``report_page_ms`` (the reports page over HTTP through the Flask app: figures,
tables, charts, rendering) and ``tickets_in_month``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select  # noqa: E402

from engine import accounts, reports  # noqa: E402
from engine.complaints import CAUSES, Complaint  # noqa: E402
from engine.customers import Customer  # noqa: E402
from engine.models import HumanTask, Instance, ProcessVersion  # noqa: E402
from engine.revisits import CustomerRevisit  # noqa: E402
from engine.runtime import Careflow  # noqa: E402
from engine.sla import SlaClockRow  # noqa: E402
from engine.surveys import SurveyResponse  # noqa: E402
from engine.tickets import Ticket  # noqa: E402

from benchutil import analyze, signed_in_client, temp_engine, timed  # noqa: E402

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 4, 2, 12, 0, tzinfo=SH)
MONTH = "2026-03"
H = timedelta(hours=1)
TS_AGENTS = [f"engineer{i:02d}" for i in range(20)]
CS_AGENTS = [f"agent{i:02d}" for i in range(20)]
AMS = [f"am{i:02d}" for i in range(10)]
BUDGETS = {"urgent": (2, 4), "important": (4, 24), "general": (24, 72)}  # hours: first response, solution
TYPES = ["product_fault"] * 5 + ["usage_question"] * 3 + ["service_complaint", "other"]
PRIORITIES = ["urgent"] * 3 + ["important"] * 7 + ["general"] * 10
OPEN = ["diagnosing", "remote", "on_site", "reopened"]
TIERS = ["core"] * 2 + ["important"] * 3 + ["basic"] * 4 + ["potential"]


class Batch:
    """Bulk inserts, flushed every 10,000 rows of a table."""

    def __init__(self, cf: Careflow):
        self.cf, self.rows = cf, {}

    def add(self, model, **row) -> None:
        """Queue one row."""
        rows = self.rows.setdefault(model, [])
        rows.append(row)
        if len(rows) >= 10_000:
            self.flush(model)

    def flush(self, model=None) -> None:
        """Insert the queued rows (of one table, or all)."""
        for m in [model] if model is not None else list(self.rows):
            rows = self.rows.get(m)
            if rows:
                with self.cf.Session() as s, s.begin():
                    s.execute(insert(m), rows)
                self.rows[m] = []


def _clock(b: Batch, key: str, name: str, hours: float, start: datetime, took: float | None, *, priority: str,
           owner: str | None, group: str, subject_type: str = "ticket", pause: float = 0.0) -> None:
    """One clock: stopped after ``took`` hours of counted time (None: still running), ``pause`` hours paused."""
    pauses = []
    if pause:
        p0 = start + H * min(1.0, hours / 4)
        pauses = [{"paused_at": p0.astimezone(UTC).isoformat(),
                   "resumed_at": (p0 + H * pause).astimezone(UTC).isoformat(), "reason": "waiting_for_parts"}]
    due = start + H * (hours + pause)
    stop = start + H * (took + pause) if took is not None else None
    status = "running" if stop is None else ("met" if stop <= due else "breached")
    b.add(SlaClockRow, subject_type=subject_type, subject_key=key, instance_id=None, name=name, status=status,
          priority=priority, ticket_type=None, tier=None, policy="default", budget=f"PT{int(hours)}H",
          calendar_name="cn", started_at=start, pauses=pauses, history=[], ladder=[], due_at=due, stopped_at=stop,
          next_rung_at=None, owner=owner, group_name=group, created_at=start, updated_at=stop or start)


def seed(cf: Careflow, n: int, months: int) -> None:
    """Users, tickets with clocks, complaints, customers with revisits, surveys and open tasks."""
    rnd = random.Random(7)
    for name in TS_AGENTS:
        accounts.add_user(cf, name, role="agent", password=None, groups=["technical_support"])
    for name in CS_AGENTS:
        accounts.add_user(cf, name, role="agent", password=None, groups=["customer_service"])
    for name in AMS:
        accounts.add_user(cf, name, role="agent", password=None, groups=["account_manager"])
    end = datetime(2026, 4, 1, tzinfo=SH)
    first = end.year * 12 + end.month - 1 - months  # months back from April 2026
    start = datetime(first // 12, first % 12 + 1, 1, tzinfo=SH)
    span = (end - start).total_seconds()
    with cf.Session() as s, s.begin():
        pv = ProcessVersion(process_id="after_sales_ticket", process_name="bench", version=1, checksum="bench",
                            bpmn_files={}, forms={}, form_checksums={}, warnings=[], created_at=start)
        s.add(pv)
        s.flush()
        pv_id = pv.id
    b = Batch(cf)
    serial: dict[str, int] = {}
    open_tickets = []
    for i in range(n):
        created = start + timedelta(seconds=span * i / n)
        day = created.astimezone(SH).strftime("%Y%m%d")
        serial[day] = serial.get(day, 0) + 1
        number = f"SN{day}{serial[day]:03d}"
        ttype, priority = rnd.choice(TYPES), rnd.choice(PRIORITIES)
        fr, sol = BUDGETS[priority]
        age_days = (NOW - created).total_seconds() / 86400
        still_open = rnd.random() < (0.6 if age_days < 3 else 0.15 if age_days < 20 else 0.002)
        reopened = rnd.random() < 0.05
        engineer, by = rnd.choice(TS_AGENTS), rnd.choice(CS_AGENTS)
        pause = rnd.choice([0, 0, 0, 0, 0, 0, 0, 0, 2, 20])
        responded = rnd.uniform(0.1, fr * 1.3)
        solved = None if still_open and not reopened else rnd.uniform(0.5, sol * 1.2)
        names = ("respond", "resolve") if ttype == "service_complaint" else ("first_response", "solution")
        if ttype == "service_complaint":
            fr, sol = 1, 48
            _clock(b, number, "plan", 24, created, responded, priority=priority, owner=engineer,
                   group="technical_support")
        _clock(b, number, names[0], fr, created, responded, priority=priority, owner=engineer,
               group="technical_support")
        _clock(b, number, names[1], sol, created, solved, priority=priority, owner=engineer,
               group="technical_support", pause=pause)
        subject, rnd_no = number, 1
        if reopened:
            rnd_no, subject = 2, f"{number}/R2"
            again = created + H * ((solved or 1) + pause + 24)
            _clock(b, subject, names[0], fr, again, rnd.uniform(0.1, fr * 1.5), priority=priority, owner=engineer,
                   group="technical_support")
            _clock(b, subject, names[1], sol, again, None if still_open else rnd.uniform(0.5, sol * 1.5),
                   priority=priority, owner=engineer, group="technical_support")
        status = rnd.choice(OPEN) if still_open else rnd.choice(["closed"] * 9 + ["revisit"])
        survey = None
        if status == "closed" and rnd.random() < 0.8:
            scores = [max(1, min(5, round(rnd.gauss(4.3, 0.8)))) for _ in range(4)]
            survey = {d: {"score": sc} for d, sc in zip(("response_speed", "resolution_efficiency",
                                                         "engineer_expertise", "overall"), scores, strict=True)}
        b.add(Ticket, number=number, instance_id=None, customer_id=str(1 + i % 10_000), customer_name=f"客户{i % 10_000}",
              customer_type="enterprise", customer_tier=None, phone=None, contact_name=None, channel="phone",
              type=ttype, priority=priority, status=status, round=rnd_no, reopen_count=int(reopened),
              symptom="设备无法启动 / device does not start", fault_category=rnd.choice(
                  ["hardware", "software", "network", "configuration", None]) if ttype == "product_fault" else None,
              received_at=created - timedelta(minutes=5), occurred_at=None, created_at=created, created_by=by,
              sla_policy="default", sla_subject=subject, first_response_due=created + H * fr,
              solution_due=created + H * sol, solution_warn_at=None, first_response_at=None,
              resolved_at=None if still_open else created + H * ((solved or 1) + pause), resolved_by=None,
              closed_at=None, visit_at=None, engineer=engineer, spare_parts=[], satisfaction=survey,
              overall_score=survey["overall"]["score"] if survey else None, facts={}, last_update_at=created)
        if still_open:
            open_tickets.append((number, created, engineer))
    b.flush()

    for i in range(n // 16):  # complaints
        received = start + timedelta(seconds=span * i / (n // 16))
        number = f"CP{received.astimezone(SH):%Y%m%d}{i:06d}"
        by = rnd.choice(CS_AGENTS)
        done = (NOW - received) > 60 * H or rnd.random() < 0.5
        b.add(Complaint, number=number, customer_id=None, customer_name="客户", channel="phone",
              cause=rnd.choice(list(CAUSES)), severity="normal", content="投诉内容", customer_demand=None,
              related_ticket=None, status="closed" if done else "investigating", round=1, instance_id=None, tier=None,
              sla_policy="default-complaint-1-24-48", received_at=received, respond_due=received + H,
              plan_due=received + 24 * H, resolve_due=received + 48 * H, responded_at=None, planned_at=None,
              resolved_at=received + 40 * H if done else None, closed_at=None, satisfaction=None, substantiated=None,
              facts={}, recorded_by=by, created_at=received, updated_at=received)
        for name, hours in (("respond", 1), ("plan", 24), ("resolve", 48)):
            _clock(b, number, name, hours, received, rnd.uniform(0.2, hours * 1.3) if done else None,
                   priority=None, owner=by, group="customer_service", subject_type="complaint")
    b.flush()

    customers = n // 10
    for i in range(customers):
        tier = rnd.choice(TIERS)
        b.add(Customer, customer_type="enterprise", name=f"客户{i}", phone=f"1380000{i:04d}", phone_key=f"1380000{i:04d}",
              need_types=[], has_inquiries=False, tier=tier, account_manager=rnd.choice(AMS), status="active",
              revisit_due_at=NOW + timedelta(days=rnd.uniform(-10, 30)), created_at=start, updated_at=start)
    b.flush()
    with cf.Session() as s:
        ids = list(s.scalars(select(Customer.id)))
    for k in range(n):  # revisits: one per customer and month or so
        cid = ids[k % len(ids)]
        due = start + timedelta(seconds=span * k / n)
        done = rnd.random() < (0.7 if NOW - due < timedelta(days=10) else 0.99)
        b.add(CustomerRevisit, customer_id=cid, due_key=f"due:{k}", kind="scheduled", due_at=due,
              tier=rnd.choice(TIERS), mode="phone", reason=None, status="completed" if done else "started",
              instance_id=None, source_instance_id=None, requested_by="timer", created_at=due, started_at=due,
              completed_at=due + timedelta(days=rnd.uniform(0, 10)) if done else None, summary=None, error=None)
    for k in range(n // 3):  # survey answers
        at = start + timedelta(seconds=span * k / (n // 3))
        scores = [max(1, min(5, round(rnd.gauss(4.2, 0.9)))) for _ in range(4)]
        b.add(SurveyResponse, customer_id=ids[k % len(ids)], ticket_number=None, link_id=None, channel="link",
              taken_by="customer", at=at, response_speed=scores[0], resolution_efficiency=scores[1],
              engineer_expertise=scores[2], overall=scores[3], suggestions={}, followup_instance_id=None)
    b.flush()

    with cf.Session() as s, s.begin():  # the open tickets' instances and their ready tasks
        s.execute(insert(Instance), [dict(process_version_id=pv_id, process_id="after_sales_ticket", status="running",
                                          revision=1, state="{}", serializer_version="bench", business_key=num,
                                          created_at=created, updated_at=created)
                                     for num, created, _ in open_tickets])
        inst = {k: v for k, v in s.execute(select(Instance.business_key, Instance.id))}
    for num, created, engineer in open_tickets:
        b.add(HumanTask, id=str(uuid.uuid4()), instance_id=inst[num], process_id="after_sales_ticket",
              process_version_id=pv_id, name="ut_remote", title="远程处理 / Remote handling", lane="technical_support",
              group_name="technical_support", assignee=engineer if rnd.random() < 0.7 else None, status="ready",
              created_at=created, due_at=created + 24 * H, priority=None, customer_id=None, customer_name=None)
    b.flush()
    with cf.Session() as s, s.begin():
        for num, _created, _e in open_tickets:
            s.execute(Ticket.__table__.update().where(Ticket.number == num).values(instance_id=inst[num]))
    analyze(cf)


def main() -> None:
    """Seed and measure."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--months", type=int, default=12, help="spread the tickets over this many months")
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    cf, tmp = temp_engine(args.database_url)
    t0 = time.perf_counter()
    seed(cf, args.tickets, args.months)
    print(f"seed_s: {time.perf_counter() - t0:.1f}")
    print(f"tickets: {args.tickets}")

    def report(team=None):
        with cf.Session() as s:
            return reports.month_report(s, MONTH, team, now=NOW)

    print(f"tickets_in_month: {report()['ticket_volume']['opened']['count']}")
    print(f"month_report_ms: {timed(report):.1f}")
    print(f"month_report_team_ms: {timed(lambda: report('technical_support')):.1f}")

    accounts.add_user(cf, "boss", role="admin", password=None)
    client = signed_in_client(cf, "boss")

    def page():
        r = client.get(f"/reports?month={MONTH}")
        assert r.status_code == 200, r.status_code

    print(f"report_page_ms: {timed(page, runs=7):.1f}")
    cf.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
