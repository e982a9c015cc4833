"""Auditor pages (issue #9): search the audit trail, one instance's step history next to its
BPMN diagram, CSV / JSON exports of the filtered set, the chain's verification status, and
the deliberate, audited unmasking of personal data.

Who: ``authz.can_read_audit`` (auditors and admins); ``authz.can_unmask`` (admins) may reveal
personal data, always with a reason, which ``engine.audit_query`` records as a
``pii_unmasked`` row before any clear value leaves. Everything else is masked for everyone
(``138****0000``), on the pages and in the exports.

Dates in the filter are days in the deployment's time zone (``CAREFLOW_TIMEZONE``); the
page, its paging links and its export buttons all build the filter from the same query
string (``page_filter``), so an export holds exactly the rows the page searched.
``init_app`` also installs the read-only guard: a read-only user (auditor) is refused every
state-changing request of every blueprint, see ``authz.refuses_change``.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from engine import accounts
from engine.audit import current_head
from engine.audit_query import AuditFilter, export_audit, instance_history, search_audit, unmask
from engine.audit_verify import latest_verification, record_verification, verification_status, verify_chain
from engine.clock import utcnow
from engine.errors import NotFound, ValidationFailed
from engine.models import AuditEntry, Instance, ProcessVersion
from engine.pii import AuditPii, UnmaskRefused, mask_data
from web import authz
from web.auth import current, engine, require_login, safe_next
from web.diagram import process_file, with_layout
from web.errors import error_response
from web.instances import ACTION_LABELS as INSTANCE_ACTION_LABELS

bp = Blueprint("audit", __name__, url_prefix="/audit")
bp.before_request(require_login)

FILTER_KEYS = ("from", "to", "user", "process", "version", "action", "cause", "customer", "ticket",
               "instance")
CAUSES = ("user", "timer", "system", "plugin", "migration")
MAX_PARAM = 200
MAX_VALUE_CHARS = 2000
# The page re-checks the rows appended since the last full verification on every view; beyond
# this many it says so instead (a full "verify now" takes seconds per million rows).
INLINE_VERIFY_MAX_ROWS = 10_000

CAUSE_LABELS = {
    "user": lambda: _("User"),
    "timer": lambda: _("Timer"),
    "system": lambda: _("System"),
    "plugin": lambda: _("Plugin"),
    "migration": lambda: _("Migration"),
}
ACTION_LABELS = {
    **INSTANCE_ACTION_LABELS,
    "instance_migrated": lambda: _("Instance migrated"),
    "migration_failed": lambda: _("Migration failed"),
    "process_deployed": lambda: _("Process deployed"),
    "event_thrown": lambda: _("Event thrown"),
    "expression_failed": lambda: _("Expression failed"),
    "pii_unmasked": lambda: _("Personal data unmasked"),
    "pii_erased": lambda: _("Personal data erased"),
    "user_added": lambda: _("User added"),
    "user_activated": lambda: _("User activated"),
    "user_deactivated": lambda: _("User deactivated"),
    "password_changed": lambda: _("Password changed"),
    "api_token_created": lambda: _("API token created"),
    "customer_created": lambda: _("Customer created"),
    "customer_updated": lambda: _("Customer updated"),
    "customer_unmasked": lambda: _("Customer data unmasked"),
    "customers_exported": lambda: _("Customers exported"),
    "ticket_registered": lambda: _("Ticket registered"),
    "ticket_updated": lambda: _("Ticket updated"),
    "sla_escalated": lambda: _("SLA escalated"),
    "complaint_registered": lambda: _("Complaint registered"),
    "survey_answered": lambda: _("Survey answered"),
}
PROBLEM_LABELS = {
    "edited": lambda: _("a row was edited"),
    "deleted": lambda: _("rows were deleted"),
    "reordered": lambda: _("rows were reordered"),
    "truncated": lambda: _("the log was cut short"),
    "head_mismatch": lambda: _("the chain head does not match"),
}
FIELD_MESSAGES = {
    "from": lambda: _("Enter a date (YYYY-MM-DD)."),
    "to": lambda: _("Enter a date (YYYY-MM-DD) not before the start date."),
    "version": lambda: _("A version is a whole number, and needs the process it belongs to."),
    "instance": lambda: _("An instance number is a whole number."),
    "cursor": lambda: _("This page link is not valid any more: start the search again."),
}


@bp.before_request
def _readers_only():
    if not authz.can_read_audit(current()):
        abort(403)
    return None


def init_app(app: Flask) -> None:
    """Install the read-only guard (pages and API) and the navigation helper for templates.
    Call it after every blueprint is registered: the guard must run after the sign-in
    (``web.auth``) and the API's token check have set ``g.principal``."""

    def guard():
        if authz.refuses_change(g.get("principal"), request.method, request.endpoint):
            abort(403)
        return None

    app.before_request(guard)
    app.before_request_funcs.setdefault("api", []).append(guard)
    app.jinja_env.globals.update(can_read_audit=authz.can_read_audit)


