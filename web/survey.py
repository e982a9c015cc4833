"""The customer's satisfaction survey (客户满意度调查表), reached through a signed, expiring,
single-use link ``/survey/<token>`` (see ``engine.surveys``): no sign-in, CSRF-protected posts,
Chinese or English like every page.

The questions are ``forms/survey.schema.json``: ``web.forms`` builds the fields (labels in the
customer's language, input kept after an error, translated messages) and ``survey/form.html``
shows each score as five star buttons. What the page says about the customer is what
``open_survey_link`` gives: the company name (an individual's name masked) and the ticket number.

A link that is not valid answers 404, an expired or already used one 410, each with a page that
says why. Requests with a link that is not valid count as failed attempts of the client's
address, together with failed sign-ins: beyond ``CAREFLOW_LOGIN_MAX_FAILURES_PER_IP`` within
``CAREFLOW_LOGIN_WINDOW`` seconds the address gets 429 here, as on the sign-in page.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, current_app, make_response, render_template, request
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from engine import accounts
from engine.errors import ValidationFailed
from engine.surveys import (
    DIMENSIONS,
    SUGGESTION_SUFFIX,
    SurveyLinkError,
    open_survey_link,
    submit_survey_link,
)
from web.auth import client_ip, engine
from web.config import ROOT
from web.forms import build_fields, parse_submission, validate
from web.i18n import lang

log = logging.getLogger("careflow.web")

bp = Blueprint("survey", __name__)

SCHEMA_FILE = ROOT / "forms" / "survey.schema.json"
LINK_STATUS = {"invalid": 404, "expired": 410, "used": 410}


@lru_cache(maxsize=1)
def survey_schema() -> dict[str, Any]:
    """The survey form schema with its ``$ref``s written out (the form renderer reads plain nodes)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    defs = schema.get("$defs") or {}

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return inline({**defs[ref.removeprefix("#/$defs/")], **rest})
            return {k: inline(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def _tz() -> str:
    return current_app.config["BABEL_DEFAULT_TIMEZONE"]


def _page(template: str, status: int = 200, **context) -> Response:
    response = make_response(render_template(template, **context), status)
    response.headers["X-Robots-Tag"] = "noindex, nofollow"  # a personal link: keep it out of search engines
    return response


def _problem(kind: str, title: str, message: str, status: int) -> Response:
    return _page("survey/problem.html", status, kind=kind, title=title, message=message)


def _link_problem(err: SurveyLinkError) -> Response:
    """The page for a link that cannot be used, in the customer's language."""
    titles = {"invalid": _("This link is not valid"), "expired": _("This link has expired"),
              "used": _("This survey was already answered")}
    return _problem(err.reason, titles.get(err.reason, titles["invalid"]),
                    err.messages.get(lang()) or str(err), LINK_STATUS.get(err.reason, 404))


def _rate_limited() -> Response | None:
    """429 when the client's address has too many recent failed attempts (sign-ins and bad links)."""
    cfg = current_app.config
    ip = client_ip()
    _by_key, by_ip = accounts.recent_failures(engine(), f"survey|{ip}", ip,
                                              timedelta(seconds=cfg["CAREFLOW_LOGIN_WINDOW"]))
    if by_ip < cfg["CAREFLOW_LOGIN_MAX_FAILURES_PER_IP"]:
        return None
    minutes = max(1, cfg["CAREFLOW_LOGIN_WINDOW"] // 60)
    response = _problem("limited", _("Too many requests"),
                        _("Too many attempts. Please wait %(minutes)d minutes and try again.", minutes=minutes), 429)
    response.headers["Retry-After"] = str(cfg["CAREFLOW_LOGIN_WINDOW"])
    return response


def _score_errors(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """One clear message for a score that is missing or not 1-5 (whatever the schema check said)."""
    out = dict(errors)
    for dim in DIMENSIONS:
        if dim in out:
            out[dim] = [_("Choose a score from 1 (very dissatisfied) to 5 (very satisfied).")]
    return out


def _render_form(token: str, info: dict, *, values=None, errors: dict[str, list[str]] | None = None,
                 status: int = 200) -> Response:
    schema = survey_schema()
    fields = {f.path: f for f in build_fields(schema, values, errors, raw=values is not None, tz=_tz())}
    questions = [(fields[d], fields[d + SUGGESTION_SUFFIX]) for d in DIMENSIONS]
    return _page("survey/form.html", status, token=token, info=info, schema=schema, questions=questions,
                 comments=fields.get("comments"), has_errors=bool(errors),
                 form_errors=(errors or {}).get("", []))


@bp.route("/survey/<token>", methods=["GET"])
def show(token: str):
    """The survey form of a valid link; otherwise a page saying the link is not valid, expired or used."""
    limited = _rate_limited()
    if limited is not None:
        return limited
    try:
        info = open_survey_link(engine(), token)
    except SurveyLinkError as err:
        if err.reason == "invalid":
            accounts.record_failure(engine(), f"survey|{client_ip()}", client_ip())
        return _link_problem(err)
    return _render_form(token, info)


@bp.route("/survey/<token>", methods=["POST"])
def submit(token: str):
    """Store the answers (once); field errors come back next to the fields with the input kept."""
    limited = _rate_limited()
    if limited is not None:
        return limited
    cf = engine()
    try:
        info = open_survey_link(cf, token)  # say "expired" before asking to fix a field
    except SurveyLinkError as err:
        if err.reason == "invalid":
            accounts.record_failure(cf, f"survey|{client_ip()}", client_ip())
        return _link_problem(err)
    schema = survey_schema()
    data, errors, _positions = parse_submission(schema, request.form, tz=_tz())
    for path, msgs in validate(schema, data).items():
        errors.setdefault(path, msgs)
    if errors:
        return _render_form(token, info, values=request.form, errors=_score_errors(errors), status=400)
    try:
        result = submit_survey_link(cf, token, data)
    except SurveyLinkError as err:  # e.g. answered in another tab a moment ago
        return _link_problem(err)
    except ValidationFailed as err:
        return _render_form(token, info, values=request.form, errors=_score_errors(err.field_errors), status=400)
    return _page("survey/thanks.html", info=info, low_score=result["low_score"])


@bp.errorhandler(CSRFError)  # by its own class: the app's CSRFError handler would win over Exception
def _csrf(err: CSRFError):
    """A post without this session's CSRF token: ask to reload the page."""
    return _problem("invalid", _("This page has expired"),
                    _("The form has expired or was not sent from this site. "
                      "Please reload the page and try again."), 400)


@bp.errorhandler(Exception)
def _error(err: Exception):
    """Errors on survey pages get the customer's layout (no sign-in button), never a traceback."""
    if isinstance(err, HTTPException) and (err.code or 500) < 500:
        return _problem("invalid", _("Error"), _("The request failed."), err.code or 400)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _problem("error", _("Something went wrong"),
                    _("An unexpected error occurred. It has been logged; please try again in a moment."), 500)
