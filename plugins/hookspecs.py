"""Hook specifications: the one place that says what a Careflow plugin can implement.

Call semantics are declared on each spec (``firstresult=True``: the first non-None
result wins; otherwise every implementation is called and the results collected) and
repeated in its docstring. Implementations are called in pluggy's order: ``tryfirst``
ones, then the others (the last registered first), then ``trylast`` ones — the shipped
defaults are all ``trylast``, so any installed plugin is asked before them.

An implementation may accept any subset of a hook's arguments. ``docs/plugins.md``
documents every hook (a test keeps it in step with the signatures below).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("careflow")
hookimpl = pluggy.HookimplMarker("careflow")


@hookspec
def careflow_script_functions() -> dict[str, Callable[..., Any]]:
    """Host functions exposed to BPMN scripts and gateway conditions.

    Collected: every plugin returns a dict ``{name: callable}``; all are merged (a later
    registered plugin cannot silently replace an earlier name: the first wins).
    Called once when the engine builds its script engine.
    """


@hookspec(firstresult=True)
def careflow_assign_task(task: dict, data: dict) -> dict | None:
    """Who gets a human task that just became ready.

    First result wins. ``task`` has ``process_id``, ``name``, ``title``, ``lane``,
    ``instance_id``; ``data`` is the task's data. Return ``{"group": ..., "assignee": ...}``
    (either may be None), or None to let the next plugin decide. Default: group = lane.
    """


@hookspec
def careflow_audit_event(event: dict) -> None:
    """Observe an audit row after its step committed (for integrations).

    Collected: every implementation is called for every row, after commit; an exception
    is recorded as an incident and never affects the step or other observers.
    """


@hookspec(firstresult=True)
def careflow_customer_tier(customer: dict) -> str | None:
    """The tier of a customer.

    First result wins. ``customer`` is the customer record (``annual_spend`` in CNY,
    ``has_inquiries``, ``strategic_value``...). Default: the annual-spend scheme
    (core / important / basic / potential); the shipped A/B/C plugin answers by
    strategic value when the configuration selects it.
    """


@hookspec(firstresult=True)
def careflow_sla_policy(kind: str, priority: str | None, ticket_type: str | None, tier: str | None) -> dict | None:
    """The SLA budgets for a ticket or complaint.

    First result wins. ``kind`` is ``ticket`` or ``complaint``. Return
    ``{"policy": name, "clocks": {clock_name: budget}}`` where a budget is an ISO 8601
    duration (wall clock, e.g. ``"PT4H"``) or ``"<n>WD"`` (working days) /
    ``"<n>BH"`` (business hours). Default: the domain table — urgent 2 h / 4 h,
    important 4 h / 24 h, general 24 h / 3WD (clocks ``first_response`` and
    ``solution``); complaints 1 h / 24 h / 48 h (clocks ``respond``, ``plan``, ``resolve``).
    """


@hookspec
def careflow_escalation_ladder(clock: dict) -> list[dict]:
    """Rungs of escalation for an overdue (or nearly overdue) SLA clock.

    Collected: every plugin returns a list of rungs; all rungs are used, each fires at
    most once per clock. A rung is ``{"name": str, "at_fraction": float,
    "notify": "owner" | "supervisor" | "manager" | username, "repeat_every": ISO
    duration or None}``. Default: owner at 0.5, supervisor at 1.0, manager at 1.5.
    """


@hookspec
def careflow_notification_channels() -> list:
    """Notification channels this plugin provides.

    Collected: each plugin returns a list of channel objects. A channel has a ``name``
    (``str``) and a ``send(message: dict) -> None`` method that raises on failure
    (``plugins.channels.PermanentDeliveryError`` for failures a retry cannot fix); it
    may have ``accepts(message: dict) -> bool`` (default: accepts everything) and a
    ``timeout`` in seconds. When two channels share a name the first one called wins,
    so a plugin can replace a shipped channel. Called by the delivery worker, never
    inside a step; ``message`` carries ``idempotency_key``, ``topic``, ``recipient``,
    ``to`` (resolved addresses), ``payload``, ``subject`` and ``body`` (``{"zh", "en"}``).
    """


@hookspec(firstresult=True)
def careflow_resolve_recipient(careflow: Any, recipient: str | None, message: dict) -> list[dict] | None:
    """The addresses behind an outbox message's recipient.

    First result wins. ``recipient`` is what ``notify(..., to=...)`` named: ``customer``,
    ``owner``, ``supervisor``, ``manager``, a group, a username or an e-mail address;
    ``message`` is the outbox message (``topic``, ``payload``, ``instance_id``...);
    ``careflow`` is the engine (for database look-ups). Return a list of
    ``{"name", "email", "phone", "username", "locale"}`` dicts (keys optional; an
    empty list means "nobody"), or None to let the next plugin decide. Called by the
    delivery worker before a message is sent.
    """


@hookspec
def careflow_message_templates() -> dict[str, dict]:
    """Bilingual message templates, by template (outbox topic) name.

    Collected: each plugin returns ``{name: {"zh": {"subject": ..., "body": ...},
    "en": {...}}}``; fields are Jinja expressions over the message payload
    (``{{ number }}``), rendered in a sandbox. When two plugins define a name the first
    one called wins, so an installed plugin replaces a shipped template. A topic no
    template knows is rendered generically (never an error).
    """
