"""Demo step 4: after-sales tickets in every stage — a new intake, a complex case waiting for
classification, diagnosis, remote handling, an on-site visit to schedule and one booked, tickets
waiting for their revisit, a complaint ticket at the supervisor's special revisit, a reopened
ticket and closed ones with their survey. Several started days ago (replayed on a frozen clock),
so their deadlines have passed and they show as overdue.

Customers come from the customer registry when its demo customers exist, else embedded records.
Idempotent: when any after-sales ticket instance exists, nothing is added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

ORDER = 40
PROCESS = "after_sales_ticket"
SH = ZoneInfo("Asia/Shanghai")
PHONE_RE = re.compile(r"^(1[3-9]\d{9}|0\d{2,3}-?\d{7,8}(-\d{1,6})?)$")
INTAKE_AGENT, ENGINEER, REVISIT_AGENT, SUPERVISOR = "zhang.wei", "liu.yang", "wang.fang", "li.na"

# Used when the customer registry is not installed or holds no customers.
EMBEDDED_CUSTOMERS = [
    {"customer_type": "enterprise", "name": "杭州星河制造有限公司", "phone": "0571-88886666", "tier": "core",
     "contact": ("王磊", "IT 主管", "13812345678")},
    {"customer_type": "enterprise", "name": "苏州恒润纺织有限公司", "phone": "0512-66201234", "tier": "important",
     "contact": ("陈静", "设备科长", "13962112345")},
    {"customer_type": "individual", "name": "赵雪", "phone": "13671234567", "tier": "basic",
     "contact": ("赵雪", None, "13671234567")},
    {"customer_type": "enterprise", "name": "青岛海湾冷链物流有限公司", "phone": "0532-85991234", "tier": "core",
     "contact": ("孙磊", "信息部经理", "15866661234")},
    {"customer_type": "enterprise", "name": "长沙湘江印务有限公司", "phone": "0731-84451234", "tier": "basic",
     "contact": ("刘芳", "生产主管", "13787451234")},
]

PROBLEMS = [
    ("MES 服务器无法启动，生产线停机", "今天早上断电重启后", "重启两次，检查电源"),
    ("打印机控制软件频繁报错，部分订单无法打印", "上周五升级后", "重装驱动"),
    ("扫码枪偶尔无法识别条码", "三天前", "更换电池"),
    ("冷库温控面板显示异常，温度读数跳变", "昨晚", "断电重启面板"),
    ("对新版报表功能的使用有疑问", "本周一", "查阅了用户手册"),
    ("工程师上次上门迟到两小时且态度不好", "上周三", "已向客服反映一次"),
]


@dataclass
class Demo:
    """One demo ticket: its intake and the steps it went through (hours before now)."""

    label: str
    start: float  # hours ago
    priority: str = "important"
    type: str = "product_fault"
    complex: bool = False
    channel: str = "phone"
    steps: list[tuple] = field(default_factory=list)  # (task, hours ago, options)


SCENARIOS = [
    Demo("new intake, not yet registered", 0.2, steps=[]),
    Demo("complex case waiting for classification (overdue)", 3, type="other", priority="general", complex=True,
         steps=[("ut_intake", 2.9, {})]),
    Demo("diagnosing, first response overdue", 72, priority="urgent", steps=[("ut_intake", 71.9, {})]),
    Demo("diagnosing", 0.5, priority="general", type="usage_question", channel="online_chat", steps=[("ut_intake", 0.4, {})]),
    Demo("remote handling", 3, channel="email", steps=[("ut_intake", 2.9, {}), ("ut_diagnose", 2.5, {})]),
    Demo("on-site visit to schedule (solution overdue)", 50, steps=[
        ("ut_intake", 49.9, {}), ("ut_diagnose", 48, {}), ("ut_remote", 45, {"solved": False})]),
    Demo("on-site visit booked", 2, priority="urgent", steps=[
        ("ut_intake", 1.9, {}), ("ut_diagnose", 1.7, {}), ("ut_remote", 1.2, {"solved": False}),
        ("ut_onsite_schedule", 1.0, {"visit_in": 1.5})]),
    Demo("waiting for the revisit", 26, priority="general", channel="walk_in", steps=[
        ("ut_intake", 25.9, {}), ("ut_diagnose", 25, {}), ("ut_remote", 20, {})]),
    Demo("complaint ticket at the supervisor's special revisit", 30, type="service_complaint", steps=[
        ("ut_intake", 29.9, {}), ("ut_diagnose", 29.5, {}), ("ut_remote", 26, {}),
        ("ut_revisit", 4, {"overall": 4})]),
    Demo("reopened after a poor rating, round 2", 50, priority="urgent", steps=[
        ("ut_intake", 49.9, {}), ("ut_diagnose", 49.5, {}), ("ut_remote", 48, {}),
        ("ut_revisit", 26, {"overall": 2})]),
    Demo("closed with survey (remote fix)", 120, steps=[
        ("ut_intake", 119.9, {}), ("ut_diagnose", 119, {}), ("ut_remote", 116, {}),
        ("ut_revisit", 100, {"overall": 5})]),
    Demo("closed with survey (on-site, spare parts)", 170, priority="urgent", steps=[
        ("ut_intake", 169.9, {}), ("ut_diagnose", 169.6, {}), ("ut_remote", 169, {"solved": False}),
        ("ut_onsite_schedule", 168.8, {"visit_in": 1}), ("ut_onsite", 166, {}),
        ("ut_revisit", 150, {"overall": 4})]),
]


def _local(dt: datetime) -> str:
    return dt.astimezone(SH).isoformat(timespec="seconds")


def _phone(raw: str | None) -> str | None:
    if not raw:
        return None
    if PHONE_RE.match(raw):
        return raw
    digits = re.sub(r"\D", "", raw)
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits if PHONE_RE.match(digits) else None


def _customers(engine) -> list[dict]:
    """Demo customers as intake records: the registry's (when it has any), else the embedded ones."""
    try:
        from sqlalchemy import inspect, select

        from engine.customers import Customer
    except ImportError:
        return EMBEDDED_CUSTOMERS
    with engine.Session() as session:
        if not inspect(session.connection()).has_table("customers"):
            return EMBEDDED_CUSTOMERS
        rows = session.scalars(select(Customer).where(Customer.status == "active").order_by(Customer.id)
                               .limit(8)).all()
    out = []
    for c in rows:
        phone = _phone(c.phone)
        if phone is None:
            continue
        contact = (c.contact_person or c.name, c.contact_title, phone)
        out.append({"customer_type": c.customer_type, "name": c.name, "customer_id": str(c.id), "phone": phone,
                    "tier": c.tier, "contact": contact})
    return out or EMBEDDED_CUSTOMERS


