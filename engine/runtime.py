"""Careflow's engine API: deploy, start, list and complete tasks, fire timers, read audit.

Every state change is one step = one database transaction: lock the instance, restore
the workflow, run SpiffWorkflow to the next wait state, then write the state (with an
optimistic revision check), the human-task rows, the timer rows, the audit rows and the
outbox rows together — or nothing at all.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pluggy
from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
    CycleTimerEventDefinition,
    TimerEventDefinition,
)
from SpiffWorkflow.bpmn.specs.mixins.events.event_types import CatchingEvent
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import Connection, exists, func, select
from sqlalchemy.orm import Session

from engine import ready_task, step_rows
from engine import step as step_mod
from engine.audit import append_events, data_diff, entry_to_dict
from engine.clock import Clock, current_clock, use_clock
from engine.config import Settings
from engine.db import make_engine, make_read_session_factory, make_session_factory, upgrade_database
from engine.deploy import Bundle, DeployResult, deploy_bundle
from engine.errors import Conflict, NotFound, ScriptError
from engine.fastpath import accelerate
from engine.forms import validate_form
from engine.inbox import task_facets
from engine.models import AuditEntry, HumanTask, Incident, Instance, ProcessVersion, Timer
from engine.sandbox import SandboxScriptEngine
from engine.serialization import (
    PART_MIN,
    SERIALIZER_VERSION,
    dump_state_parts,
    expand_state,
    load_state,
    to_jsonable,
)
from engine.specs import LoadedVersion, SpecCache
from engine.step import Step
from engine.step_sessions import StepSessions

log = logging.getLogger("careflow.engine")
_ANY = object()  # "no expectation" marker for optional checks


@dataclass
class TimerFiring:
    """Outcome of claiming one instance with a due timer (see ``Careflow.fire_next_due_timer``)."""

    instance_id: int
    result: StepResult | None  # None: nothing fired (instance moved on meanwhile, or failed)
    still_due: bool  # a due timer still waits after the step (SpiffWorkflow did not fire it)


@dataclass
class StepResult:
    """What a step left behind: the instance's status and its ready human tasks."""

    instance_id: int
    status: str
    revision: int
    ready_tasks: list[dict]
    audit_rows: list = field(default_factory=list, repr=False)
    workflow: BpmnWorkflow | None = field(default=None, repr=False)  # cached by _after_commit, never before


