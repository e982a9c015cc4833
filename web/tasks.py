"""Agents' and supervisors' pages: the inbox and the task page (claim, release,
reassign, complete with the task's form)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from engine import accounts
from engine import inbox as engine_inbox
from engine.errors import Conflict, NotFound, ValidationFailed
from web import authz
from web.auth import current, engine, require_login
from web.customers import customer_context, registry_available
from web.forms import build_fields, parse_submission, to_form_paths, validate
from web.sla import countdown

bp = Blueprint("tasks", __name__)
bp.before_request(require_login)

FILTERS = ("priority", "type", "customer", "process")


@bp.route("/")
def home():
    """The landing page is the inbox."""
    return redirect(url_for("tasks.inbox"))


@bp.route("/tasks")
def inbox():
    """My tasks and my groups' tasks (supervisors: their teams'), filtered and paged, by due date."""
    p = current()
    cf = engine()
    view = request.args.get("view") or p.default_view()
    if view not in p.views():
        view = p.default_view()
    filters = {k: (request.args.get(k) or "").strip()[:200] for k in FILTERS}
    if filters["priority"] and filters["priority"] not in engine_inbox.PRIORITIES:
        filters["priority"] = ""
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    result = engine_inbox.inbox(cf, p.scope(), view, priority=filters["priority"] or None,
                                task_name=filters["type"] or None, customer=filters["customer"] or None,
                                process_id=filters["process"] or None, page=page,
                                per_page=current_app.config["CAREFLOW_PAGE_SIZE"])
    now = cf.now()
    rows = []
    for t in result.items:
        rows.append({**t, "sla": countdown(t["due_at"], t["created_at"], now),
                     "can_claim": authz.can_claim(p, t)})
    task_types = engine_inbox.task_types(cf)
    return render_template("tasks/inbox.html", rows=rows, page=result, view=view, views=p.views(),
                           filters=filters, priorities=engine_inbox.PRIORITIES, task_types=task_types,
                           processes=engine_inbox.processes(cf))


def _visible_task(task_id: str) -> dict:
    try:
        row = engine_inbox.get_task_row(engine(), task_id)
    except NotFound:
        abort(404)
    if not authz.can_see_task(current(), row):
        abort(404)
    return row


def _tz() -> str:
    return current_app.config["BABEL_DEFAULT_TIMEZONE"]


def _render_task(row: dict, *, values=None, errors=None, raw=False, status: int = 200):
    p = current()
    cf = engine()
    detail = cf.task(row["id"])
    instance = cf.show(row["instance_id"])
    schema = detail.get("form") or {}
    fields = build_fields(schema, values if values is not None else instance["data"], errors, raw=raw, tz=_tz())
    reassign_to = []
    if authz.can_reassign(p, row):
        people = set(accounts.group_members(cf, row["group"])) if row["group"] else set()
        if p.role == "supervisor":
            people |= set(p.reports)
        reassign_to = sorted(u for u in people if u != row["assignee"])
    ctx = customer_context(instance["data"], row, p)
    form_errors = (errors or {}).get("", [])
    return render_template(
        "tasks/task.html", task=row, detail=detail, instance=instance, schema=schema, fields=fields,
        form_errors=form_errors, has_errors=bool(errors), customer=ctx, customer_registry=registry_available(),
        sla=countdown(row["due_at"], row["created_at"], cf.now()), can_complete=authz.can_complete(p, row),
        can_claim=authz.can_claim(p, row), can_release=authz.can_release(p, row),
        can_reassign=authz.can_reassign(p, row), reassign_to=reassign_to,
    ), status


def _stale(row: dict, status: int = 409):
    return render_template("tasks/stale.html", task=row, posted=status == 409), status


@bp.route("/tasks/<task_id>", methods=["GET"])
def task(task_id: str):
    """The task page: instructions, customer context, the form (or why it can no longer be done)."""
    row = _visible_task(task_id)
    if row["status"] != "ready":
        return _stale(row, 200)
    return _render_task(row)


@bp.route("/tasks/<task_id>", methods=["POST"])
def complete(task_id: str):
    """Submit the task's form; field errors come back next to the fields with the input kept."""
    p = current()
    row = _visible_task(task_id)
    if row["status"] != "ready":
        return _stale(row)
    if not authz.can_complete(p, row):
        abort(403)
    cf = engine()
    schema = cf.task(task_id).get("form") or {}
    data, errors, positions = parse_submission(schema, request.form, tz=_tz())
    for path, msgs in to_form_paths(validate(schema, data), positions).items():
        if path not in errors:
            errors[path] = msgs
    if errors:
        return _render_task(row, values=request.form, errors=errors, raw=True, status=400)
    try:
        result = cf.complete(task_id, data, user=p.username, expected_assignee=row["assignee"])
    except ValidationFailed as err:
        return _render_task(row, values=request.form, errors=to_form_paths(err.field_errors, positions), raw=True,
                            status=400)
    except Conflict:
        return _stale(engine_inbox.get_task_row(cf, task_id))
    next_titles = [t.get("title") or t["name"] for t in result.ready_tasks]
    flash(_("Task completed."), "success")
    for t in result.ready_tasks:
        if t.get("assignee") == p.username or (t.get("assignee") is None and t.get("lane") in p.groups):
            return redirect(url_for("tasks.task", task_id=t["id"]))
    if next_titles:
        flash(_("Next step: %(steps)s", steps=", ".join(next_titles)), "info")
    return redirect(url_for("tasks.inbox"))


