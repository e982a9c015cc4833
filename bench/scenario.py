"""The benchmark scenario: the after-sales ticket's happy path (p1: urgent product fault fixed
remotely, revisit satisfied), as form payloads per user task, and ``raw_run`` — the same path
run in memory by bare SpiffWorkflow, the baseline Careflow's durable steps are compared with.

Path: ``ut_intake`` → ``ut_diagnose`` → ``ut_remote`` → ``ut_revisit`` (4 user tasks).
Payload times are relative to the moment ``data_for`` is called, so deadlines lie ahead
and no deadline warning fires during a run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser
from SpiffWorkflow.util.task import TaskState

ROOT = Path(__file__).resolve().parents[1]
SH = ZoneInfo("Asia/Shanghai")


def _local(dt: datetime) -> str:
    return dt.astimezone(SH).isoformat(timespec="seconds")


def _now() -> datetime:
    from engine.clock import utcnow

    return utcnow()


def _intake(now: datetime) -> dict:
    return {"intake": {
        "channel": "phone", "received_at": _local(now - timedelta(minutes=2)),
        "customer": {"customer_type": "enterprise", "name": "杭州星河制造有限公司", "customer_id": "C000123",
                     "phone": "0571-88886666", "email": "it@xinghe.example.com", "tier": "core"},
        "contact": {"name": "王磊", "title": "IT 主管", "phone": "13812345678"},
        "problem": {"symptom": "MES 服务器无法启动，生产线停机", "since": "今天早上 8 点断电重启后",
                    "tried": "重启两次，检查电源"},
        "occurred_at": _local(now - timedelta(hours=1)), "type": "product_fault", "priority": "urgent",
        "complex": False}}


def _diagnosis(now: datetime) -> dict:
    return {"diagnosis": {"first_contact_at": _local(now - timedelta(minutes=1)), "contact_mode": "phone",
                          "findings": "RAID 控制器告警，系统盘只读 / RAID controller alarm, system disk read-only",
                          "fault_category": "hardware"}}


def _remote(now: datetime) -> dict:
    return {"remote": {"mode": "remote_desktop",
                       "steps": [{"at": _local(now - timedelta(minutes=1)), "action": "远程登录检查 RAID 日志",
                                  "result": "发现一块磁盘离线"},
                                 {"at": _local(now), "action": "重建阵列并重启服务", "result": "服务恢复"}],
                       "solved": True, "summary": "远程重建阵列后恢复 / Rebuilt the array remotely"}}


def _revisit(now: datetime) -> dict:
    return {"revisit": {"contacted_at": _local(now), "mode": "phone", "confirmed_solved": True,
                        "customer_feedback": "运行正常"},
            "survey": {"response_speed": {"score": 5}, "resolution_efficiency": {"score": 5},
                       "engineer_expertise": {"score": 5, "suggestion": "工程师很专业"},
                       "overall": {"score": 5}}}


@dataclass(frozen=True)
class Scenario:
    """A process, its starting data and the payload each user task of the measured path gets."""

    process_id: str
    initial_data: dict
    steps: tuple[str, ...]  # the user tasks of the path, in order
    bpmn: Path
    deploy_folder: bool = True  # deploy workflows/ (the BPMN calls a process of its own file)

    @property
    def user_tasks(self) -> int:
        """How many user tasks one instance completes."""
        return len(self.steps)

    def data_for(self, task_name: str) -> dict:
        """The form payload for ``task_name`` (times relative to now)."""
        builders = {"ut_intake": _intake, "ut_diagnose": _diagnosis, "ut_remote": _remote, "ut_revisit": _revisit}
        if task_name not in builders:
            raise KeyError(f"{task_name} is not on the {self.process_id} benchmark path {self.steps}")
        return builders[task_name](_now())


AFTER_SALES = Scenario(process_id="after_sales_ticket", initial_data={},
                       steps=("ut_intake", "ut_diagnose", "ut_remote", "ut_revisit"),
                       bpmn=ROOT / "workflows" / "after_sales_ticket.bpmn")


# ----------------------------------------------------------------------------- raw run

_specs: dict[tuple[str, Path], tuple[Any, dict]] = {}


def _parsed(scenario: Scenario) -> tuple[Any, dict]:
    """The process spec and subprocess specs, parsed once per scenario."""
    key = (scenario.process_id, scenario.bpmn)
    if key not in _specs:
        parser = SpiffBpmnParser()
        parser.add_bpmn_files([str(scenario.bpmn)])
        _specs[key] = (parser.get_spec(scenario.process_id), parser.get_subprocess_specs(scenario.process_id))
    return _specs[key]


class InMemoryHost:
    """In-memory stand-ins for the host functions the after-sales process calls."""

    BUDGETS = {"urgent": (2, 4), "important": (4, 24), "general": (24, 72)}

    def __init__(self) -> None:
        self.tickets: dict[str, dict] = {}
        self.outbox: list[tuple[str, str | None, dict]] = []

    def register_ticket(self, intake: dict) -> dict:
        """A number and wall-clock deadlines from now."""
        now = _now()
        first, solution = self.BUDGETS[intake["priority"]]
        number = f"SN{now.astimezone(SH):%Y%m%d}{len(self.tickets) + 1:03d}"
        ticket = {"number": number, "status": "open", "round": 1, "type": intake["type"],
                  "priority": intake["priority"], "first_response_due": (now + timedelta(hours=first)).isoformat(),
                  "solution_due": (now + timedelta(hours=solution)).isoformat(),
                  "solution_warn_at": (now + timedelta(hours=solution * 0.8)).isoformat()}
        self.tickets[number] = ticket
        return dict(ticket)

    def update_ticket(self, number: str, **facts: Any) -> dict:
        """Merge the facts into the ticket; returns it."""
        ticket = self.tickets[number]
        ticket.update({k: v for k, v in facts.items() if k in ("status", "round")})
        return dict(ticket)

    def extend_deadline(self, number: str, clock: str, new_due: str, reason: str) -> dict:
        """Move a deadline."""
        self.tickets[number][f"{clock}_due"] = new_due
        return dict(self.tickets[number])

    def request_ticket_revisit(self, number: str) -> None:
        """No customer registry in memory: nothing to revisit."""
        return None

    def notify(self, template: str, to: str | None = None, channel: str | None = None, **data: Any) -> None:
        """Queue a message in memory."""
        self.outbox.append((template, to, data))

    @staticmethod
    def now_iso() -> str:
        """Now, ISO 8601 UTC."""
        return _now().astimezone(UTC).isoformat()

    def functions(self) -> dict[str, Any]:
        """The functions, by the names scripts call them."""
        return {"register_ticket": self.register_ticket, "update_ticket": self.update_ticket,
                "extend_deadline": self.extend_deadline, "notify": self.notify, "now_iso": self.now_iso,
                "set_business_key": lambda key: None, "request_ticket_revisit": self.request_ticket_revisit}


def raw_run(scenario: Scenario) -> BpmnWorkflow:
    """Run the scenario's path in memory with bare SpiffWorkflow; raises unless the instance completes."""
    spec, subprocess_specs = _parsed(scenario)
    host = InMemoryHost()
    engine = PythonScriptEngine(environment=TaskDataEnvironment(host.functions()))
    wf = BpmnWorkflow(spec, subprocess_specs, script_engine=engine)
    wf.task_tree.data.update(copy.deepcopy(scenario.initial_data))
    wf.do_engine_steps()
    done: list[str] = []
    while not wf.is_completed():
        ready = wf.get_tasks(state=TaskState.READY, manual=True)
        if not ready:
            raise RuntimeError(f"{scenario.process_id} stopped after {done} with no ready user task")
        task = ready[0]
        name = task.task_spec.bpmn_id
        task.data.update(scenario.data_for(name))
        task.run()
        wf.do_engine_steps()
        done.append(name)
    if tuple(done) != scenario.steps:
        raise RuntimeError(f"{scenario.process_id} took {done}, expected {list(scenario.steps)}")
    return wf
