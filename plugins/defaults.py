"""Default behaviour, shipped as a plugin marked ``trylast`` so any plugin overrides it."""

from __future__ import annotations

from plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def careflow_assign_task(task: dict, data: dict) -> dict | None:
    """Default assignment: the task goes to the group named like its lane."""
    return {"group": task.get("lane"), "assignee": None}


SPEND_TIERS = (("core", 100_000), ("important", 30_000), ("basic", 10_000))


@hookimpl(trylast=True)
def careflow_customer_tier(customer: dict) -> str | None:
    """Default tiering by annual spend (CNY): core >= 100k, important >= 30k, basic >= 10k, else potential."""
    spend = float(customer.get("annual_spend") or 0)
    for tier, floor in SPEND_TIERS:
        if spend >= floor:
            return tier
    return "potential"


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


@hookimpl(trylast=True)
def careflow_escalation_ladder(clock: dict) -> list[dict]:
    """Default ladder: remind the owner at 50 %, the supervisor at 100 %, the manager at 150 %."""
    return [
        {"name": "remind_owner", "at_fraction": 0.5, "notify": "owner", "repeat_every": None},
        {"name": "alert_supervisor", "at_fraction": 1.0, "notify": "supervisor", "repeat_every": None},
        {"name": "alert_manager", "at_fraction": 1.5, "notify": "manager", "repeat_every": None},
    ]