class Careflow:
    """The engine, bound to one database and one set of plugins. Thread-safe."""

    def __init__(self, settings: Settings | None = None, plugin_manager: pluggy.PluginManager | None = None,
                 clock: Clock | None = None):
        self.settings = settings or Settings.from_env()
        self.db = make_engine(self.settings.database_url)
        self.Session = make_session_factory(self.db)
        self.ReadSession = make_read_session_factory(self.db)  # queries that never write
        self.step_session = StepSessions(self.db, self.Session)  # a step's transaction (engine.step_sessions)
        if plugin_manager is None:
            from plugins.manager import get_plugin_manager

            plugin_manager = get_plugin_manager()
        self.pm = plugin_manager
        self._clock = clock
        self.specs = SpecCache()
        self._wf_cache: OrderedDict[int, tuple[int, BpmnWorkflow]] = OrderedDict()
        self._wf_cache_lock = threading.Lock()
        self.wf_cache_size = 500
        self.script_engine = SandboxScriptEngine(self._script_functions(), self.settings.script_timeout_s)

    # -- setup -------------------------------------------------------------------------------
    def _script_functions(self) -> dict[str, Any]:
        functions: dict[str, Any] = dict(step_mod.ENGINE_FUNCTIONS)
        for contributed in reversed(self.pm.hook.careflow_script_functions()):
            for name, fn in (contributed or {}).items():
                functions.setdefault(name, fn)
        return functions

    def now(self) -> datetime:
        """Now, by the engine's clock (the injected one, else the active thread clock)."""
        return (self._clock or current_clock()).now()

    def init_db(self) -> None:
        """Create or upgrade the database schema (Alembic migrations)."""
        upgrade_database(self.settings.database_url)

    def close(self) -> None:
        """Release database connections."""
        self.step_session.close()
        self.db.dispose()

    # -- deploy ------------------------------------------------------------------------------
    def deploy(self, paths: Iterable[str | Path] | Bundle, *, author: str | None = None,
               comment: str | None = None) -> list[DeployResult]:
        """Validate and deploy BPMN files (and the forms they reference); see ``engine.deploy``."""
        bundle = paths if isinstance(paths, Bundle) else Bundle.from_paths(paths)
        with self.Session() as session, session.begin():
            results = deploy_bundle(session, bundle, author=author, comment=comment,
                                    max_bytes=self.settings.max_bpmn_bytes)
            step = Step(session, self.now(), actor=author or "system", cause="user" if author else "system")
            for r in results:
                if r.created:
                    step.audit("process_deployed", process_id=r.process_id, process_version_id=r.version_id,
                               details={"version": r.version, "checksum": r.checksum, "comment": comment})
            append_events(session, step.events)
        return results

    def latest_version(self, session: Session, process_id: str) -> ProcessVersion:
        """The newest deployed version of a process."""
        pv = session.scalar(select(ProcessVersion).where(ProcessVersion.process_id == process_id)
                            .order_by(ProcessVersion.version.desc()).limit(1))
        if pv is None:
            raise _not_deployed(process_id)
        return pv

    # -- start -------------------------------------------------------------------------------
    def start(self, process_id: str, data: dict | None = None, *, actor: str = "system",
              version: int | None = None, session: Session | None = None) -> StepResult:
        """Start an instance of the latest (or given) version and run it to its first wait state."""
        if session is not None:  # started from inside another step (e.g. a script)
            return self._start_in(session, process_id, data, actor, version)
        with self.step_session() as s, s.begin():
            result = self._start_in(s, process_id, data, actor, version)
        self._after_commit(result)
        return result

    def _start_in(self, session: Session, process_id: str, data: dict | None, actor: str,
                  version: int | None) -> StepResult:
        session.flush()  # a caller's pending ORM rows first: the rows below go straight to the connection
        conn = session.connection()
        pv = step_rows.latest_version(conn, process_id, version)
        if pv is None:
            if version is None:
                raise _not_deployed(process_id)
            raise NotFound(f"process '{process_id}' has no version {version}")
        loaded = self.specs.get(session, pv.id)
        wf = accelerate(BpmnWorkflow(loaded.spec, loaded.subprocess_specs, script_engine=self.script_engine))
        wf.task_tree.data.update(copy_data(data or {}))
        now = self.now()
        values = dict(process_version_id=pv.id, process_id=pv.process_id, status="running", revision=0,
                      state="{}", serializer_version=SERIALIZER_VERSION, business_key=None, started_by=actor,
                      error=None, created_at=now, updated_at=now, completed_at=None, next_timer_due=None)
        inst = step_rows.InstanceRow(id=step_rows.insert_instance(conn, values), process_version_id=pv.id,
                                     process_id=pv.process_id, status="running", revision=0, business_key=None,
                                     next_timer_due=None)
        step = Step(session, now, actor=actor, cause="user" if actor not in ("system", "timer") else actor,
                    instance_id=inst.id, process_id=pv.process_id, process_version_id=pv.id)
        step.audit("instance_started", data_diff=data_diff({}, data or {}), details={"version": pv.version})
        self._run_engine(step, wf, loaded)
        return self._save(step, inst, wf, loaded)

    # -- tasks -------------------------------------------------------------------------------
    def tasks(self, *, instance_id: int | None = None, user: str | None = None, groups: Iterable[str] | None = None,
              status: str = "ready", limit: int | None = None) -> list[dict]:
        """Human tasks (ready ones by default), optionally for an instance or a user.

        With ``user``, the tasks assigned to that user plus the unassigned tasks of the
        user's groups (the groups given, else the groups the user belongs to).
        """
        from engine.models import GroupMembership

        with self.ReadSession() as session:
            q = select(HumanTask)
            if status:
                q = q.where(HumanTask.status == status)
            if instance_id is not None:
                q = q.where(HumanTask.instance_id == instance_id)
            if user is not None:
                if groups is None:
                    groups = session.scalars(select(GroupMembership.group_name)
                                             .where(GroupMembership.username == user)).all()
                groups = list(groups)
                cond = HumanTask.assignee == user
                if groups:
                    cond = cond | ((HumanTask.assignee.is_(None)) & HumanTask.group_name.in_(groups))
                q = q.where(cond)
            q = q.order_by(HumanTask.due_at.is_(None), HumanTask.due_at, HumanTask.created_at)
            if limit:
                q = q.limit(limit)
            rows = session.scalars(q).all()
            return [self._task_dict(session, r) for r in rows]

    def task(self, task_id: str) -> dict:
        """One human task by id, with its form inline."""
        with self.ReadSession() as session:
            row = session.get(HumanTask, task_id)
            if row is None:
                raise NotFound(f"no task {task_id}")
            return self._task_dict(session, row)

    def _task_dict(self, session: Session, row: HumanTask) -> dict:
        form = None
        if row.form_name:
            form = self.specs.get(session, row.process_version_id).forms.get(row.form_name)
        return {
            "id": row.id, "instance_id": row.instance_id, "process_id": row.process_id, "name": row.name,
            "title": row.title, "lane": row.lane, "group": row.group_name, "assignee": row.assignee,
            "status": row.status, "form_name": row.form_name, "form": form, "instructions": row.instructions,
            "created_at": _iso(row.created_at), "due_at": _iso(row.due_at),
            "completed_at": _iso(row.completed_at), "completed_by": row.completed_by,
        }

    def complete(self, task_id: str, data: dict | None, *, user: str,
                 expected_assignee: str | None | object = _ANY) -> StepResult:
        """Complete a ready human task with form ``data`` as ``user``; run to the next wait state.

        ``expected_assignee``: the assignee the caller checked permissions against; if the
        task was reassigned meanwhile, the completion is refused as a conflict.
        Raises ``ValidationFailed`` (field errors, nothing saved), ``Conflict`` (the task is
        no longer ready, or the instance changed concurrently) or ``NotFound``.
        """
        data = data or {}
        with self.step_session() as session, session.begin():
            conn = session.connection()
            row = step_rows.task_row(conn, task_id)
            if row is None:
                raise NotFound(f"no task {task_id}")
            if row.status != "ready":
                who = f" by {row.completed_by}" if row.completed_by else ""
                when = f" at {row.completed_at:%Y-%m-%d %H:%M} UTC" if row.completed_at else ""
                raise Conflict(f"task {task_id} ('{row.title or row.name}') is already {row.status}{who}{when}; "
                               "reload your task list")
            if expected_assignee is not _ANY and row.assignee != expected_assignee:
                raise Conflict(f"task {task_id} was reassigned to {row.assignee or 'its group'} meanwhile; "
                               "reload your task list")
            inst = self._lock_row(conn, row.instance_id)
            loaded = self.specs.get(session, inst.process_version_id)
            if row.form_name:
                self.validate_form(loaded.forms.get(row.form_name) or {}, data)
            wf = self._load(inst, loaded, conn)
            try:
                task = wf.get_task_from_id(UUID(task_id))
            except Exception:
                task = None
            if task is None or task.state != TaskState.READY or not task.task_spec.manual:
                raise Conflict(f"task {task_id} can no longer be completed (it moved on); reload your task list")
            step = Step(session, self.now(), actor=user, cause="user", instance_id=inst.id,
                        process_id=inst.process_id, process_version_id=inst.process_version_id,
                        business_key=inst.business_key)
            # the submitted keys are all that can change when no hook of the task touches its data:
            # their old values are kept (update() replaces them, nothing mutates them), not a deep copy
            submitted_only = _completion_changes_only_form_data(task.task_spec)
            before = {k: task.data[k] for k in data if k in task.data} if submitted_only else copy_data(task.data)
            task.data.update(copy_data(data))
            step.current_task_id = task_id
            try:
                token = step_mod.activate(step)
                try:
                    task.run()
                finally:
                    step_mod.deactivate(token)
            except SpiffWorkflowException as err:
                raise self._script_error(err) from err
            meta = loaded.human_task_meta(task.task_spec)
            step.audit("task_completed", task_id=task_id, task_name=meta.name, task_title=meta.title,
                       lane=meta.lane, form_version=loaded.form_checksums.get(meta.form_name or ""),
                       data_diff=data_diff(before, {k: task.data[k] for k in data if k in task.data}
                                           if submitted_only else task.data))
            self._run_engine(step, wf, loaded)
            result = self._save(step, inst, wf, loaded, completed={task_id})
        self._after_commit(result)
        return result

    @staticmethod
    def validate_form(schema: dict, data: Any) -> None:
        """Validate submitted data against a form's JSON Schema; raise ``ValidationFailed`` with field errors."""
        validate_form(schema, data)

    # -- timers ------------------------------------------------------------------------------
    def due_timer_instances(self, now: datetime | None = None, limit: int = 100) -> list[int]:
        """Ids of instances with a waiting timer due at ``now`` (index scan, no deserializing)."""
        now = now or self.now()
        with self.ReadSession() as session:
            return list(session.scalars(select(Timer.instance_id).where(Timer.status == "waiting",
                                                                        Timer.due_at <= now)
                                        .group_by(Timer.instance_id).order_by(func.min(Timer.due_at)).limit(limit)))

    def fire_timers(self, instance_id: int) -> StepResult | None:
        """Fire the due timers of one instance in one step; returns None if none was due."""
        try:
            with self.step_session() as session, session.begin():
                inst = self._lock_row(session.connection(), instance_id)
                result, _ = self._fire_locked(session, inst)
        except ScriptError as err:
            self._fail_instance(instance_id, err, actor="timer")
            return None
        self._after_commit(result)
        return result

    def claim_due_timer_instance(self, session: Session, now: datetime,
                                 skip: Iterable[int] = ()) -> Instance | None:
        """Lock one running instance with a timer due before ``now`` (earliest first), or None.

        On PostgreSQL the instance row is claimed with ``FOR UPDATE SKIP LOCKED``, so several
        workers share the due set and never wait for each other; on SQLite the step's
        ``BEGIN IMMEDIATE`` already makes this transaction the only writer.
        """
        skip = list(skip)
        if self.db.dialect.name == "postgresql":
            q = (select(Instance).join(Timer, Timer.instance_id == Instance.id)
                 .where(Timer.status == "waiting", Timer.due_at < now, Instance.status == "running")
                 .with_for_update(of=Instance, skip_locked=True))
            if skip:
                q = q.where(Timer.instance_id.notin_(skip))
            return session.scalar(q.order_by(Timer.due_at).limit(1))
        # EXISTS keeps SQLite's planner (which has no statistics) on the due-time index
        q = select(Timer.instance_id).where(Timer.status == "waiting", Timer.due_at < now, running_instance())
        if skip:
            q = q.where(Timer.instance_id.notin_(skip))
        instance_id = session.scalar(q.order_by(Timer.due_at).limit(1))
        return None if instance_id is None else session.get(Instance, instance_id)

    def fire_next_due_timer(self, now: datetime | None = None, skip: Iterable[int] = ()) -> TimerFiring | None:
        """Claim the instance with the earliest due timer and fire its due timers in one step.

        Returns None when nothing is due. ``skip``: instance ids to leave alone (e.g. ones
        whose timer did not fire in this pass).
        """
        now = now or self.now()
        claimed: int | None = None
        try:
            with self.step_session() as session, session.begin():
                inst = self.claim_due_timer_instance(session, now, skip)
                if inst is None:
                    return None
                claimed = inst.id
                result, still_due = self._fire_locked(session, inst)
        except ScriptError as err:
            self._fail_instance(claimed, err, actor="timer")
            return TimerFiring(claimed, None, False)
        except Conflict:
            return TimerFiring(claimed, None, True)
        self._after_commit(result)
        return TimerFiring(claimed, result, still_due)

    def _fire_locked(self, session: Session, inst: Instance | step_rows.InstanceRow) -> tuple[StepResult | None, bool]:
        """Run the due timers of a locked instance: (result or None if none was due, a due timer still waits)."""
        if inst.status != "running":
            return None, False
        now = self.now()
        due_rows = session.scalars(select(Timer).where(Timer.instance_id == inst.id,
                                                       Timer.status == "waiting", Timer.due_at <= now)).all()
        if not due_rows:
            return None, False
        loaded = self.specs.get(session, inst.process_version_id)
        wf = self._load(inst, loaded, session.connection())
        step = Step(session, now, actor="timer", cause="timer", instance_id=inst.id,
                    process_id=inst.process_id, process_version_id=inst.process_version_id,
                    business_key=inst.business_key)
        self._run_engine(step, wf, loaded, refresh=True)
        result = self._save(step, inst, wf, loaded)
        return result, any(r.status == "waiting" for r in due_rows)

    def fire_due_timers(self, now: datetime | None = None, limit: int = 100) -> int:
        """Fire every due timer (up to ``limit`` instances); returns how many instances moved."""
        fired = 0
        skip: set[int] = set()
        while fired + len(skip) < limit:
            firing = self.fire_next_due_timer(now, skip)
            if firing is None:
                break
            if firing.result is not None:
                fired += 1
            if firing.result is None or firing.still_due:
                skip.add(firing.instance_id)  # did not move: do not claim it again in this pass
        return fired

    # -- reading -----------------------------------------------------------------------------
    def show(self, instance_id: int) -> dict:
        """An instance: process, version, status, data (from its state), ready tasks."""
        with self.ReadSession() as session:
            inst = session.get(Instance, instance_id)
            if inst is None:
                raise NotFound(f"no instance {instance_id}")
            loaded = self.specs.get(session, inst.process_version_id)
            wf = self._load(inst, loaded, session.connection(), cache=False)
            data = wf.data if wf.is_completed() else _merged_data(wf)
            return {
                "id": inst.id, "process_id": inst.process_id, "version": loaded.version,
                "process_version_id": inst.process_version_id, "status": inst.status,
                "revision": inst.revision, "business_key": inst.business_key, "started_by": inst.started_by,
                "created_at": _iso(inst.created_at), "updated_at": _iso(inst.updated_at),
                "completed_at": _iso(inst.completed_at), "error": inst.error, "data": to_jsonable(data),
            }

    def stored_state(self, instance_id: int) -> dict:
        """An instance's stored workflow state with every task in full (its archived tasks put
        back from their parts): SpiffWorkflow's dict form of the workflow, without the specs."""
        with self.ReadSession() as session:
            conn = session.connection()
            state = step_rows.instance_state(conn, instance_id)
            if state is None:
                raise NotFound(f"no instance {instance_id}")
            return expand_state(state, lambda numbers: step_rows.state_parts(conn, instance_id, numbers))

    def audit(self, instance_id: int | None = None, *, limit: int | None = None) -> list[dict]:
        """Audit rows in sequence order (of one instance, or all)."""
        with self.ReadSession() as session:
            q = select(AuditEntry).order_by(AuditEntry.seq)
            if instance_id is not None:
                q = q.where(AuditEntry.instance_id == instance_id)
            if limit:
                q = q.limit(limit)
            return [entry_to_dict(r) for r in session.scalars(q)]

    # -- the step machinery ------------------------------------------------------------------
    def _lock_instance(self, session: Session, instance_id: int) -> Instance:
        q = select(Instance).where(Instance.id == instance_id).execution_options(populate_existing=True)
        if self.db.dialect.name == "postgresql":
            q = q.with_for_update()
        inst = session.scalar(q)
        if inst is None:
            raise NotFound(f"no instance {instance_id}")
        return inst

    def _lock_row(self, conn, instance_id: int) -> step_rows.InstanceRow:
        """The step's instance (side columns only; locked on PostgreSQL), or ``NotFound``."""
        inst = step_rows.lock_instance(conn, instance_id)
        if inst is None:
            raise NotFound(f"no instance {instance_id}")
        return inst

    def _load(self, inst: Instance | step_rows.InstanceRow, loaded: LoadedVersion, conn: Connection,
              cache: bool = True) -> BpmnWorkflow:
        """The instance's workflow: the cached one if it is still at ``inst.revision``, else restored
        from its state and the parts it refers to (read through ``conn``; the state too when
        ``inst`` came without it)."""
        if cache:
            with self._wf_cache_lock:
                hit = self._wf_cache.pop(inst.id, None)
            if hit and hit[0] == inst.revision:
                return hit[1]
        state = inst.state if inst.state is not None else step_rows.instance_state(conn, inst.id)
        wf = accelerate(load_state(state, loaded.spec, loaded.subprocess_specs,
                                   parts=lambda numbers: step_rows.state_parts(conn, inst.id, numbers)))
        wf.script_engine = self.script_engine
        return wf

    def _remember(self, instance_id: int, revision: int, wf: BpmnWorkflow) -> None:
        with self._wf_cache_lock:
            self._wf_cache[instance_id] = (revision, wf)
            while len(self._wf_cache) > self.wf_cache_size:
                self._wf_cache.popitem(last=False)

    def _forget(self, instance_id: int) -> None:
        """Drop an instance's cached workflow (a step's ``_load`` takes it out while it runs)."""
        with self._wf_cache_lock:
            self._wf_cache.pop(instance_id, None)

    def _run_engine(self, step: Step, wf: BpmnWorkflow, loaded: LoadedVersion, refresh: bool = False) -> None:
        """Run engine tasks to the next wait state, auditing each BPMN element that ran."""
        # by task object (a task's id hashes in Python); the id's text once per task
        snapshots: dict = {}
        waiting_timers = {t for t in _waiting_events(wf) if _timer_definition(t)}
        running: list = [None, None]  # the task will_complete saw last, its id's text

        def will_complete(task):
            running[0], running[1] = task, str(task.id)
            step.current_task_id = running[1]
            if _changes_data(task):
                snapshots[task] = copy_data(task.data)

        def did_complete(task):
            spec = task.task_spec
            if spec.bpmn_id is None:
                return  # SpiffWorkflow's internal bookkeeping tasks
            action = "timer_fired" if task in waiting_timers else "engine_task"
            before = snapshots.pop(task, None)
            step.audit(action, actor="timer" if action == "timer_fired" else "system",
                       cause="timer" if action == "timer_fired" else step.cause if step.cause == "timer"
                       else "system", task_id=running[1] if running[0] is task else str(task.id),
                       task_name=spec.bpmn_id, task_title=spec.bpmn_name,
                       lane=getattr(spec, "lane", None),
                       data_diff=data_diff(before, task.data) if before is not None else None,
                       details={"type": spec.__class__.__name__})

        token = step_mod.activate(step)
        # SpiffWorkflow reads the thread's clock: make it the engine's clock when one was injected
        clock_ctx = use_clock(self._clock) if self._clock is not None else contextlib.nullcontext()
        try:
            with clock_ctx:
                rounds = 3 if refresh else 1
                for _ in range(rounds):
                    if refresh:
                        wf.refresh_timers()
                    wf.do_engine_steps(will_complete_task=will_complete, did_complete_task=did_complete)
                    if not refresh or not wf.get_tasks(state=TaskState.READY, manual=False):
                        break
                for event in wf.get_events():  # drained so they do not pile up in the state
                    kind = type(event.event_definition).__name__
                    if "Terminate" not in kind:
                        step.audit("event_thrown", details={"event": getattr(event.event_definition, "name", kind),
                                                            "payload": to_jsonable(event.payload)})
        except SpiffWorkflowException as err:
            raise self._script_error(err) from err
        finally:
            step_mod.deactivate(token)

    @staticmethod
    def _script_error(err: SpiffWorkflowException) -> ScriptError:
        task = getattr(err, "task", None)
        where = ""
        if task is not None:
            where = f"in task '{task.task_spec.bpmn_name or task.task_spec.bpmn_id}' ({task.task_spec.bpmn_id})"
        line = getattr(err, "line_number", None)
        if line:
            where += f", line {line}"
            if getattr(err, "error_line", None):
                where += f": {err.error_line.strip()}"
        cause = err.__cause__ or getattr(err, "exception", None)
        detail = f"{type(cause).__name__}: {cause}" if cause else str(err).split("\n")[0]
        return ScriptError(f"script error {where} — {detail}".strip())

    def save_migrated(self, step: Step, inst: Instance, wf: BpmnWorkflow, loaded: LoadedVersion) -> StepResult:
        """Save an instance moved onto the version ``loaded`` (``engine.migration``): the write
        path of a step (state, human tasks, timers, audit, revision check) with the new version
        id. The caller holds the instance lock and commits."""
        inst.process_version_id = loaded.id
        return self._save(step, inst, accelerate(wf), loaded)  # cached after commit: give it the fast paths

    def _save(self, step: Step, inst: Instance | step_rows.InstanceRow, wf: BpmnWorkflow, loaded: LoadedVersion,
              completed: set[str] | None = None) -> StepResult:
        """Write state, human tasks, timers, audit and outbox; optimistic check against ``inst.revision``."""
        session = step.session
        session.flush()  # ORM rows host functions left pending go first; the step's own rows use the connection
        conn = session.connection()
        now = step.now
        if wf.is_completed():
            status = "completed"
        else:
            status = "running"
        ready = self._sync_human_tasks(step, inst, wf, loaded, completed or set())
        next_due = self._sync_timers(step, inst, wf)
        if status == "completed":
            step.audit("instance_completed", details={"data_keys": sorted(wf.data.keys())})
        revision = (inst.revision or 0) + 1
        # a finished instance takes no further step: its last tasks stay in its state, no part for them
        state, part = dump_state_parts(wf, revision, PART_MIN if status == "running" else sys.maxsize)
        values = dict(state=state, updated_at=now, revision=revision,
                      serializer_version=SERIALIZER_VERSION, completed_at=now if status == "completed" else None)
        # indexed columns only when they change: SQLite rewrites an index entry (a page written and
        # fsynced at commit) for every indexed column in the SET list, changed or not
        for column, value in (("status", status), ("next_timer_due", next_due),
                              ("business_key", step.business_key or inst.business_key)):
            if value != getattr(inst, column):
                values[column] = value
        if not step_rows.update_instance(conn, inst.id, inst.revision or 0, values):
            raise Conflict(f"instance {inst.id} was changed by someone else meanwhile; reload and retry")
        if part is not None:
            step_rows.insert_state_part(conn, inst.id, revision, part)
        step_rows.insert_outbox(conn, [
            dict(idempotency_key=m.key, instance_id=inst.id, topic=m.topic, channel=m.channel, recipient=m.recipient,
                 payload=m.payload, status="pending", attempts=0, next_attempt_at=now, last_error=None,
                 created_at=now, delivered_at=None) for m in step.messages])
        audit_rows = append_events(session, step.events)
        session.flush()
        return StepResult(inst.id, status, values["revision"], ready, audit_rows, wf)

    def _sync_human_tasks(self, step: Step, inst: Instance | step_rows.InstanceRow, wf: BpmnWorkflow,
                          loaded: LoadedVersion, completed: set[str]) -> list[dict]:
        conn = step.session.connection()
        existing = {r.id: r for r in step_rows.ready_tasks(conn, inst.id)}
        ready_tasks = [t for t in _iter_tasks(wf) if t._state == _READY and t.task_spec.manual]  # (no property)
        ready_ids = {str(t.id) for t in ready_tasks}
        closed = []
        for tid, row in existing.items():
            if tid in ready_ids:
                continue
            if tid in completed:
                closed.append({"b_id": tid, "status": "completed", "completed_at": step.now,
                               "completed_by": step.actor})
            else:
                closed.append({"b_id": tid, "status": "cancelled", "completed_at": step.now, "completed_by": None})
                step.audit("task_cancelled", task_id=tid, task_name=row.name, task_title=row.title, lane=row.lane)
        step_rows.close_tasks(conn, closed)
        out, new_rows = [], []
        for task in ready_tasks:
            tid = str(task.id)
            if tid in existing:
                row = existing[tid]._asdict()
            else:
                row = self._new_human_task(step, inst, task, loaded)
                new_rows.append(row)
            out.append({"id": row["id"], "name": row["name"], "title": row["title"], "lane": row["lane"],
                        "assignee": row["assignee"], "due_at": _iso(row["due_at"])})
        step_rows.insert_tasks(conn, new_rows)
        return out

    def _new_human_task(self, step: Step, inst: Instance | step_rows.InstanceRow, task,
                        loaded: LoadedVersion) -> dict[str, Any]:
        """The ``human_tasks`` row (every column) of a task that just became ready."""
        meta = loaded.human_task_meta(task.task_spec)

        def evaluate(expr: str):
            return self._evaluate_quietly(step, task, expr)

        answer, assignee = ready_task.assignment(self.pm, step, inst.process_id, inst.id, task, meta, evaluate)
        due_at = ready_task.due_at(meta, step.now, evaluate)
        instructions = ready_task.instructions(meta, task)
        step.audit("task_ready", actor="system", cause="system" if step.cause != "timer" else "timer",
                   task_id=str(task.id), task_name=meta.name, task_title=meta.title, lane=meta.lane,
                   details={"group": answer.get("group"), "assignee": assignee,
                            "due_at": _iso(due_at)})
        return dict(
            id=str(task.id), instance_id=inst.id, process_id=inst.process_id,
            process_version_id=inst.process_version_id, name=meta.name, title=meta.title, lane=meta.lane,
            group_name=answer.get("group", meta.lane), assignee=assignee, form_name=meta.form_name,
            form_checksum=loaded.form_checksums.get(meta.form_name or ""), instructions=instructions,
            status="ready", created_at=step.now, due_at=due_at, completed_at=None, completed_by=None,
            **{"priority": None, "customer_id": None, "customer_name": None, **task_facets(task.data)},
        )

    def _evaluate_quietly(self, step: Step, task, expr: str) -> Any:
        token = step_mod.activate(step)  # host functions in the expression see the step
        try:
            return self.script_engine.evaluate(task, expr)
        except Exception as err:  # a bad assignee/due expression must not break the step
            log.warning("could not evaluate %r on task %s: %s", expr, task.task_spec.bpmn_id, err)
            step.audit("expression_failed", task_id=str(task.id), task_name=task.task_spec.bpmn_id,
                       details={"expression": expr, "error": f"{type(err).__name__}: {err}"})
            return None
        finally:
            step_mod.deactivate(token)

    def _sync_timers(self, step: Step, inst: Instance | step_rows.InstanceRow, wf: BpmnWorkflow) -> datetime | None:
        waiting: dict[tuple[str, datetime], str | None] = {}
        for task in _waiting_events(wf):
            definition = _timer_definition(task)
            if definition is None:
                continue
            due = _timer_due(task, definition)
            if due is not None:
                waiting[(str(task.id), due)] = task.task_spec.bpmn_name or task.task_spec.bpmn_id
        if not waiting and inst.next_timer_due is None:
            return None  # no timer before this step, none after it
        conn = step.session.connection()
        kept, ended = set(), []
        for row in step_rows.waiting_timers(conn, inst.id):
            key = (row.task_id, row.due_at)
            if key in waiting:
                kept.add(key)
            else:
                fired = row.due_at <= step.now
                ended.append({"b_id": row.id, "status": "fired" if fired else "cancelled",
                              "fired_at": step.now if fired else None})
        step_rows.end_timers(conn, ended)
        step_rows.insert_timers(conn, [
            dict(instance_id=inst.id, task_id=key[0], name=name, kind="bpmn", due_at=key[1], status="waiting",
                 fired_at=None) for key, name in waiting.items() if key not in kept])
        return min((k[1] for k in waiting), default=None)

    def _fail_instance(self, instance_id: int, err: Exception, actor: str) -> None:
        """Mark an instance failed (its last committed state is kept) and raise an incident."""
        with self.Session() as session, session.begin():
            inst = self._lock_instance(session, instance_id)
            now = self.now()
            inst.status, inst.error, inst.updated_at = "failed", str(err), now
            step = Step(session, now, actor=actor, cause=actor, instance_id=inst.id, process_id=inst.process_id,
                        process_version_id=inst.process_version_id)
            step.audit("instance_failed", details={"error": str(err)})
            session.add(Incident(kind="instance", source=inst.process_id, message=str(err),
                                 traceback=traceback.format_exc(), instance_id=inst.id, created_at=now))
            append_events(session, step.events)

    def _after_commit(self, result: StepResult | None) -> None:
        """After a step committed: cache its workflow by the new revision, tell audit observers.

        Caching only here means a failed commit can never leave in the cache a workflow
        whose revision another process may then commit with different content.
        """
        if result is not None and result.workflow is not None:
            if result.status == "running":  # a finished instance takes no further step
                self._remember(result.instance_id, result.revision, result.workflow)
            result.workflow = None
        rows = result.audit_rows if result else []
        if not rows or not self.pm.hook.careflow_audit_event.get_hookimpls():
            return
        from plugins.isolation import dispatch_audit_events  # observers: own threads, deadline, incidents

        dispatch_audit_events(self, [entry_to_dict(row) for row in rows])

    def record_incident(self, kind: str, source: str | None, message: str, *, instance_id: int | None = None,
                        outbox_id: int | None = None, tb: str | None = None) -> None:
        """Record an incident in its own transaction."""
        with self.Session() as session, session.begin():
            session.add(Incident(kind=kind, source=source, message=message, traceback=tb or traceback.format_exc(),
                                 instance_id=instance_id, outbox_id=outbox_id, created_at=self.now()))


