"""Helpers for the after-sales ticket tests: form payloads (times relative to a frozen clock)
and ``Flow``, which drives one ``after_sales_ticket`` instance through the engine API."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from engine.clock import FrozenClock, use_clock
from engine.models import HumanTask, OutboxMessage
from engine.runtime import Careflow
from engine.tickets import Ticket, TicketEvent

SH = ZoneInfo("Asia/Shanghai")
ROOT = Path(__file__).resolve().parent.parent
TICKET_BPMN = ROOT / "workflows" / "after_sales_ticket.bpmn"
CS, TS, SUP = "customer_service", "technical_support", "supervisor"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=SH)  # a Monday, a working day


def sh(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A Beijing wall-clock time."""
    return datetime(y, mo, d, h, mi, tzinfo=SH)


def local(dt: datetime) -> str:
    """ISO 8601 with the +08:00 offset, as the forms take date-times."""
    return dt.astimezone(SH).isoformat(timespec="seconds")


def utc(value: str | datetime | None) -> datetime | None:
    """An ISO string or datetime as aware UTC."""
    if value is None:
        return None
    dt = datetime.fromisoformat(value) if isinstance(value, str) else value
    return dt.astimezone(UTC)


# ---------------------------------------------------------------------------- payloads


def intake(received_at: datetime, **over) -> dict:
    """The intake form: an enterprise customer whose production line stopped (urgent product fault)."""
    data = {
        "channel": "phone",
        "received_at": local(received_at),
        "customer": {"customer_type": "enterprise", "name": "杭州星河制造有限公司", "customer_id": "C000123",
                     "phone": "0571-88886666", "email": "it@xinghe.example.com", "tier": "core"},
        "contact": {"name": "王磊", "title": "IT 主管", "phone": "13812345678"},
        "problem": {"symptom": "MES 服务器无法启动，生产线停机", "since": "今天早上 8 点断电重启后",
                    "tried": "重启两次，检查电源"},
        "occurred_at": local(received_at - timedelta(minutes=55)),
        "type": "product_fault", "priority": "urgent", "complex": False,
    }
    data.update(over)
    return {"intake": data}


def classification(ticket_type: str = "product_fault", priority: str = "important") -> dict:
    """Technical support's classification of a complex case."""
    return {"classification": {"type": ticket_type, "priority": priority, "fault_category": "software",
                               "assessment": "数据库锁表导致部分模块不可用 / DB lock, only some modules affected"}}


def diagnosis(at: datetime) -> dict:
    """First response and diagnosis, the customer contacted at ``at``."""
    return {"diagnosis": {"first_contact_at": local(at), "contact_mode": "phone",
                          "findings": "RAID 控制器告警，系统盘只读 / RAID controller alarm, system disk read-only",
                          "fault_category": "hardware"}}


def remote(at: datetime, solved: bool = True) -> dict:
    """Remote handling, solved or not."""
    data = {"mode": "remote_desktop" if solved else "video",
            "steps": [{"at": local(at - timedelta(minutes=20)), "action": "远程登录检查 RAID 日志",
                       "result": "发现一块磁盘离线"},
                      {"at": local(at), "action": "重建阵列并重启服务", "result": "服务恢复" if solved else "仍无法启动"}],
            "solved": solved, "summary": "远程重建阵列后恢复" if solved else "疑似主板故障 / Suspected mainboard failure"}
    if not solved:
        data["not_solved_reason"] = "需更换硬件 / Hardware must be replaced"
    return {"remote": data}


def visit_plan(at: datetime, engineer: str = "liu.yang") -> dict:
    """An on-site visit agreed for ``at``."""
    return {"visit_plan": {"agreed_time": local(at), "engineer": engineer,
                           "address": "杭州市滨江区江南大道 1 号 3 号厂房", "site_contact": "王磊",
                           "site_phone": "13812345678"}}


def onsite(arrived: datetime, finished: datetime, resolved: bool = True) -> dict:
    """The on-site visit: steps, spare parts, sign-off."""
    data = {"arrived_at": local(arrived), "finished_at": local(finished),
            "steps": [{"action": "更换主板", "result": "开机正常" if resolved else "仍无法开机"}],
            "spare_parts": [{"name": "主板 X11", "part_no": "MB-X11-02", "quantity": 1}],
            "resolved": resolved, "customer_signoff": resolved}
    if resolved:
        data["spare_parts"].append({"name": "导热硅脂", "quantity": 2})
        data["signer_name"] = "王磊"
    else:
        data["notes"] = "需调配电源模块 / Power module must be ordered"
    return {"onsite": data}


def survey(overall: int = 5, others: int = 5) -> dict:
    """The four satisfaction dimensions."""
    return {"response_speed": {"score": others}, "resolution_efficiency": {"score": others},
            "engineer_expertise": {"score": others, "suggestion": "工程师很专业"},
            "overall": {"score": overall, "suggestion": "希望更快" if overall <= 2 else "满意"}}


def revisit(at: datetime, solved: bool = True, overall: int = 5) -> dict:
    """Customer service's result revisit with the satisfaction survey."""
    return {"revisit": {"contacted_at": local(at), "mode": "phone", "confirmed_solved": solved,
                        "customer_feedback": "运行正常" if solved else "问题又出现了"},
            "survey": survey(overall)}