def _intake(demo: Demo, customer: dict, problem: tuple, received: datetime) -> dict:
    name, title, phone = customer["contact"]
    record = {k: customer[k] for k in ("customer_type", "name", "phone") if customer.get(k)}
    if customer.get("customer_id"):
        record["customer_id"] = customer["customer_id"]
    if customer.get("tier"):
        record["tier"] = customer["tier"]
    contact = {"name": name, "phone": phone}
    if title:
        contact["title"] = title
    return {"intake": {
        "channel": demo.channel,
        "received_at": _local(received), "customer": record, "contact": contact,
        "problem": {"symptom": problem[0], "since": problem[1], "tried": problem[2]},
        "occurred_at": _local(received - timedelta(hours=1)), "type": demo.type, "priority": demo.priority,
        "complex": demo.complex,
    }}


def _form(task: str, at: datetime, opts: dict) -> dict:
    """The form data a demo user enters for ``task`` at ``at``."""
    if task == "ut_diagnose":
        return {"diagnosis": {"first_contact_at": _local(at - timedelta(minutes=5)), "contact_mode": "phone",
                              "findings": "已电话联系客户，初步判断为配置问题 / Called the customer; looks like a "
                                          "configuration problem", "fault_category": "configuration"}}
    if task == "ut_remote":
        solved = opts.get("solved", True)
        data = {"mode": "remote_desktop", "solved": solved,
                "steps": [{"at": _local(at - timedelta(minutes=30)), "action": "远程登录检查日志", "result": "定位到异常"},
                          {"at": _local(at - timedelta(minutes=5)), "action": "调整配置并重启服务",
                           "result": "恢复正常" if solved else "问题依旧"}],
                "summary": "远程调整配置后恢复 / Fixed remotely" if solved else "需上门检查硬件 / Needs an on-site check"}
        if not solved:
            data["not_solved_reason"] = "疑似硬件故障，需上门 / Suspected hardware fault"
        return {"remote": data}
    if task == "ut_onsite_schedule":
        visit = at + timedelta(hours=opts.get("visit_in", 2))
        return {"visit_plan": {"agreed_time": _local(visit), "engineer": ENGINEER, "address": "客户现场 / customer site",
                               "site_contact": "现场联系人"}}
    if task == "ut_onsite":
        return {"onsite": {"arrived_at": _local(at - timedelta(hours=2)), "finished_at": _local(at),
                           "steps": [{"action": "更换电源模块", "result": "设备恢复运行"}],
                           "spare_parts": [{"name": "电源模块 PSU-500", "part_no": "PSU-500", "quantity": 1}],
                           "resolved": True, "customer_signoff": True, "signer_name": "现场联系人"}}
    if task == "ut_revisit":
        overall = opts.get("overall", 5)
        scores = {"score": max(overall, 3)}
        return {"revisit": {"contacted_at": _local(at), "mode": "phone", "confirmed_solved": True,
                            "customer_feedback": "运行正常" if overall > 2 else "问题虽解决，但等待时间太长"},
                "survey": {"response_speed": dict(scores), "resolution_efficiency": dict(scores),
                           "engineer_expertise": dict(scores),
                           "overall": {"score": overall, "suggestion": "希望响应更快" if overall <= 2 else "满意"}}}
    if task == "ut_supervisor_revisit":
        return {"supervisor_revisit": {"contacted_at": _local(at), "mode": "phone", "complaint_resolved": True,
                                       "satisfaction": 4, "customer_opinion": "接受道歉"}}
    raise ValueError(f"no demo form for {task}")


