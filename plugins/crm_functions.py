"""CRM host functions for BPMN scripts: customers, contacts, revisits and complaints.

Registered by ``plugins.manager`` as an object bound to the plugin manager, because the
functions need the engine's hooks (the tier rule, the SLA policy). Every function runs
inside a step and writes through ``current_step().session``, so its writes commit or roll
back with the step. Functions available in scripts and conditions:

- ``tier_of(customer)`` is the shipped one (``plugins.defaults.functions``); ``customer_info(id)["tier"]`` for an id
- ``customer_info(customer_id)`` -> ``{id, name, customer_type, tier, account_manager, status}`` (no personal data)
- ``customer_contact(customer_id)`` -> ``{name, contact_person, phone, email}``, for ``notify(...)`` payloads only
- ``record_contact(customer_id, kind, summary)`` -> contact id (kind: revisit, ticket, complaint, survey, note, care)
- ``start_revisit(customer_id, reason)`` -> revisit id; the scheduler starts its ``customer_revisit`` instance
- ``complete_revisit(revisit_id, record)`` -> closes a revisit with its record (``customer_revisit`` uses it)
- ``register_complaint(data)`` -> ``{"number", "respond_due", "plan_due", "resolve_due", ...}``
- ``update_complaint(number, status=..., **facts)`` -> the complaint as a dict
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from plugins.hookspecs import hookimpl


def _session_and_step():
    from engine.step import current_step

    step = current_step()
    return step.session, step


class CrmFunctions:
    """The CRM plugin: host functions bound to one plugin manager."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm

    # -- host functions ----------------------------------------------------------------------
    def customer_info(self, customer_id: Any) -> dict:
        """Non-personal facts of a customer, for gateways and task data."""
        from engine.customers import resolve_customer

        session, _ = _session_and_step()
        c = resolve_customer(session, customer_id)
        return {"id": c.id, "name": c.name, "customer_type": c.customer_type, "tier": c.tier,
                "account_manager": c.account_manager, "status": c.status}

    def customer_contact(self, customer_id: Any) -> dict:
        """Addresses of a customer for a notification payload (do not store them in task data)."""
        from engine.customers import resolve_customer

        session, _ = _session_and_step()
        c = resolve_customer(session, customer_id)
        return {"name": c.name, "contact_person": c.contact_person, "phone": c.phone, "email": c.email}

    def record_contact(self, customer_id: Any, kind: str, summary: str) -> int:
        """Record a contact with a customer in the step's transaction; returns its id."""
        from engine.customers import record_contact

        session, _ = _session_and_step()
        return record_contact(session, customer_id, kind, summary).id

    def start_revisit(self, customer_id: Any, reason: str) -> int:
        """Ask for a revisit of a customer; the scheduler starts it after this step commits."""
        from engine.revisits import request_revisit

        session, _ = _session_and_step()
        return request_revisit(session, customer_id, reason)

    def complete_revisit(self, revisit_id: Any, record: dict | None = None) -> int:
        """Close a revisit with its record (contact history, next due date); returns the contact id."""
        from engine.revisits import complete_revisit

        session, step = _session_and_step()
        return complete_revisit(session, revisit_id, record, actor=step.actor, instance_id=step.instance_id)

    def register_complaint(self, data: dict) -> dict:
        """Register a complaint and open its 1-24-48 clocks; returns number and deadlines (ISO 8601)."""
        from engine.complaints import register_complaint_in

        session, _ = _session_and_step()
        return register_complaint_in(session, data, pm=self.pm)

    def update_complaint(self, number: str, status: str | None = None, **facts: Any) -> dict:
        """Record a complaint's progress (status and facts); milestones stop their SLA clocks."""
        from engine.complaints import update_complaint_in

        session, _ = _session_and_step()
        return update_complaint_in(session, number, status=status, **facts)

    # -- hooks -------------------------------------------------------------------------------
    @hookimpl(trylast=True)
    def careflow_script_functions(self) -> dict[str, Callable[..., Any]]:
        """The CRM host functions."""
        return {name: getattr(self, name) for name in (
            "customer_info", "customer_contact", "record_contact", "start_revisit",
            "complete_revisit", "register_complaint", "update_complaint")}

    @hookimpl(trylast=True)
    def careflow_message_templates(self) -> dict[str, dict]:
        """Bilingual templates of the CRM notifications (greetings, automated revisit message)."""
        return TEMPLATES


TEMPLATES: dict[str, dict] = {
    "care_birthday": {
        "zh": {"subject": "生日快乐", "body": "尊敬的{{ contact_person or customer_name }}：值此生日之际，祝您生日快乐、"
               "身体健康、万事如意！{% if loyal %}感谢您一直以来的信任，我们为您准备了一份生日礼券。{% endif %}"},
        "en": {"subject": "Happy birthday", "body": "Dear {{ contact_person or customer_name }}, happy birthday and "
               "all the best!{% if loyal %} Thank you for your trust: a birthday voucher is on its way.{% endif %}"},
    },
    "care_anniversary": {
        "zh": {"subject": "感谢合作 {{ years }} 周年", "body": "尊敬的{{ customer_name }}：今天是我们签约合作 {{ years }} "
               "周年，感谢您一直以来的信任与支持，期待继续为您服务！"},
        "en": {"subject": "{{ years }} years together", "body": "Dear {{ customer_name }}, today marks {{ years }} "
               "year(s) since we started working together. Thank you for your trust!"},
    },
    "care_holiday": {
        "zh": {"subject": "{{ holiday_name.zh }}快乐", "body": "尊敬的{{ contact_person or customer_name }}：值此"
               "{{ holiday_name.zh }}之际，祝您节日快乐、阖家幸福！"},
        "en": {"subject": "Happy {{ holiday_name.en }}", "body": "Dear {{ contact_person or customer_name }}, "
               "best wishes for {{ holiday_name.en }} to you and your family!"},
    },
    "revisit_message": {
        "zh": {"subject": "客户回访", "body": "尊敬的{{ contact_person or customer_name }}：感谢您选择我们！如在使用中"
               "有任何问题或建议，欢迎随时联系您的客户经理，我们将在 48 小时内答复。"},
        "en": {"subject": "How are we doing?", "body": "Dear {{ contact_person or customer_name }}, thank you for "
               "choosing us! If you have any question or suggestion, contact your account manager: we answer "
               "within 48 hours."},
    },
}