@bp.route("/tasks/<task_id>/claim", methods=["POST"])
def claim(task_id: str):
    """Take an unassigned task of my group."""
    p = current()
    row = _visible_task(task_id)
    if row["status"] != "ready":
        return _stale(row)
    if not authz.can_claim(p, row):
        abort(403)
    try:
        engine_inbox.claim(engine(), task_id, p.username)
    except Conflict:
        flash(_("Someone else claimed this task first."), "error")
        return redirect(url_for("tasks.inbox"))
    flash(_("The task is now yours."), "success")
    return redirect(url_for("tasks.task", task_id=task_id))


@bp.route("/tasks/<task_id>/release", methods=["POST"])
def release(task_id: str):
    """Give the task back to its group."""
    p = current()
    row = _visible_task(task_id)
    if row["status"] != "ready":
        return _stale(row)
    if not authz.can_release(p, row):
        abort(403)
    engine_inbox.release(engine(), task_id, by=p.username)
    flash(_("The task is back in the group's queue."), "info")
    return redirect(url_for("tasks.inbox"))


@bp.route("/tasks/<task_id>/reassign", methods=["POST"])
def reassign(task_id: str):
    """Supervisors give a task to someone in its group or in their team."""
    p = current()
    row = _visible_task(task_id)
    if row["status"] != "ready":
        return _stale(row)
    if not authz.can_reassign(p, row):
        abort(403)
    to_user = (request.form.get("to") or "").strip()
    cf = engine()
    allowed = set(accounts.group_members(cf, row["group"])) if row["group"] else set()
    if p.role == "supervisor":
        allowed |= set(p.reports)
    if p.role == "admin":
        target = accounts.get_account(cf, to_user)
        if target is not None and target.active:
            allowed.add(to_user)
    if to_user not in allowed:
        flash(_("Choose a person from the task's group or your team."), "error")
        return redirect(url_for("tasks.task", task_id=task_id))
    try:
        engine_inbox.reassign(cf, task_id, to_user, by=p.username)
    except ValidationFailed:
        flash(_("Choose a person from the task's group or your team."), "error")
        return redirect(url_for("tasks.task", task_id=task_id))
    flash(_("The task was given to %(user)s.", user=to_user), "success")
    if authz.can_see_task(p, {**row, "assignee": to_user}):
        return redirect(url_for("tasks.task", task_id=task_id))
    return redirect(url_for("tasks.inbox"))