USERS = {"ut_intake": INTAKE_AGENT, "ut_classify": ENGINEER, "ut_diagnose": ENGINEER, "ut_remote": ENGINEER,
         "ut_onsite_schedule": ENGINEER, "ut_onsite": ENGINEER, "ut_revisit": REVISIT_AGENT,
         "ut_supervisor_revisit": SUPERVISOR}


def _replay(engine, demo: Demo, customer: dict, problem: tuple, now: datetime) -> int:
    """Run one demo ticket on a frozen clock from ``demo.start`` hours ago; returns its instance id."""
    from engine.clock import FrozenClock, use_clock

    clock = FrozenClock(now - timedelta(hours=demo.start))
    with use_clock(clock):
        received = clock.now()
        result = engine.start(PROCESS, {}, actor=INTAKE_AGENT)
        for task_name, hours_ago, opts in demo.steps:
            clock.set(now - timedelta(hours=hours_ago))
            engine.fire_timers(result.instance_id)  # deadline warnings due by then, as the worker would
            ready = {t["name"]: t for t in engine.tasks(instance_id=result.instance_id)}
            data = (_intake(demo, customer, problem, received) if task_name == "ut_intake"
                    else _form(task_name, clock.now(), opts))
            engine.complete(ready[task_name]["id"], data, user=USERS[task_name])
    return result.instance_id


def seed(engine, echo) -> None:
    """Add the demo tickets unless after-sales tickets exist already."""
    from sqlalchemy import func, select

    from engine.errors import NotFound
    from engine.models import Instance

    with engine.Session() as session:
        existing = session.scalar(select(func.count()).select_from(Instance).where(Instance.process_id == PROCESS))
    if existing:
        echo(f"Demo tickets: {existing} after-sales instance(s) already there; none added.")
        return
    try:
        with engine.Session() as session:
            engine.latest_version(session, PROCESS)
    except NotFound:
        echo(f"Demo tickets: {PROCESS} is not deployed; none added.")
        return
    customers = _customers(engine)
    now = engine.now()
    for i, demo in enumerate(SCENARIOS):
        problem = PROBLEMS[5] if demo.type == "service_complaint" else PROBLEMS[i % 5]
        instance_id = _replay(engine, demo, customers[i % len(customers)], problem, now)
        engine.fire_timers(instance_id)  # warnings due by now
    from engine.tickets import list_tickets

    with engine.Session() as session:
        tickets = list_tickets(session, now=now)
    overdue = sum(1 for t in tickets if t["overdue"])
    echo(f"Demo tickets: {len(SCENARIOS)} after-sales instances, {len(tickets)} numbered ticket(s), "
         f"{overdue} overdue (careflow tickets; careflow ticket NUMBER):")
    for demo in SCENARIOS:
        echo(f"  - {demo.label}")
