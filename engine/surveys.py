"""Satisfaction surveys (客户满意度调查表): four dimensions scored 1-5, each with an optional
suggestion, taken by an agent on the phone or by the customer through a link.

A survey link is ``/survey/<token>`` with ``token = <id>.<expiry>.<signature>``: the id is
128 random bits (nothing to guess or enumerate), the signature is an HMAC-SHA256 over id
and expiry with a key derived from the deployment secret (``CAREFLOW_SECRET_KEY``, else
``$CAREFLOW_HOME/secret_key``, created on first use — the same secret the web UI uses).
A tampered token fails the signature check before the database is asked. The link row
records its expiry and whether it was used; using it is a conditional update
(``used_at IS NULL AND expires_at > now``) in the same transaction that stores the
answers, so a link works exactly once even when submitted twice at the same moment.

An overall score of 2 or less starts a ``satisfaction_followup`` instance for the
supervisor (of the customer's account manager), in the same transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.config import deployment_secret
from engine.customers import Customer, audit, mask_name, record_contact, resolve_customer
from engine.errors import CareflowError, Conflict, NotFound, Problem, ValidationFailed
from engine.models import Base, BigId, User, UTCDateTime
from engine.sla_clock import Budget, BudgetError

if TYPE_CHECKING:
    from engine.runtime import Careflow, StepResult

FOLLOWUP_PROCESS = "satisfaction_followup"
LOW_SCORE_MAX = 2
DEFAULT_EXPIRY = "P7D"
DIMENSIONS: dict[str, tuple[str, str]] = {
    "response_speed": ("Response speed", "响应速度"),
    "resolution_efficiency": ("Resolution efficiency", "解决效率"),
    "engineer_expertise": ("Engineer expertise", "工程师专业度"),
    "overall": ("Overall satisfaction", "整体满意度"),
}
SUGGESTION_SUFFIX = "_suggestion"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")


# ----------------------------------------------------------------------------------- tables


class SurveyLink(Base):
    """A signed, expiring, single-use survey link sent to a customer."""

    __tablename__ = "survey_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # 128 random bits, URL-safe
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    ticket_number: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(200))
    response_id: Mapped[int | None] = mapped_column(BigInteger)


class SurveyResponse(Base):
    """One answered survey (by link or by phone)."""

    __tablename__ = "survey_responses"
    __table_args__ = (Index("ix_survey_responses_customer_at", "customer_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    ticket_number: Mapped[str | None] = mapped_column(String(40), index=True)
    link_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    channel: Mapped[str] = mapped_column(String(10))  # link | phone
    taken_by: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    response_speed: Mapped[int] = mapped_column(Integer)
    resolution_efficiency: Mapped[int] = mapped_column(Integer)
    engineer_expertise: Mapped[int] = mapped_column(Integer)
    overall: Mapped[int] = mapped_column(Integer)
    suggestions: Mapped[dict] = mapped_column(JSON, default=dict)
    followup_instance_id: Mapped[int | None] = mapped_column(BigInteger)


# ----------------------------------------------------------------------------------- errors


class SurveyLinkError(CareflowError):
    """A survey link cannot be used; ``reason`` is ``invalid``, ``expired`` or ``used``."""

    reason = "invalid"

    def __init__(self, en: str, zh: str):
        super().__init__(en)
        self.messages = {"en": en, "zh": zh}


class SurveyLinkInvalid(SurveyLinkError, NotFound):
    """Unknown, malformed or tampered link."""

    reason = "invalid"


class SurveyLinkExpired(SurveyLinkError, Conflict):
    """The link's time is up."""

    reason = "expired"


class SurveyLinkUsed(SurveyLinkError, Conflict):
    """The survey behind the link was already answered."""

    reason = "used"


def _invalid() -> SurveyLinkInvalid:
    return SurveyLinkInvalid("This survey link is not valid. Please check that you opened the whole link, "
                             "or ask us for a new one.",
                             "此调查链接无效。请确认链接完整，或联系我们获取新的链接。")