# -- labels and value formatting ----------------------------------------------------------------
def action_label(action: str | None) -> str:
    """Translated name of an audit action (the code itself when unknown)."""
    fn = ACTION_LABELS.get(action or "")
    return fn() if fn else (action or "")


def cause_label(cause: str | None) -> str:
    """Translated name of what caused a step."""
    fn = CAUSE_LABELS.get(cause or "")
    return fn() if fn else (cause or "")


def show_value(value: Any) -> str:
    """A data value as text: strings as they are, everything else as compact JSON."""
    if value is None:
        return "null"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def diff_rows(diff: dict | None) -> list[dict]:
    """A data diff (``added`` / ``changed`` / ``removed``) as before/after rows, by field name."""
    if not isinstance(diff, dict):
        return []
    rows = []
    for key, value in (diff.get("added") or {}).items():
        rows.append({"field": key, "kind": "added", "before": None, "after": show_value(value)})
    for key, pair in (diff.get("changed") or {}).items():
        old, new = (pair if isinstance(pair, list) and len(pair) == 2 else (None, pair))
        rows.append({"field": key, "kind": "changed", "before": show_value(old), "after": show_value(new)})
    for key in diff.get("removed") or []:
        rows.append({"field": str(key), "kind": "removed", "before": None, "after": None})
    rows.sort(key=lambda r: r["field"])
    return rows


def detail_rows(details: dict | None) -> list[tuple[str, str]]:
    """``details`` as (key, text) pairs, empty values left out."""
    if not isinstance(details, dict):
        return []
    return [(k, show_value(v)) for k, v in sorted(details.items()) if v not in (None, "", [], {})]


def step_view(item: dict, with_pii: set[int]) -> dict:
    """What the templates show of an audit row (``search_audit`` / ``instance_history`` item)."""
    return {**item, "label": action_label(item["action"]), "cause_label": cause_label(item["cause"]),
            "diff": diff_rows(item.get("data_diff")), "detail_rows": detail_rows(item.get("details")),
            "has_pii": item["seq"] in with_pii,
            "form_short": (item.get("form_version") or "")[:8]}


def rows_with_personal_data(session, seqs: list[int]) -> set[int]:
    """Which of these audit rows hold personal data (kept in ``audit_pii``, or in clear in rows
    written before migration 0007, which are masked on display)."""
    if not seqs:
        return set()
    found = set(session.scalars(select(AuditPii.seq).where(AuditPii.seq.in_(seqs)).distinct()))
    rest = [s for s in seqs if s not in found]
    for seq, diff, details in session.execute(select(AuditEntry.seq, AuditEntry.data_diff, AuditEntry.details)
                                              .where(AuditEntry.seq.in_(rest))):
        if mask_data(diff) != diff or mask_data(details) != details:
            found.add(seq)
    return found