def supervisor_revisit(at: datetime, resolved: bool = True) -> dict:
    """The supervisor's special revisit of a complaint ticket."""
    return {"supervisor_revisit": {"contacted_at": local(at), "mode": "phone", "complaint_resolved": resolved,
                                   "satisfaction": 4 if resolved else 2,
                                   "customer_opinion": "接受道歉，服务已改进" if resolved else "仍不满意工程师态度",
                                   "improvement": "工程师服务礼仪培训"}}


def risk_extend(contacted: datetime, new_due: datetime) -> dict:
    """Deadline at risk: the customer agreed a new time."""
    return {"deadline_risk": {"decision": "extend", "contacted_at": local(contacted), "new_due": local(new_due),
                              "reason": "备件需从上海调货 / Spare part ships from Shanghai",
                              "customer_response": "同意 / Agreed"}}


RISK_ON_TRACK = {"deadline_risk": {"decision": "on_track"}}


# ------------------------------------------------------------------------------- driver


def ticket_engine(settings):
    """Generator for a fixture: ``(engine, clock)``, a Careflow on a fresh database with a frozen
    clock at ``T0`` and the after-sales process deployed."""
    clock = FrozenClock(T0)
    engine = Careflow(settings, clock=clock)
    with use_clock(clock):
        engine.deploy([TICKET_BPMN], author="test")
        yield engine, clock
    engine.close()


class Flow:
    """One ``after_sales_ticket`` instance driven through ``cf.start`` / ``cf.complete``."""

    def __init__(self, cf: Careflow, clock: FrozenClock):
        self.cf, self.clock = cf, clock
        self.instance_id: int | None = None
        self.completed: list[tuple[str, str]] = []  # (task name, lane) in completion order

    def now(self) -> datetime:
        """The frozen time."""
        return self.clock.now()

    def start(self, actor: str = "zhang.wei") -> Flow:
        """Start the instance (as the intake agent)."""
        self.instance_id = self.cf.start("after_sales_ticket", {}, actor=actor).instance_id
        return self

    def ready(self) -> list[dict]:
        """The instance's ready tasks."""
        return self.cf.tasks(instance_id=self.instance_id)

    def ready_names(self) -> list[str]:
        """Names of the ready tasks, sorted."""
        return sorted(t["name"] for t in self.ready())

    def task(self, name: str) -> dict:
        """The one ready task called ``name``."""
        found = [t for t in self.ready() if t["name"] == name]
        assert len(found) == 1, f"expected {name} ready, ready: {self.ready_names()}"
        return found[0]

    def do(self, name: str, lane: str, data: dict, user: str, after: timedelta | None = None):
        """Complete ``name`` (asserting its lane) as ``user``, ``after`` the clock moved on."""
        if after:
            self.clock.advance(after)
        task = self.task(name)
        assert task["lane"] == lane, f"{name} is in lane {task['lane']}, expected {lane}"
        result = self.cf.complete(task["id"], copy.deepcopy(data), user=user)
        self.completed.append((name, lane))
        return result

    def fire(self, at: datetime) -> int:
        """Move the clock to ``at`` and fire the due timers."""
        self.clock.set(at)
        return self.cf.fire_due_timers()

    def ticket(self) -> Ticket:
        """The instance's ticket row."""
        with self.cf.Session() as s:
            return s.scalar(select(Ticket).where(Ticket.instance_id == self.instance_id))

    def statuses(self) -> list[tuple[str, int]]:
        """The ticket's status history as (status, round)."""
        number = self.ticket().number
        with self.cf.Session() as s:
            return [(e.status, e.round) for e in s.scalars(select(TicketEvent).where(TicketEvent.number == number)
                                                           .order_by(TicketEvent.id))]

    def events(self) -> list[TicketEvent]:
        """The ticket's status history rows."""
        number = self.ticket().number
        with self.cf.Session() as s:
            return list(s.scalars(select(TicketEvent).where(TicketEvent.number == number).order_by(TicketEvent.id)))

    def outbox(self) -> list[OutboxMessage]:
        """The instance's outbox rows in order."""
        with self.cf.Session() as s:
            return list(s.scalars(select(OutboxMessage).where(OutboxMessage.instance_id == self.instance_id)
                                  .order_by(OutboxMessage.id)))

    def topics(self) -> list[tuple[str, str | None]]:
        """(topic, recipient) of the instance's notifications."""
        return [(m.topic, m.recipient) for m in self.outbox()]

    def task_rows(self, name: str | None = None) -> list[HumanTask]:
        """The instance's human-task rows (of one name), oldest first."""
        with self.cf.Session() as s:
            q = select(HumanTask).where(HumanTask.instance_id == self.instance_id)
            if name:
                q = q.where(HumanTask.name == name)
            return list(s.scalars(q.order_by(HumanTask.created_at)))

    def data(self) -> dict:
        """The instance's data."""
        return self.cf.show(self.instance_id)["data"]

    def status(self) -> str:
        """The instance's status."""
        return self.cf.show(self.instance_id)["status"]