def _expired(at: datetime) -> SurveyLinkExpired:
    local = at.astimezone(_tz()).strftime("%Y-%m-%d %H:%M")
    return SurveyLinkExpired(f"This survey link expired on {local} (China time). Please ask us for a new one.",
                             f"此调查链接已于 {local}（北京时间）过期，请联系我们获取新的链接。")


def _used(at: datetime) -> SurveyLinkUsed:
    local = at.astimezone(_tz()).strftime("%Y-%m-%d %H:%M")
    return SurveyLinkUsed(f"This survey was already answered on {local} (China time). Thank you!",
                          f"此调查已于 {local}（北京时间）提交，感谢您的反馈！")


def _tz():
    from zoneinfo import ZoneInfo

    return ZoneInfo("Asia/Shanghai")


# ---------------------------------------------------------------------------------- signing


def _signing_key(engine: Careflow) -> bytes:
    secret = deployment_secret(engine.settings.home)
    return hmac.new(secret.encode(), b"careflow:survey-link:v1", hashlib.sha256).digest()


def _signature(key: bytes, link_id: str, expiry: int) -> str:
    digest = hmac.new(key, f"{link_id}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_token(engine: Careflow, link_id: str, expires_at: datetime) -> str:
    """The signed token of a link."""
    expiry = int(expires_at.timestamp())
    return f"{link_id}.{expiry}.{_signature(_signing_key(engine), link_id, expiry)}"


def _verify(engine: Careflow, token: str) -> str:
    """The link id of a well-formed, correctly signed token; ``SurveyLinkInvalid`` otherwise."""
    parts = str(token or "").strip().split(".")
    if len(parts) != 3 or not _ID_RE.match(parts[0]) or not parts[1].isdigit():
        raise _invalid()
    link_id, expiry, signature = parts
    if not hmac.compare_digest(signature, _signature(_signing_key(engine), link_id, int(expiry))):
        raise _invalid()
    return link_id


def survey_url(token: str) -> str:
    """The public URL of a survey link (base from ``CAREFLOW_BASE_URL``, default http://localhost:5000)."""
    base = os.environ.get("CAREFLOW_BASE_URL", "http://localhost:5000").rstrip("/")
    return f"{base}/survey/{token}"


def parse_expiry(text: str) -> timedelta:
    """A link lifetime from an ISO 8601 duration such as ``P7D`` or ``PT48H``."""
    try:
        budget = Budget.parse(text)
    except BudgetError as err:
        raise ValidationFailed([Problem(str(err), field="expires_in", hint="e.g. P7D or PT48H")]) from None
    if not budget.is_wall_clock or budget.wall is None:
        raise ValidationFailed([Problem("give a calendar duration such as P7D, not working days or hours",
                                        field="expires_in")])
    if budget.wall > timedelta(days=366):
        raise ValidationFailed([Problem("a survey link may live at most one year", field="expires_in")])
    return budget.wall


# ----------------------------------------------------------------------------------- answers


def validate_answers(answers: Any) -> dict[str, Any]:
    """Check survey answers: the four scores 1-5 are required, suggestions optional (<= 1000 chars).

    Takes ``{"response_speed": 4, ..., "overall": 5, "overall_suggestion": "..."}`` (scores
    may be digit strings) and returns ``{"scores": {...}, "suggestions": {...}}``.
    """
    if not isinstance(answers, dict):
        raise ValidationFailed([Problem("answers must be an object of scores and suggestions")])
    problems: list[Problem] = []
    scores: dict[str, int] = {}
    suggestions: dict[str, str] = {}
    allowed = set(DIMENSIONS) | {d + SUGGESTION_SUFFIX for d in DIMENSIONS} | {"comments"}
    for key in answers:
        if key not in allowed:
            problems.append(Problem("unknown field", field=key, hint=f"known fields: {', '.join(sorted(allowed))}"))
    for dim in DIMENSIONS:
        value = answers.get(dim)
        if value is None or value == "":
            problems.append(Problem("is required", field=dim))
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            problems.append(Problem("must be a score from 1 (very dissatisfied) to 5 (very satisfied)", field=dim))
            continue
        scores[dim] = value
    for key in [d + SUGGESTION_SUFFIX for d in DIMENSIONS] + ["comments"]:
        value = answers.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            problems.append(Problem("must be text", field=key))
        elif len(value) > 1000:
            problems.append(Problem("is longer than 1000 characters", field=key))
        else:
            suggestions[key.removesuffix(SUGGESTION_SUFFIX)] = value.strip()
    if problems:
        raise ValidationFailed(problems)
    return {"scores": scores, "suggestions": suggestions}


# --------------------------------------------------------------------------------------- API


def create_survey_link(engine: Careflow, customer_id: Any, *, ticket_number: str | None = None,
                       expires_in: str = DEFAULT_EXPIRY, actor: str = "system") -> dict[str, Any]:
    """Create a survey link for a customer (optionally about a ticket); returns token, URL, expiry."""
    lifetime = parse_expiry(expires_in)
    now = engine.now()
    with engine.Session() as session, session.begin():
        c = resolve_customer(session, customer_id)
        link = SurveyLink(id=secrets.token_urlsafe(16), customer_id=c.id, ticket_number=ticket_number or None,
                          created_at=now, expires_at=now + lifetime, created_by=actor)
        session.add(link)
        session.flush()
        audit(session, "survey_link_created", actor=actor, at=now,
              details={"customer_id": c.id, "link_id": link.id, "ticket_number": link.ticket_number,
                       "expires_at": link.expires_at.isoformat()})
        token = make_token(engine, link.id, link.expires_at)
        return {"link_id": link.id, "token": token, "url": survey_url(token), "customer_id": c.id,
                "ticket_number": link.ticket_number, "expires_at": link.expires_at.isoformat()}


def _check_link(session: Session, link_id: str, now: datetime) -> SurveyLink:
    link = session.get(SurveyLink, link_id)
    if link is None:
        raise _invalid()
    if link.used_at is not None:
        raise _used(link.used_at)
    if now >= link.expires_at:
        raise _expired(link.expires_at)
    return link


def open_survey_link(engine: Careflow, token: str) -> dict[str, Any]:
    """What the survey page shows for a valid link; raises ``SurveyLinkInvalid/Expired/Used`` otherwise.

    Personal data stays out: an individual's name is masked.
    """
    link_id = _verify(engine, token)
    with engine.Session() as session:
        link = _check_link(session, link_id, engine.now())
        c = resolve_customer(session, link.customer_id)
        name = mask_name(c.name) if c.customer_type == "individual" else c.name
        return {"customer_name": name, "ticket_number": link.ticket_number,
                "expires_at": link.expires_at.isoformat(), "dimensions": DIMENSIONS}


def submit_survey_link(engine: Careflow, token: str, answers: Any) -> dict[str, Any]:
    """Store a customer's answers through their link: once, before expiry. See ``record_survey``."""
    link_id = _verify(engine, token)
    clean = validate_answers(answers)
    return _store(engine, clean, link_id=link_id, customer_id=None, ticket_number=None, taken_by="customer",
                  channel="link")


def record_phone_survey(engine: Careflow, customer_id: Any, answers: Any, *, taken_by: str,
                        ticket_number: str | None = None) -> dict[str, Any]:
    """Store answers an agent took on the phone. See ``_store`` for the result."""
    clean = validate_answers(answers)
    return _store(engine, clean, link_id=None, customer_id=customer_id, ticket_number=ticket_number,
                  taken_by=taken_by, channel="phone")


def _store(engine: Careflow, clean: dict, *, link_id: str | None, customer_id: Any, ticket_number: str | None,
           taken_by: str, channel: str) -> dict[str, Any]:
    """One transaction: consume the link, store the response, record the contact, start a follow-up if low.

    Returns ``{"response_id", "customer_id", "overall", "low_score", "followup_instance_id"}``.
    """
    now = engine.now()
    result: StepResult | None = None
    missing_process = False
    with engine.Session() as session, session.begin():
        if link_id is not None:
            link = _check_link(session, link_id, now)
            used = session.execute(update(SurveyLink).where(SurveyLink.id == link_id, SurveyLink.used_at.is_(None),
                                                            SurveyLink.expires_at > now).values(used_at=now))
            if used.rowcount != 1:  # someone else used it between our read and our update
                with engine.Session() as again:
                    _check_link(again, link_id, now)
                raise _used(now)
            customer_id, ticket_number = link.customer_id, link.ticket_number
        c = resolve_customer(session, customer_id)
        scores = clean["scores"]
        resp = SurveyResponse(customer_id=c.id, ticket_number=ticket_number, link_id=link_id, channel=channel,
                              taken_by=taken_by, at=now, suggestions=clean["suggestions"], **scores)
        session.add(resp)
        session.flush()
        if link_id is not None:
            session.execute(update(SurveyLink).where(SurveyLink.id == link_id).values(response_id=resp.id))
        low = scores["overall"] <= LOW_SCORE_MAX
        summary = (f"Satisfaction survey ({'link' if channel == 'link' else 'phone'}"
                   f"{', ticket ' + ticket_number if ticket_number else ''}): "
                   + ", ".join(f"{DIMENSIONS[d][0].lower()} {scores[d]}/5" for d in DIMENSIONS))
        if low:
            summary += " — low score, supervisor follow-up"
        record_contact(session, c.id, "survey", summary, by=taken_by, at=now,
                       details={"survey_id": resp.id, "scores": scores, "suggestions": clean["suggestions"]})
        audit(session, "survey_answered", actor=taken_by, at=now,
              details={"survey_id": resp.id, "customer_id": c.id, "channel": channel, "scores": scores,
                       "ticket_number": ticket_number})
        if low:
            try:
                engine.latest_version(session, FOLLOWUP_PROCESS)
            except NotFound:
                missing_process = True
            else:
                result = engine.start(FOLLOWUP_PROCESS, followup_data(session, c, resp), actor="system",
                                      session=session)
                resp.followup_instance_id = result.instance_id
        out = {"response_id": resp.id, "customer_id": c.id, "overall": scores["overall"], "low_score": low,
               "followup_instance_id": resp.followup_instance_id}
    if result is not None:
        engine._after_commit(result)
    if missing_process:
        engine.record_incident("survey", FOLLOWUP_PROCESS,
                               f"survey #{out['response_id']} scored overall {out['overall']}/5 but process "
                               f"'{FOLLOWUP_PROCESS}' is not deployed: follow up with customer #{out['customer_id']} "
                               "by hand and deploy workflows/satisfaction_followup.bpmn")
    return out


def followup_data(session: Session, c: Customer, resp: SurveyResponse) -> dict[str, Any]:
    """Start data of a ``satisfaction_followup`` instance: scores, suggestions and who should call."""
    supervisor = None
    if c.account_manager:
        supervisor = session.scalar(select(User.supervisor).where(User.username == c.account_manager))
    return {
        "customer_id": c.id, "customer_name": c.name, "tier": c.tier, "survey_id": resp.id,
        "ticket_number": resp.ticket_number, "channel": resp.channel, "overall": resp.overall,
        "scores": {d: getattr(resp, d) for d in DIMENSIONS}, "suggestions": dict(resp.suggestions or {}),
        "account_manager": c.account_manager, "supervisor": supervisor,
    }


def last_survey_at(session: Session, customer_id: int) -> datetime | None:
    """When the customer last answered a survey, or None."""
    return session.scalar(select(func.max(SurveyResponse.at)).where(SurveyResponse.customer_id == customer_id))


def satisfaction_rate(session: Session, since: datetime, until: datetime) -> dict[str, Any]:
    """Share of overall scores >= 4 among surveys answered in ``[since, until)`` (goal: >= 90 %)."""
    total = session.scalar(select(func.count()).where(SurveyResponse.at >= since, SurveyResponse.at < until)) or 0
    good = session.scalar(select(func.count()).where(SurveyResponse.at >= since, SurveyResponse.at < until,
                                                     SurveyResponse.overall >= 4)) or 0
    return {"surveys": total, "satisfied": good, "rate": (good / total) if total else None, "goal": 0.9}