# -- the filter ---------------------------------------------------------------------------------
def form_values(args) -> dict[str, str]:
    """The filter fields as typed (trimmed, at most 200 characters each)."""
    return {k: (args.get(k) or "").strip()[:MAX_PARAM] for k in FILTER_KEYS}


def _zone() -> ZoneInfo:
    return ZoneInfo(current_app.config["BABEL_DEFAULT_TIMEZONE"])


def _local_day(value: str, *, end: bool) -> str:
    """A date typed on the page is a day in the deployment's time zone: its start (or, for the
    end of the range, the next day's start) as an ISO date-time; anything else unchanged."""
    if len(value) != 10:
        return value
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return value
    start = datetime(day.year, day.month, day.day, tzinfo=_zone())
    return (start + timedelta(days=1) if end else start).isoformat()


def page_filter(values: dict[str, str]) -> AuditFilter:
    """The engine filter of the page's fields (raises ``ValidationFailed`` naming bad fields)."""
    params = {k: v for k, v in values.items() if v}
    if "from" in params:
        params["from"] = _local_day(params["from"], end=False)
    if "to" in params:
        params["to"] = _local_day(params["to"], end=True)
    return AuditFilter.from_params(params)


def field_errors(err: ValidationFailed) -> dict[str, str]:
    """Translated messages per filter field."""
    out = {}
    for name in err.field_errors:
        fn = FIELD_MESSAGES.get(name)
        out[name or "cursor"] = fn() if fn else _("The value is not valid.")
    return out


# -- verification status ------------------------------------------------------------------------
def verification(cf, session) -> dict:
    """The status box: ``state`` verified / broken / never_verified / unchecked (too many rows
    appended since the last full verification to re-check them on a page view)."""
    head_seq, _hash = current_head(session)
    last = latest_verification(session)
    pending = head_seq - (last["head_seq"] or 0) if last else head_seq
    if last is not None and last["ok"] and pending > INLINE_VERIFY_MAX_ROWS:
        status = {"state": "unchecked", "last_full": last, "since": None}
    else:
        status = verification_status(cf.db, session)
    problem = None
    for part in (status.get("since"), status.get("last_full")):
        if part and not part.get("ok", True):
            fn = PROBLEM_LABELS.get(part.get("problem") or "")
            problem = {"seq": part.get("first_bad_seq"), "label": fn() if fn else part.get("problem"),
                       "message": part.get("message")}
            break
    return {**status, "head_seq": head_seq, "pending": pending, "problem": problem}


