"""Rendering notifications: bilingual templates (zh / en) from the ``careflow_message_templates``
hook, filled in a Jinja sandbox; an unknown topic or a broken template falls back to a
generic rendering of the payload, never an error."""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import jinja2.sandbox

log = logging.getLogger("careflow.notify")

LOCALES = ("zh", "en")
DISPLAY_TZ = ZoneInfo("Asia/Shanghai")

LABELS: dict[str, tuple[str, str]] = {
    "urgent": ("紧急", "urgent"), "important": ("重要", "important"), "general": ("一般", "general"),
    "product_fault": ("产品故障", "product fault"), "usage_question": ("使用咨询", "usage question"),
    "service_complaint": ("服务投诉", "service complaint"), "other": ("其他", "other"),
    "core": ("核心客户", "core"), "basic": ("基础客户", "basic"), "potential": ("潜在客户", "potential"),
    "first_response": ("首次响应", "first response"), "solution": ("解决", "solution"),
    "respond": ("响应", "response"), "plan": ("解决方案", "solution plan"), "resolve": ("解决", "resolution"),
}
"""Codes shown to people: (Chinese, English)."""


def _local_time(value: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An ISO datetime (string or datetime) as Beijing time; anything else unchanged."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.strftime(fmt)
        return value.astimezone(DISPLAY_TZ).strftime(fmt)
    return "" if value is None else str(value)


def _make_env(locale: str) -> jinja2.sandbox.SandboxedEnvironment:
    env = jinja2.sandbox.SandboxedEnvironment(autoescape=False, undefined=jinja2.ChainableUndefined,
                                              trim_blocks=True, lstrip_blocks=True)
    index = 0 if locale == "zh" else 1
    env.filters["local"] = _local_time
    env.filters["label"] = lambda code: LABELS.get(str(code), (code, code))[index] if code is not None else ""
    return env


_ENVS = {loc: _make_env(loc) for loc in LOCALES}


@functools.lru_cache(maxsize=512)
def _compiled(locale: str, source: str) -> jinja2.Template:
    return _ENVS[locale].from_string(source)


def collect_templates(pm: Any) -> dict[str, dict]:
    """Every template the plugins know; on a name clash the first one called (a plugin
    before the shipped defaults) wins."""
    merged: dict[str, dict] = {}
    for contributed in pm.hook.careflow_message_templates():
        for name, template in (contributed or {}).items():
            if isinstance(template, dict):
                merged.setdefault(name, template)
    return merged


def render(templates: dict[str, dict], topic: str, payload: dict | None, extra: dict | None = None) -> dict:
    """``{"subject": {"zh", "en"}, "body": {"zh", "en"}, "template": name or None}`` for a message."""
    payload = payload if isinstance(payload, dict) else {"value": payload}
    context = {**payload, **(extra or {}), "topic": topic, "payload": payload}
    template = templates.get(topic)
    out: dict[str, Any] = {"subject": {}, "body": {}, "template": topic if template else None}
    for locale in LOCALES:
        part = (template or {}).get(locale) or (template or {}).get("en" if locale == "zh" else "zh")
        rendered = None
        if isinstance(part, dict):
            try:
                rendered = (_compiled(locale, str(part.get("subject", ""))).render(context).strip(),
                            _compiled(locale, str(part.get("body", ""))).render(context).strip())
            except (jinja2.TemplateError, TypeError, ValueError) as err:  # a broken template: say so, keep going
                log.warning("template %r (%s) could not be rendered: %s; using the generic text", topic, locale, err)
                out["template_error"] = f"{type(err).__name__}: {err}"
        if rendered is None:
            rendered = generic(topic, payload, locale)
        out["subject"][locale], out["body"][locale] = rendered
    return out


def generic(topic: str, payload: dict, locale: str) -> tuple[str, str]:
    """Subject and body for a topic without a template: the topic and the payload's fields."""
    lines = []
    for key, value in payload.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, default=str)
        lines.append(f"{key}: {value}")
    if locale == "zh":
        return f"Careflow 通知：{topic}", "\n".join(lines) or "（无内容）"
    return f"Careflow notification: {topic}", "\n".join(lines) or "(no details)"


def text_for(message: dict, locale: str | None) -> tuple[str, str]:
    """Subject and body for one reader: their language if known, else Chinese and English together."""
    subject, body = message.get("subject") or {}, message.get("body") or {}
    lang = None
    if locale:
        lang = "en" if locale.lower().startswith("en") else "zh" if locale.lower().startswith("zh") else None
    if lang:
        return subject.get(lang, ""), body.get(lang, "")
    zh_s, en_s = subject.get("zh", ""), subject.get("en", "")
    both_subject = zh_s if zh_s == en_s else f"{zh_s} / {en_s}"
    return both_subject, f"{body.get('zh', '')}\n\n——\n\n{body.get('en', '')}"
