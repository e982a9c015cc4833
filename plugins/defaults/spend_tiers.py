"""Default tier rule, by annual spend (the handbook's first scheme): core / important / basic / potential."""

from __future__ import annotations

from plugins.hookspecs import hookimpl

SPEND_TIERS = (("core", 100_000), ("important", 30_000), ("basic", 10_000))
"""(tier, lowest annual spend in CNY), highest first; below the last floor: ``potential``."""


def spend_tier(customer: dict) -> str:
    """The tier of a customer by annual spend; below 10,000 CNY (or no purchase yet): potential."""
    try:
        spend = float(customer.get("annual_spend") or 0)
    except (TypeError, ValueError):
        spend = 0.0
    for tier, floor in SPEND_TIERS:
        if spend >= floor:
            return tier
    return "potential"


@hookimpl(trylast=True)
def careflow_customer_tier(customer: dict) -> str | None:
    """Default tiering by annual spend (CNY): core >= 100k, important >= 30k, basic >= 10k, else potential."""
    if not isinstance(customer, dict):
        return None
    return spend_tier(customer)