# -- sessions -----------------------------------------------------------------------------------
def read_sessions(cf) -> sessionmaker[Session]:
    """Sessions for the pages' reads and for streaming exports. The engine's SQLite sessions
    begin IMMEDIATE (the write lock, right for steps), which would stop every writer while a
    page re-checks the chain or a download runs; these begin a plain snapshot transaction
    instead, unless opened with the ``careflow_write`` execution option (the audited start of
    an unmasked export). PostgreSQL: the engine's own sessions."""
    if cf.db.dialect.name != "sqlite":
        return cf.Session
    cached = current_app.extensions.get("careflow_audit_reads")
    if cached is not None and cached[0] is cf:
        return cached[1]
    db = create_engine(cf.db.url, poolclass=NullPool,
                       connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(db, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001 - DBAPI objects
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(db, "begin")
    def _on_begin(conn):  # noqa: ANN001
        write = conn.get_execution_options().get("careflow_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    factory = sessionmaker(bind=db, expire_on_commit=False)
    current_app.extensions["careflow_audit_reads"] = (cf, factory)
    return factory


# -- pages --------------------------------------------------------------------------------------
@bp.route("")
def search():
    """Search the whole trail: filters, keyset paging (newest first), status, export buttons."""
    p = current()
    cf = engine()
    values = form_values(request.args)
    older = (request.args.get("older") or "").strip()[:MAX_PARAM] or None
    newer = (request.args.get("newer") or "").strip()[:MAX_PARAM] or None
    errors: dict[str, str] = {}
    items: list[dict] = []
    page = None
    with read_sessions(cf)() as session:
        try:
            flt = page_filter(values)
            page = search_audit(session, flt, limit=current_app.config["CAREFLOW_PAGE_SIZE"], older=older,
                                newer=newer)
        except ValidationFailed as err:
            errors = field_errors(err)
        if page is not None:
            with_pii = rows_with_personal_data(session, [i["seq"] for i in page.items])
            items = [step_view(i, with_pii) for i in page.items]
        status = verification(cf, session)
        processes = list(session.scalars(select(ProcessVersion.process_id).distinct()
                                         .order_by(ProcessVersion.process_id)))
    users = [a.username for a in accounts.list_accounts(cf)]
    query = {k: v for k, v in values.items() if v}
    return render_template("audit/search.html", values=values, query=query, errors=errors, items=items,
                           page=page, status=status, causes=CAUSES, cause_labels=CAUSE_LABELS,
                           actions=[(a, action_label(a)) for a in sorted(ACTION_LABELS)], processes=processes,
                           users=users,
                           can_verify=authz.can_verify_audit(p), can_unmask=authz.can_unmask(p),
                           tz=current_app.config["BABEL_DEFAULT_TIMEZONE"],
                           here=request.full_path.rstrip("?")), 400 if errors else 200


@bp.route("/instances/<int:instance_id>")
def history(instance_id: int):
    """Every step of one instance in order, with the BPMN diagram highlighting the selected step."""
    p = current()
    cf = engine()
    with read_sessions(cf)() as session:
        try:
            items = instance_history(session, instance_id)
        except NotFound:
            abort(404)
        with_pii = rows_with_personal_data(session, [i["seq"] for i in items])
        inst = session.get(Instance, instance_id)
        instance = None if inst is None else {
            "id": inst.id, "status": inst.status, "process_id": inst.process_id,
            "business_key": inst.business_key, "started_by": inst.started_by}
        status = verification(cf, session)
    steps = [step_view(i, with_pii) for i in items]
    versions = sorted({s["process_version_id"] for s in steps if s.get("process_version_id")})
    with_version = [s["process_version_id"] for s in steps if s.get("process_version_id")]
    last_version = with_version[-1] if with_version else None
    ticket = next((s["ticket"] for s in steps if s.get("ticket")), None)
    process_id = next((s["process_id"] for s in steps if s.get("process_id")), None)
    sources = {str(v): url_for("audit.version_diagram", version_id=v) for v in versions}
    return render_template("audit/history.html", instance_id=instance_id, instance=instance, steps=steps,
                           sources=sources, last_version=last_version, ticket=ticket, process_id=process_id,
                           status=status, can_unmask=authz.can_unmask(p),
                           can_verify=authz.can_verify_audit(p),
                           here=request.full_path.rstrip("?"))


@bp.route("/versions/<int:version_id>/diagram.json")
def version_diagram(version_id: int):
    """The BPMN XML of one deployed process version (with a generated layout if it has none)."""
    with read_sessions(engine())() as session:
        pv = session.get(ProcessVersion, version_id)
        if pv is None:
            abort(404)
        files, process_id, version = dict(pv.bpmn_files), pv.process_id, pv.version
    xml = process_file(files, process_id)
    if xml is None:
        abort(404)
    return {"process_id": process_id, "version": version, "version_id": version_id,
            "xml": with_layout(xml, process_id)}


# -- exports ------------------------------------------------------------------------------------
def _export_response(fmt: str, values: dict[str, str], *, unmasked: bool = False, reason: str | None = None):
    p = current()
    try:
        flt = page_filter(values)
    except ValidationFailed as err:
        return error_response(400, " ".join(field_errors(err).values()))
    session = read_sessions(engine())()
    try:
        if unmasked:  # the pii_unmasked row is written first: take the write lock for that transaction
            session.connection(execution_options={"careflow_write": True})
        chunks = export_audit(session, flt, fmt=fmt, by=p.username, unmask=unmasked, reason=reason)
    except UnmaskRefused:
        session.close()
        abort(403)
    except BaseException:
        session.close()
        raise

    def stream():
        try:
            yield from chunks
        finally:
            session.close()

    stamp = utcnow().astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"careflow-audit-{stamp}{'-unmasked' if unmasked else ''}.{fmt}"
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    response = Response(stream(), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["X-Careflow-Masked"] = "false" if unmasked else "true"
    return response


@bp.route("/export/<any(csv, json):fmt>")
def export(fmt: str):
    """The filtered set as CSV or JSON, personal data masked (the page's filter, all pages)."""
    return _export_response(fmt, form_values(request.args))


@bp.route("/export/<any(csv, json):fmt>", methods=["POST"])
def export_unmasked(fmt: str):
    """The filtered set in clear, for roles that may unmask, with a reason (audited first)."""
    if not authz.can_unmask(current()):
        abort(403)
    reason = (request.form.get("reason") or "").strip()[:500]
    values = form_values(request.form)
    if not reason:
        flash(_("Say why the personal data must be seen: the reason is recorded in the audit trail."),
              "error")
        return redirect(url_for("audit.search", **{k: v for k, v in values.items() if v}))
    return _export_response(fmt, values, unmasked=True, reason=reason)


# -- actions ------------------------------------------------------------------------------------
@bp.route("/verify", methods=["POST"])
def verify():
    """Verify the whole chain now and record the result (a broken chain also opens an incident)."""
    p = current()
    if not authz.can_verify_audit(p):
        abort(403)
    cf = engine()
    result = verify_chain(cf.db)
    with cf.Session() as session, session.begin():
        record_verification(session, result, p.username)
    if result.ok:
        flash(_("The audit trail is intact: %(rows)d rows verified.", rows=result.rows_checked), "success")
    else:
        cf.record_incident("audit", "web: verify now", result.message,
                           tb=f"first bad seq {result.first_bad_seq}: {result.problem}")
        fn = PROBLEM_LABELS.get(result.problem or "")
        flash(_("The audit trail is broken at row %(seq)s: %(problem)s. An incident was opened.",
                seq=result.first_bad_seq, problem=fn() if fn else result.problem), "error")
    return redirect(safe_next(request.form.get("next"), url_for("audit.search")))


@bp.route("/entries/<int:seq>/unmask", methods=["POST"])
def unmask_entry(seq: int):
    """Show one row's personal data in clear, once, after recording who looked and why."""
    p = current()
    if not authz.can_unmask(p):
        abort(403)
    back = safe_next(request.form.get("next"), url_for("audit.search"))
    reason = (request.form.get("reason") or "").strip()[:500]
    if not reason:
        flash(_("Say why the personal data must be seen: the reason is recorded in the audit trail."),
              "error")
        return redirect(back)
    with engine().Session() as session:
        try:
            revealed = unmask(session, seq, p.username, reason)
        except NotFound:
            abort(404)
        except UnmaskRefused:
            abort(403)
        record = session.scalar(select(AuditEntry.seq).where(AuditEntry.action == "pii_unmasked",
                                                             AuditEntry.actor == p.username)
                                .order_by(AuditEntry.seq.desc()).limit(1))
        version = session.scalar(select(ProcessVersion.version)
                                 .where(ProcessVersion.id == revealed["entry"]["process_version_id"])) \
            if revealed["entry"]["process_version_id"] else None
    entry = step_view({**revealed["entry"], "version": version, "ticket": None}, set())
    values = [(path, show_value(v)) for path, v in sorted(revealed["values"].items())]
    return render_template("audit/unmasked.html", entry=entry, values=values, reason=reason,
                           record_seq=record,
                           back=back)