def _not_deployed(process_id: str) -> NotFound:
    return NotFound(f"no process '{process_id}' is deployed (careflow deploy FILE.bpmn first)")


def running_instance():
    """Condition on ``Timer`` rows: their instance is running (a correlated EXISTS, index-friendly)."""
    return exists().where(Instance.id == Timer.instance_id, Instance.status == "running")


_PLAIN = frozenset((str, int, float, bool, type(None)))
_READY = TaskState.READY


def copy_data(value: Any) -> Any:
    """A deep copy of task data; JSON-shaped values (most of it) are copied without ``copy.deepcopy``'s
    bookkeeping, which costs several times more and runs for every data-changing task of a step."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _PLAIN else copy_data(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _PLAIN else copy_data(v) for v in value]
    if kind in _PLAIN:
        return value
    return copy.deepcopy(value)


def _iter_tasks(wf: BpmnWorkflow):
    """Every task of the workflow and its subprocesses (a flat scan: cheaper than tree iteration)."""
    yield from wf.tasks.values()
    for sub in wf.subprocesses.values():
        yield from sub.tasks.values()


def _waiting_events(wf: BpmnWorkflow) -> list:
    """Tasks waiting for an event (SpiffWorkflow's event manager keeps exactly these)."""
    return [t for t in wf.event_manager.tasks.values() if t.state == TaskState.WAITING]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _timer_definition(task) -> TimerEventDefinition | None:
    definition = getattr(task.task_spec, "event_definition", None)
    return definition if isinstance(definition, TimerEventDefinition) else None


def _timer_due(task, definition: TimerEventDefinition) -> datetime | None:
    value = task.internal_data.get("event_value")
    if value is None:
        return None
    try:
        if isinstance(definition, CycleTimerEventDefinition) and isinstance(value, dict):
            return datetime.fromisoformat(value["next"])
        return TimerEventDefinition.get_datetime(value) if isinstance(value, str) else None
    except (ValueError, KeyError):
        return None


def _changes_data(task) -> bool:
    spec = task.task_spec
    return (spec.__class__.__name__ in ("ScriptTask", "SubWorkflowTask", "CallActivity")
            or bool(getattr(spec, "prescript", None) or getattr(spec, "postscript", None))
            or isinstance(spec, CatchingEvent))


def _completion_changes_only_form_data(spec) -> bool:
    """Whether completing a task of ``spec`` leaves its data as the form left it: no post-script,
    no data associations or I/O specification (which move keys in and out at completion)."""
    return (getattr(spec, "postscript", None) is None and not getattr(spec, "data_output_associations", None)
            and not getattr(spec, "data_input_associations", None) and getattr(spec, "io_specification", None) is None)


def _merged_data(wf: BpmnWorkflow) -> dict:
    """Best view of a running instance's data: the latest data of its newest tasks."""
    data: dict = dict(wf.data)
    tasks = sorted(wf.get_tasks(state=TaskState.READY | TaskState.WAITING | TaskState.COMPLETED),
                   key=lambda t: t.last_state_change)
    for t in tasks:
        data.update(t.data)
    return data

