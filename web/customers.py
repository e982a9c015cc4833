"""Customer pages and the customer context shown on task pages.

The customer registry is ``engine.customers`` (a separate concern); this blueprint uses it
when it is installed and otherwise answers 404 with an explanation. Who may see a
customer: roles that see everything, and people who can see a task about that customer
(domain.md: agents see the customers behind their tasks). Phone numbers and e-mails are
masked unless the role may see personal data.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from engine import pii
from engine.models import HumanTask
from web import authz
from web.auth import current, engine, require_login

bp = Blueprint("customers", __name__)
bp.before_request(require_login)

PII_KEYS = {"phone", "mobile", "contact_phone", "email", "contact_email", "id_number", "credit_code",
            "unified_social_credit_code"}

CONTEXT_KEYS = (
    ("customer_name", lambda: _("Customer")),
    ("customer", lambda: _("Customer")),
    ("customer_type", lambda: _("Customer type")),
    ("tier", lambda: _("Tier")),
    ("contact", lambda: _("Contact person")),
    ("contact_person", lambda: _("Contact person")),
    ("phone", lambda: _("Phone")),
    ("contact_phone", lambda: _("Phone")),
    ("email", lambda: _("E-mail")),
    ("contact_email", lambda: _("E-mail")),
    ("channel", lambda: _("Channel")),
)


def _registry():
    try:
        return importlib.import_module("engine.customers")
    except ImportError:
        return None


def registry_available() -> bool:
    """Is the customer registry (``engine.customers``) installed?"""
    return _registry() is not None


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list, str, int, float, bool)):
        return value
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    return {k: v for k, v in vars(value).items() if not k.startswith("_")}


def mask_value(key: str, value: Any) -> Any:
    """Mask a personal-data value by its key (phones keep 3+4 digits, e-mails the domain), as ``engine.pii`` does."""
    if value is None or key not in PII_KEYS:
        return value
    return pii.mask_value(key, str(value))


def customer_context(data: dict, task: dict, p: authz.Principal) -> dict:
    """What the task page shows about the customer: labelled values from the instance data."""
    pii = authz.may_see_pii(p)
    items = []
    seen_labels = set()
    for key, label_fn in CONTEXT_KEYS:
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        if value is None or value == "" or isinstance(value, (list, dict)):
            continue
        label = label_fn()
        if label in seen_labels:
            continue
        seen_labels.add(label)
        items.append({"key": key, "label": label, "value": value if pii else mask_value(key, value),
                      "masked": not pii and key in PII_KEYS})
    return {"items": items, "customer_id": task.get("customer_id"), "pii": pii}


def can_see_customer(p: authz.Principal, customer_id: str) -> bool:
    """Role-wide readers, or anyone who can see a task about this customer."""
    if p.sees_everything:
        return True
    from engine.inbox import task_row_dict

    with engine().Session() as session:
        rows = session.scalars(select(HumanTask).where(HumanTask.customer_id == str(customer_id)).limit(500)).all()
        return any(authz.can_see_task(p, task_row_dict(r)) for r in rows)


def get_customer(customer_id: str) -> tuple[dict | None, list[dict]]:
    """The record and contacts from the registry (None when unknown or no registry)."""
    module = _registry()
    if module is None:
        return None, []
    from engine.errors import NotFound

    with engine().Session() as session:
        try:
            record = _plain(module.get_customer(session, customer_id))
            contacts = [_plain(c) for c in module.list_contacts(session, customer_id)]
        except NotFound:
            return None, []
    return record, contacts


def record_fields(record: dict, pii: bool) -> list[tuple[str, Any]]:
    """(label, value) pairs of a customer record in the current language, personal data masked unless ``pii``."""
    from web.i18n import lang

    module = _registry()
    labels: dict = getattr(module, "FIELDS", {}) or {}
    masked = record.get("masked") or {}
    out = []
    keys = list(labels) or [k for k in record if k not in ("masked", "contacts")]
    for key in [*keys, "tier", "status"]:
        if key not in record:
            continue
        value = record[key]
        if not pii and key in masked:
            value = masked[key]
        elif not pii:
            value = mask_value(key, value)
        if key == "customer_type" and isinstance(record.get("customer_type_label"), dict):
            value = record["customer_type_label"].get(lang()) or value
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            continue
        en_zh = labels.get(key)
        label = (en_zh[1] if lang() == "zh" else en_zh[0]) if en_zh else {
            "tier": _("Tier"), "status": _("Status")}.get(key, key)
        out.append((label, value))
    return out


@bp.route("/customers/<customer_id>")
def customer(customer_id: str):
    """The customer record and every contact (personal data masked for roles that may not see it)."""
    p = current()
    if len(customer_id) > 64 or not can_see_customer(p, customer_id):
        abort(404)
    if not registry_available():
        return render_template("customers/unavailable.html", customer_id=customer_id), 404
    record, contacts = get_customer(customer_id)
    if record is None:
        abort(404)
    pii = authz.may_see_pii(p)
    if not pii:
        contacts = [{k: mask_value(k, v) for k, v in c.items()} for c in contacts]
    new_link = session.pop("survey_link", None)
    if not isinstance(new_link, dict) or new_link.get("customer_id") != customer_id:
        new_link = None
    return render_template("customers/customer.html", customer_id=customer_id, record=record,
                           fields=record_fields(record, pii), contacts=contacts, pii=pii,
                           can_create_survey_link=p.role in authz.WORKER_ROLES, survey_link=new_link)


_TICKET_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


@bp.route("/customers/<customer_id>/survey-link", methods=["POST"])
def survey_link(customer_id: str):
    """Create a satisfaction-survey link (agents and supervisors who serve the customer) and show it once."""
    p = current()
    if len(customer_id) > 64 or not can_see_customer(p, customer_id):
        abort(404)
    if p.role not in authz.WORKER_ROLES:
        abort(403)
    from engine.errors import NotFound
    from engine.surveys import create_survey_link

    ticket = (request.form.get("ticket_number") or "").strip()
    if ticket and not _TICKET_RE.match(ticket):
        flash(_("A ticket number has letters, digits and dashes only (e.g. SN20240315001)."), "error")
        return redirect(url_for("customers.customer", customer_id=customer_id))
    try:
        link = create_survey_link(engine(), customer_id, ticket_number=ticket or None, actor=p.username)
    except NotFound:
        abort(404)
    session["survey_link"] = {"customer_id": customer_id, "url": link["url"], "expires_at": link["expires_at"],
                              "ticket_number": link["ticket_number"]}
    flash(_("Survey link created: send it to the customer, or open it to take the answers on the phone."),
          "success")
    return redirect(url_for("customers.customer", customer_id=customer_id))
