"""Instance pages: the BPMN diagram (bpmn-js viewer) with current and completed steps
marked, the instance's data and its step history from the audit trail."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, render_template, request
from flask_babel import gettext as _
from sqlalchemy import select

from engine import inbox as engine_inbox
from engine import pii as engine_pii
from engine.errors import NotFound
from engine.models import Instance, ProcessVersion
from web import authz
from web.auth import current, engine, require_login
from web.diagram import process_file, with_layout

bp = Blueprint("instances", __name__)
bp.before_request(require_login)

ACTION_LABELS = {
    "instance_started": lambda: _("Instance started"),
    "task_ready": lambda: _("Task opened"),
    "task_completed": lambda: _("Task completed"),
    "task_cancelled": lambda: _("Task cancelled"),
    "task_claimed": lambda: _("Task claimed"),
    "task_released": lambda: _("Task released"),
    "task_reassigned": lambda: _("Task reassigned"),
    "engine_task": lambda: _("Automatic step"),
    "timer_fired": lambda: _("Timer fired"),
    "instance_completed": lambda: _("Instance completed"),
    "instance_failed": lambda: _("Instance failed"),
}
DONE_ACTIONS = {"task_completed", "engine_task", "timer_fired"}


def action_label(action: str) -> str:
    """Translated name of an audit action."""
    fn = ACTION_LABELS.get(action)
    return fn() if fn else action


def _instance_row(instance_id: int) -> dict:
    with engine().Session() as session:
        inst = session.get(Instance, instance_id)
        if inst is None:
            abort(404)
        return {"id": inst.id, "process_id": inst.process_id, "status": inst.status, "started_by": inst.started_by,
                "business_key": inst.business_key, "process_version_id": inst.process_version_id}


def visible_instance(instance_id: int) -> tuple[dict, list[dict]]:
    """The instance side row and its task rows, or 404 when the user may not see it."""
    row = _instance_row(instance_id)
    tasks = engine_inbox.instance_task_rows(engine(), instance_id)
    if not authz.can_see_instance(current(), row, tasks):
        abort(404)
    return row, tasks


def mask_data(data, pii: bool):
    """Instance data (or a data diff) with personal data masked (``engine.pii``) for roles that may not see it."""
    return data if pii else engine_pii.mask_data(data)


@bp.route("/instances")
def index():
    """Instances the user may see, newest first."""
    p = current()
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    status = request.args.get("status") or None
    if status not in (None, "running", "completed", "failed", "cancelled"):
        status = None
    key = (request.args.get("key") or "").strip()[:100] or None
    result = engine_inbox.instance_list(engine(), p.scope(), status=status, key=key, page=page,
                                        per_page=current_app.config["CAREFLOW_PAGE_SIZE"])
    return render_template("instances/index.html", page=result, status=status or "", key=key or "")


@bp.route("/instances/<int:instance_id>")
def show(instance_id: int):
    """Diagram, data, tasks and step history of one instance."""
    p = current()
    _row, tasks = visible_instance(instance_id)
    cf = engine()
    try:
        info = cf.show(instance_id)
    except NotFound:
        abort(404)
    pii = authz.may_see_pii(p)
    history = []
    for r in cf.audit(instance_id):
        r["label"] = action_label(r["action"])
        r["data_diff"] = mask_data(r.get("data_diff"), pii)
        history.append(r)
    visible_tasks = [t for t in tasks if authz.can_see_task(p, t)]
    return render_template("instances/show.html", info=info, data=mask_data(info["data"], pii), tasks=visible_tasks,
                           history=history)


@bp.route("/instances/<int:instance_id>/diagram.json")
def diagram(instance_id: int):
    """The BPMN XML of the instance's version and the element ids to mark (JSON for the viewer)."""
    row, tasks = visible_instance(instance_id)
    cf = engine()
    with cf.Session() as session:
        pv = session.scalar(select(ProcessVersion).where(ProcessVersion.id == row["process_version_id"]))
        files = dict(pv.bpmn_files)
        version = pv.version
    xml = process_file(files, row["process_id"])
    if xml is None:
        abort(404)
    completed, current_ids = [], []
    for r in cf.audit(instance_id):
        if r["action"] in DONE_ACTIONS and r.get("task_name") and r["task_name"] not in completed:
            completed.append(r["task_name"])
    for t in tasks:
        if t["status"] == "ready" and t["name"] not in current_ids:
            current_ids.append(t["name"])
    completed = [c for c in completed if c not in current_ids]
    return jsonify({"process_id": row["process_id"], "version": version, "xml": with_layout(xml, row["process_id"]),
                    "completed": completed, "current": current_ids, "status": row["status"]})
