"""Languages: 简体中文 (default) and English, chosen by the user's setting, else the
language picked on the sign-in page, else the browser's Accept-Language.

Also the template helpers that pick the right language from bilingual data: JSON Schema
``title`` / ``x-title-zh``, and BPMN names written ``中文 / English``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, request, session
from flask_babel import Babel, format_datetime, get_locale
from flask_babel import gettext as _

LANGUAGES = ("zh", "en")
babel = Babel()


def select_locale() -> str:
    """The language of this request."""
    principal = g.get("principal")
    if principal is not None and principal.account.locale in LANGUAGES:
        return principal.account.locale
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES) or "zh"


def lang() -> str:
    """``zh`` or ``en`` for the current request."""
    loc = get_locale()
    return loc.language if loc is not None and loc.language in LANGUAGES else "zh"


def schema_title(node: dict | None, fallback: str = "") -> str:
    """A JSON Schema node's title in the current language (``x-title-zh`` for Chinese)."""
    if not node:
        return fallback
    if lang() == "zh" and node.get("x-title-zh"):
        return str(node["x-title-zh"])
    return str(node.get("title") or node.get("x-title-zh") or fallback)


def schema_description(node: dict | None) -> str:
    """A JSON Schema node's description in the current language (``x-description-zh``)."""
    if not node:
        return ""
    if lang() == "zh" and node.get("x-description-zh"):
        return str(node["x-description-zh"])
    return str(node.get("description") or "")


def bilingual(name: str | None, fallback: str = "") -> str:
    """A BPMN name ``中文 / English`` in the current language (names without `` / `` as they are)."""
    if not name:
        return fallback
    if " / " in name:
        zh, _sep, en = name.partition(" / ")
        return zh.strip() if lang() == "zh" else en.strip()
    return name


def when(value: datetime | str | None, fmt: str = "medium") -> str:
    """A timestamp in the user's time zone and language ('' for none)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return format_datetime(value, "yyyy-MM-dd HH:mm" if fmt == "short" else "yyyy-MM-dd HH:mm:ss")


ROLE_LABELS = {
    "agent": lambda: _("Agent"),
    "supervisor": lambda: _("Supervisor"),
    "process_owner": lambda: _("Process owner"),
    "auditor": lambda: _("Auditor"),
    "admin": lambda: _("Administrator"),
}

PRIORITY_LABELS = {
    "urgent": lambda: _("Urgent"),
    "important": lambda: _("Important"),
    "general": lambda: _("General"),
}

STATUS_LABELS = {
    "ready": lambda: _("Open"),
    "completed": lambda: _("Completed"),
    "cancelled": lambda: _("Cancelled"),
    "running": lambda: _("Running"),
    "failed": lambda: _("Failed"),
}

GROUP_LABELS = {
    "customer_service": lambda: _("Customer service"),
    "technical_support": lambda: _("Technical support"),
    "supervisor": lambda: _("Supervisors"),
    "account_manager": lambda: _("Account managers"),
    "sales": lambda: _("Sales"),
}


def label(kind: str, value: Any) -> str:
    """Translated label of a role, priority, status or group key (the key itself if unknown)."""
    table = {"role": ROLE_LABELS, "priority": PRIORITY_LABELS, "status": STATUS_LABELS,
             "group": GROUP_LABELS}.get(kind, {})
    fn = table.get(value)
    return fn() if fn else ("" if value is None else str(value))


def init_app(app: Flask) -> None:
    """Install Flask-Babel and the template helpers."""
    babel.init_app(app, locale_selector=select_locale)
    app.jinja_env.globals.update(schema_title=schema_title, schema_description=schema_description,
                                 bilingual=bilingual, label=label, lang=lang)
    app.jinja_env.filters["when"] = when
