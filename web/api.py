"""JSON API ``/api/v1`` for integrations: tasks, instances, customers and tickets.

Authentication: ``Authorization: Bearer <token>`` with a token from ``careflow tokens
create USER``; the token acts as that user, with exactly the authorization of the pages.
Errors are JSON: ``{"error": code, "message": text, "field_errors": {path: [text]}}``.
The OpenAPI document is served at ``/api/v1/openapi.json`` (no token needed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, abort, g, jsonify, request

from engine import accounts
from engine import inbox as engine_inbox
from engine.errors import Conflict, NotFound, Problem, ValidationFailed
from web import authz
from web.auth import engine, principal_for
from web.customers import can_see_customer, get_customer, mask_value, registry_available
from web.errors import error_response
from web.forms import validate
from web.instances import action_label, mask_data, visible_instance

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def jsonable(value: Any) -> Any:
    """Datetimes as ISO 8601 strings, recursively."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@bp.before_request
def _authenticate():
    g.principal = None
    if request.endpoint == "api.openapi":
        return None
    header = request.headers.get("Authorization", "")
    scheme, _sep, token = header.partition(" ")
    account = accounts.account_for_token(engine(), token.strip()) if scheme.lower() == "bearer" else None
    if account is None:
        response = error_response(401, "a valid API token is required: Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="careflow"'
        return response
    g.principal = principal_for(account)
    return None


def _p() -> authz.Principal:
    return g.principal


def _body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationFailed([Problem("the request body must be a JSON object", field="")])
    return data


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError as err:
        raise ValidationFailed([Problem("must be a whole number", field=name)]) from err


def _visible_task(task_id: str) -> dict:
    try:
        row = engine_inbox.get_task_row(engine(), task_id)
    except NotFound:
        abort(404)
    if not authz.can_see_task(_p(), row):
        abort(404)
    return row


def _require(allowed: bool) -> None:
    if not allowed:
        abort(403)


@bp.route("/openapi.json")
def openapi():
    """The OpenAPI 3.1 document of this API."""
    from web.openapi import document

    return jsonify(document())


@bp.route("/me")
def me():
    """The user the token acts as."""
    p = _p()
    return jsonify({**p.account.to_dict(), "reports": p.reports})


@bp.route("/tasks")
def tasks():
    """A page of tasks in due order: ``view``, ``priority``, ``type``, ``customer``, ``process``, ``page``."""
    p = _p()
    view = request.args.get("view") or p.default_view()
    if view not in p.views():
        raise ValidationFailed([Problem(f"must be one of {', '.join(p.views())}", field="view")])
    result = engine_inbox.inbox(engine(), p.scope(), view, priority=request.args.get("priority") or None,
                                task_name=request.args.get("type") or None,
                                customer=request.args.get("customer") or None,
                                process_id=request.args.get("process") or None, page=_int_arg("page", 1),
                                per_page=_int_arg("per_page", 50))
    return jsonify({"items": jsonable(result.items), "page": result.page, "per_page": result.per_page,
                    "total": result.total})


@bp.route("/tasks/<task_id>")
def task(task_id: str):
    """One task with its form schema and instructions."""
    _visible_task(task_id)
    detail = engine().task(task_id)
    return jsonify(jsonable(detail))


@bp.route("/tasks/<task_id>/claim", methods=["POST"])
def claim(task_id: str):
    """Claim an unassigned task of one of my groups."""
    row = _visible_task(task_id)
    _require_open(row)
    _require(authz.can_claim(_p(), row))
    return jsonify(jsonable(engine_inbox.claim(engine(), task_id, _p().username)))


@bp.route("/tasks/<task_id>/release", methods=["POST"])
def release(task_id: str):
    """Give a claimed task back to its group."""
    row = _visible_task(task_id)
    _require_open(row)
    _require(authz.can_release(_p(), row))
    return jsonify(jsonable(engine_inbox.release(engine(), task_id, by=_p().username)))


@bp.route("/tasks/<task_id>/reassign", methods=["POST"])
def reassign(task_id: str):
    """Give a task to another person of its group or of my team (supervisors, admins)."""
    p = _p()
    row = _visible_task(task_id)
    _require_open(row)
    _require(authz.can_reassign(p, row))
    to_user = str(_body().get("to") or "")
    allowed = set(accounts.group_members(engine(), row["group"])) if row["group"] else set()
    if p.role == "supervisor":
        allowed |= set(p.reports)
    if p.role == "admin":
        allowed.add(to_user)
    if to_user not in allowed:
        raise ValidationFailed([Problem("choose a person from the task's group or your team", field="to")])
    return jsonify(jsonable(engine_inbox.reassign(engine(), task_id, to_user, by=p.username)))


def _require_open(row: dict) -> None:
    if row["status"] != "ready":
        who = f" by {row['completed_by']}" if row.get("completed_by") else ""
        raise Conflict(f"task {row['id']} is already {row['status']}{who}")


@bp.route("/tasks/<task_id>/complete", methods=["POST"])
def complete(task_id: str):
    """Complete a task I hold with ``{"data": {...}}``; 400 with field errors, 409 if it moved on."""
    p = _p()
    row = _visible_task(task_id)
    _require_open(row)
    _require(authz.can_complete(p, row))
    data = _body().get("data", {})
    if not isinstance(data, dict):
        raise ValidationFailed([Problem("must be a JSON object", field="data")])
    schema = engine().task(task_id).get("form") or {}
    errors = validate(schema, data)
    if errors:
        return error_response(400, "the data does not match the form", field_errors=errors, error="invalid")
    result = engine().complete(task_id, data, user=p.username, expected_assignee=row["assignee"])
    return jsonify({"instance_id": result.instance_id, "status": result.status,
                    "ready_tasks": jsonable(result.ready_tasks)})


@bp.route("/instances")
def instances():
    """Instances I may see, newest first (``status``, ``process``, ``key``, ``page``)."""
    result = engine_inbox.instance_list(engine(), _p().scope(), status=request.args.get("status") or None,
                                        process_id=request.args.get("process") or None,
                                        key=request.args.get("key") or None, page=_int_arg("page", 1),
                                        per_page=_int_arg("per_page", 50))
    return jsonify({"items": jsonable(result.items), "page": result.page, "per_page": result.per_page,
                    "total": result.total})


@bp.route("/instances", methods=["POST"])
def start():
    """Start an instance: ``{"process_id": ..., "data": {...}}`` → 201."""
    p = _p()
    _require(authz.can_start(p))
    body = _body()
    process_id = body.get("process_id")
    data = body.get("data", {})
    if not isinstance(process_id, str) or not process_id:
        raise ValidationFailed([Problem("is required", field="process_id")])
    if not isinstance(data, dict):
        raise ValidationFailed([Problem("must be a JSON object", field="data")])
    result = engine().start(process_id, data, actor=p.username)
    return jsonify({"instance_id": result.instance_id, "status": result.status,
                    "ready_tasks": jsonable(result.ready_tasks)}), 201


@bp.route("/instances/<int:instance_id>")
def instance(instance_id: int):
    """An instance: status, data (personal data masked unless allowed) and the tasks I may see."""
    p = _p()
    _row, rows = visible_instance(instance_id)
    info = engine().show(instance_id)
    info["data"] = mask_data(info["data"], authz.may_see_pii(p))
    info["tasks"] = jsonable([t for t in rows if authz.can_see_task(p, t)])
    return jsonify(info)


@bp.route("/instances/<int:instance_id>/history")
def history(instance_id: int):
    """The instance's audit rows in order."""
    visible_instance(instance_id)
    pii = authz.may_see_pii(_p())
    rows = []
    for r in engine().audit(instance_id):
        r["label"] = action_label(r["action"])
        r["data_diff"] = mask_data(r.get("data_diff"), pii)
        rows.append(r)
    return jsonify(rows)


@bp.route("/customers/<customer_id>")
def customer(customer_id: str):
    """A customer record with its contacts (from the customer registry)."""
    p = _p()
    if len(customer_id) > 64 or not can_see_customer(p, customer_id):
        abort(404)
    if not registry_available():
        return error_response(404, "the customer registry (engine.customers) is not installed")
    record, contacts = get_customer(customer_id)
    if record is None:
        abort(404)
    pii = authz.may_see_pii(p)
    if not pii:
        record = {k: mask_value(k, v) for k, v in record.items()}
        contacts = [{k: mask_value(k, v) for k, v in c.items()} for c in contacts]
    return jsonify(jsonable({**record, "contacts": contacts}))


def _ticket_visible(ticket: dict) -> bool:
    p = _p()
    if p.sees_everything:
        return True
    instance_id = ticket.get("instance_id")
    if instance_id is None:
        return False
    rows = engine_inbox.instance_task_rows(engine(), int(instance_id))
    inst = engine_inbox.instance_rows(engine(), [int(instance_id)]).get(int(instance_id), {})
    return authz.can_see_instance(p, inst, rows)


@bp.route("/tickets")
def tickets():
    """Tickets I may see, newest first (``?status=``, ``?page=``, ``?per_page=``), from the ticket table."""
    from engine import tickets as engine_tickets

    per_page = min(200, max(1, _int_arg("per_page", 50)))
    page = max(1, _int_arg("page", 1))
    status = request.args.get("status") or None
    if status is not None and status not in engine_tickets.STATUS_LABELS:
        raise ValidationFailed([Problem(f"unknown status {status!r}", field="status")])
    with engine().Session() as session:
        rows = engine_tickets.list_tickets(session, status=status, limit=per_page, offset=(page - 1) * per_page)
    visible = [t for t in rows if _ticket_visible(t)]
    return jsonify({"items": jsonable(visible), "page": page, "per_page": per_page,
                    "has_more": len(rows) == per_page})


@bp.route("/tickets/<number>")
def ticket(number: str):
    """One ticket by number: facts, deadlines of every round and the status history."""
    from engine import tickets as engine_tickets

    if len(number) > 40:
        abort(404)
    try:
        with engine().Session() as session:
            item = engine_tickets.get_ticket(session, number)
    except NotFound:
        abort(404)
    if not _ticket_visible(item):
        abort(404)
    return jsonify(jsonable(item))


@bp.errorhandler(ValidationFailed)
def _invalid(err: ValidationFailed):
    return error_response(400, "the request is not valid", field_errors=err.field_errors, error="invalid")
