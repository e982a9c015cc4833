"""Default SLA policy: the after-sales handbook's table and the 1-24-48 complaint rule."""

from __future__ import annotations

from plugins.hookspecs import hookimpl

TICKET_SLA = {
    "urgent": {"first_response": "PT2H", "solution": "PT4H"},
    "important": {"first_response": "PT4H", "solution": "PT24H"},
    "general": {"first_response": "PT24H", "solution": "3WD"},
}
COMPLAINT_SLA = {"respond": "PT1H", "plan": "PT24H", "resolve": "PT48H"}


@hookimpl(trylast=True)
def careflow_sla_policy(kind: str, priority: str | None, ticket_type: str | None, tier: str | None) -> dict | None:
    """Default SLA table of the after-sales handbook, and the 1-24-48 complaint rule."""
    if kind == "complaint" or ticket_type == "service_complaint":
        return {"policy": "default-complaint-1-24-48", "clocks": dict(COMPLAINT_SLA)}
    return {"policy": "default", "clocks": dict(TICKET_SLA.get(priority or "general", TICKET_SLA["general"]))}
