"""Inboxes: paged, filtered queries over open human tasks, and assignment changes
(claim, release, reassign), each an audited transaction.

The queries read only the ``human_tasks`` side table (never instance state) and are shaped
for its indexes: ``(status, group_name, assignee, due_at)`` for a group's unassigned work
and ``(status, assignee, due_at)`` for a person's. Who may see or change what is the
caller's decision (the web layer authorizes); this module enforces only the invariants of
the data (a task must be open, a claimed task is not silently taken over...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.orm import Session

from engine.audit import append_events
from engine.errors import Conflict, NotFound, Problem, ValidationFailed
from engine.models import HumanTask, Instance, ProcessVersion, User
from engine.step import Step

if TYPE_CHECKING:
    from engine.runtime import Careflow

VIEWS = ("inbox", "mine", "groups", "team", "all")
PRIORITIES = ("urgent", "important", "general")


PREFERRED_CONTAINERS = ("ticket", "complaint_case", "complaint", "classified", "intake", "record", "revisit")


def task_facets(data: dict[str, Any]) -> dict[str, str | None]:
    """Inbox facets of a task from its data: priority, customer id and customer name.

    Looks at the top level, then inside ``ticket``, ``complaint``, ``classified``, ``intake``...
    (and any other object one level down): ``priority``; ``customer_id``; ``customer`` as a
    name, an id or a record (``{"customer_id"|"id", "name"}``); ``customer_name``. The first
    value found wins; unknown shapes leave the facet empty.
    """
    containers = [data]
    containers += [data[k] for k in PREFERRED_CONTAINERS if isinstance(data.get(k), dict)]
    containers += [v for k, v in data.items() if isinstance(v, dict) and k not in PREFERRED_CONTAINERS]
    priority = customer_id = customer_name = None
    for c in containers:
        priority = priority or _scalar(c.get("priority"))
        customer = c.get("customer")
        customer_id = customer_id or _scalar(c.get("customer_id"))
        customer_name = customer_name or _scalar(c.get("customer_name"))
        if isinstance(customer, dict):
            customer_id = customer_id or _scalar(customer.get("customer_id")) or _scalar(customer.get("id"))
            customer_name = customer_name or _scalar(customer.get("name"))
        elif isinstance(customer, str):
            customer_name = customer_name or _scalar(customer)
        elif isinstance(customer, int) and not isinstance(customer, bool):
            customer_id = customer_id or str(customer)
    return {"priority": _cut(priority, 20), "customer_id": _cut(customer_id, 64),
            "customer_name": _cut(customer_name, 200)}


def _scalar(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def _cut(value: str | None, size: int) -> str | None:
    return value[:size] if value else None


@dataclass
class Scope:
    """Whose tasks a query may return: a user, their groups, their reports, or everything."""

    username: str
    groups: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    everything: bool = False
    whole_groups: bool = False  # supervisors: every task of their groups, whoever holds it


@dataclass
class InboxPage:
    """One page of an inbox."""

    items: list[dict]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        """How many pages there are (at least 1)."""
        return max(1, -(-self.total // self.per_page))


def _view_condition(scope: Scope, view: str):
    mine = HumanTask.assignee == scope.username
    groups = and_(HumanTask.assignee.is_(None), HumanTask.group_name.in_(scope.groups)) if scope.groups else false()
    if view == "mine":
        return mine
    if view == "groups":
        return groups
    if view == "inbox":
        return or_(mine, groups)
    if view == "team":
        people = [scope.username, *scope.reports]
        team = HumanTask.group_name.in_(scope.groups) if scope.groups else false()
        return or_(team, HumanTask.assignee.in_(people))
    if view == "all":
        if not scope.everything:
            raise ValidationFailed([Problem("this view needs a role that sees every task", field="view")])
        return None
    raise ValidationFailed([Problem(f"must be one of {', '.join(VIEWS)}", field="view")])


def inbox(cf: Careflow, scope: Scope, view: str = "inbox", *, priority: str | None = None,
          task_name: str | None = None, customer: str | None = None, process_id: str | None = None,
          status: str = "ready", page: int = 1, per_page: int = 50) -> InboxPage:
    """A page of open tasks in due order (no due date last), filtered.

    ``view``: ``mine`` (assigned to me), ``groups`` (unassigned in my groups), ``inbox``
    (both), ``team`` (a supervisor's groups and reports, whoever holds them), ``all``.
    ``customer`` matches the customer id exactly or the start of the customer name.
    """
    page = max(1, int(page))
    per_page = min(200, max(1, int(per_page)))
    conds = [HumanTask.status == status]
    view_cond = _view_condition(scope, view)
    if view_cond is not None:
        conds.append(view_cond)
    if priority:
        conds.append(HumanTask.priority == priority)
    if task_name:
        conds.append(HumanTask.name == task_name)
    if process_id:
        conds.append(HumanTask.process_id == process_id)
    if customer:
        pattern = customer.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conds.append(or_(HumanTask.customer_id == customer, HumanTask.customer_name.like(pattern, escape="\\")))
    offset = (page - 1) * per_page
    with cf.Session() as session:
        # Two index-ordered segments (due date set, then not) instead of ORDER BY due_at IS NULL,
        # which would force a sort of every matching row.
        dated = and_(*conds, HumanTask.due_at.is_not(None))
        undated = and_(*conds, HumanTask.due_at.is_(None))
        n_dated = session.scalar(select(func.count()).select_from(HumanTask).where(dated)) or 0
        n_undated = session.scalar(select(func.count()).select_from(HumanTask).where(undated)) or 0
        rows: list[HumanTask] = []
        if offset < n_dated:
            rows += session.scalars(select(HumanTask).where(dated)
                                    .order_by(HumanTask.due_at, HumanTask.id).offset(offset).limit(per_page)).all()
        if len(rows) < per_page:
            off2 = max(0, offset - n_dated)
            rows += session.scalars(select(HumanTask).where(undated).order_by(HumanTask.created_at, HumanTask.id)
                                    .offset(off2).limit(per_page - len(rows))).all()
        items = [task_row_dict(r) for r in rows]
    return InboxPage(items=items, total=n_dated + n_undated, page=page, per_page=per_page)


def task_row_dict(row: HumanTask) -> dict:
    """A task row as a plain dict (no form; cheap enough for lists)."""
    return {
        "id": row.id, "instance_id": row.instance_id, "process_id": row.process_id,
        "process_version_id": row.process_version_id, "name": row.name, "title": row.title, "lane": row.lane,
        "group": row.group_name, "assignee": row.assignee, "status": row.status, "form_name": row.form_name,
        "priority": row.priority, "customer_id": row.customer_id, "customer_name": row.customer_name,
        "created_at": row.created_at, "due_at": row.due_at, "completed_at": row.completed_at,
        "completed_by": row.completed_by,
    }


def get_task_row(cf: Careflow, task_id: str) -> dict:
    """One task row as a dict (raises ``NotFound``)."""
    with cf.Session() as session:
        row = session.get(HumanTask, task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        return task_row_dict(row)


def instance_task_rows(cf: Careflow, instance_id: int) -> list[dict]:
    """Every human task of an instance (any status), oldest first."""
    with cf.Session() as session:
        rows = session.scalars(select(HumanTask).where(HumanTask.instance_id == instance_id)
                               .order_by(HumanTask.created_at, HumanTask.id)).all()
        return [task_row_dict(r) for r in rows]


def task_types(cf: Careflow) -> list[dict]:
    """The human tasks of the newest version of every process: ``process_id``, ``name``, ``title``."""
    out: list[dict] = []
    with cf.Session() as session:
        newest = select(ProcessVersion.process_id, func.max(ProcessVersion.version).label("v")) \
            .group_by(ProcessVersion.process_id).subquery()
        versions = session.scalars(select(ProcessVersion).join(
            newest, and_(ProcessVersion.process_id == newest.c.process_id, ProcessVersion.version == newest.c.v))
            .order_by(ProcessVersion.process_id)).all()
        for pv in versions:
            loaded = cf.specs.get(session, pv.id)
            seen = set()
            specs = [loaded.spec, *loaded.subprocess_specs.values()]
            for spec in specs:
                for ts in spec.task_specs.values():
                    if getattr(ts, "manual", False) and ts.bpmn_id and ts.bpmn_id not in seen:
                        seen.add(ts.bpmn_id)
                        out.append({"process_id": pv.process_id, "process_name": pv.process_name,
                                    "name": ts.bpmn_id, "title": ts.bpmn_name})
    return out


def processes(cf: Careflow) -> list[dict]:
    """Deployed processes: ``process_id``, ``name``, newest ``version``."""
    with cf.Session() as session:
        rows = session.execute(select(ProcessVersion.process_id, func.max(ProcessVersion.version))
                               .group_by(ProcessVersion.process_id).order_by(ProcessVersion.process_id)).all()
        out = []
        for pid, version in rows:
            name = session.scalar(select(ProcessVersion.process_name).where(ProcessVersion.process_id == pid,
                                                                          ProcessVersion.version == version))
            out.append({"process_id": pid, "name": name, "version": version})
        return out


def instance_rows(cf: Careflow, instance_ids: Iterable[int]) -> dict[int, dict]:
    """Side columns of instances (no state): status, business key, process, started_by."""
    ids = list(instance_ids)
    if not ids:
        return {}
    with cf.Session() as session:
        rows = session.execute(select(Instance.id, Instance.status, Instance.business_key, Instance.process_id,
                                      Instance.started_by, Instance.process_version_id).where(Instance.id.in_(ids)))
        return {r.id: {"id": r.id, "status": r.status, "business_key": r.business_key, "process_id": r.process_id,
                       "started_by": r.started_by, "process_version_id": r.process_version_id} for r in rows}


# -- assignment changes ------------------------------------------------------------------------

def _lock_task(session: Session, cf: Careflow, task_id: str) -> HumanTask:
    q = select(HumanTask).where(HumanTask.id == task_id)
    if cf.db.dialect.name == "postgresql":
        q = q.with_for_update()
    row = session.scalar(q)
    if row is None:
        raise NotFound(f"no task {task_id}")
    if row.status != "ready":
        who = f" by {row.completed_by}" if row.completed_by else ""
        raise Conflict(f"task {task_id} ('{row.title or row.name}') is already {row.status}{who}")
    return row


def _audit_assignment(session: Session, cf: Careflow, row: HumanTask, action: str, by: str, before: str | None,
                      after: str | None) -> None:
    inst = session.get(Instance, row.instance_id)
    step = Step(session, cf.now(), actor=by, cause="user", instance_id=row.instance_id, process_id=row.process_id,
                process_version_id=row.process_version_id)
    step.audit(action, task_id=row.id, task_name=row.name, task_title=row.title, lane=row.lane,
               details={"from": before, "to": after, "group": row.group_name,
                        "business_key": inst.business_key if inst else None})
    append_events(session, step.events)


def claim(cf: Careflow, task_id: str, user: str) -> dict:
    """Take an unassigned open task (audited ``task_claimed``); ``Conflict`` if someone else holds it."""
    with cf.Session() as session, session.begin():
        row = _lock_task(session, cf, task_id)
        if row.assignee == user:
            return task_row_dict(row)
        if row.assignee is not None:
            raise Conflict(f"task {task_id} is already claimed by {row.assignee}")
        row.assignee = user
        _audit_assignment(session, cf, row, "task_claimed", user, None, user)
        return task_row_dict(row)


def release(cf: Careflow, task_id: str, by: str) -> dict:
    """Give a claimed task back to its group (audited ``task_released``)."""
    with cf.Session() as session, session.begin():
        row = _lock_task(session, cf, task_id)
        if row.assignee is None:
            return task_row_dict(row)
        before = row.assignee
        row.assignee = None
        _audit_assignment(session, cf, row, "task_released", by, before, None)
        return task_row_dict(row)


def reassign(cf: Careflow, task_id: str, to_user: str, by: str) -> dict:
    """Give an open task to ``to_user`` (an active user), whoever held it (audited ``task_reassigned``)."""
    with cf.Session() as session, session.begin():
        target = session.scalar(select(User).where(User.username == to_user))
        if target is None or not target.active:
            raise ValidationFailed([Problem(f"no active user '{to_user}'", field="to")])
        row = _lock_task(session, cf, task_id)
        before = row.assignee
        if before == to_user:
            return task_row_dict(row)
        row.assignee = to_user
        _audit_assignment(session, cf, row, "task_reassigned", by, before, to_user)
        return task_row_dict(row)


def instance_list(cf: Careflow, scope: Scope, *, status: str | None = None, process_id: str | None = None,
                  key: str | None = None, page: int = 1, per_page: int = 50) -> InboxPage:
    """Instances newest first: all (``scope.everything``) or the ones the user started or has a
    task in (supervisors: their groups' and reports'). Items are side columns only."""
    page = max(1, int(page))
    per_page = min(200, max(1, int(per_page)))
    conds = []
    if not scope.everything:
        people = [scope.username, *scope.reports]
        task_cond = or_(HumanTask.assignee.in_(people), HumanTask.completed_by.in_(people),
                        and_(HumanTask.assignee.is_(None), HumanTask.status == "ready",
                             HumanTask.group_name.in_(scope.groups)) if scope.groups else false())
        if scope.whole_groups and scope.groups:
            task_cond = or_(task_cond, HumanTask.group_name.in_(scope.groups))
        conds.append(or_(Instance.started_by == scope.username,
                         Instance.id.in_(select(HumanTask.instance_id).where(task_cond))))
    if status:
        conds.append(Instance.status == status)
    if process_id:
        conds.append(Instance.process_id == process_id)
    if key:
        conds.append(Instance.business_key == key)
    with cf.Session() as session:
        total = session.scalar(select(func.count()).select_from(Instance).where(*conds)) or 0
        rows = session.execute(select(Instance.id, Instance.process_id, Instance.status, Instance.business_key,
                                      Instance.started_by, Instance.created_at, Instance.updated_at)
                               .where(*conds).order_by(Instance.id.desc())
                               .offset((page - 1) * per_page).limit(per_page)).all()
        items = [dict(r._mapping) for r in rows]
    return InboxPage(items=items, total=total, page=page, per_page=per_page)
