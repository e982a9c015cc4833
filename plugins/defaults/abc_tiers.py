"""The handbook's second tier scheme, by strategic value: A (strategic, dedicated owner),
B (growth potential), C (regular). Active when ``CAREFLOW_TIER_SCHEME=abc``."""

from __future__ import annotations

from plugins.hookspecs import hookimpl

ABC_TIERS = ("A", "B", "C")
_WORDS = {
    "a": "A", "strategic": "A", "战略": "A", "战略客户": "A",
    "b": "B", "growth": "B", "potential": "B", "成长": "B", "潜力": "B",
    "c": "C", "regular": "C", "普通": "C",
}


def abc_tier(customer: dict) -> str:
    """A, B or C from ``strategic_value`` (a letter, or strategic / growth / regular); C otherwise."""
    value = str(customer.get("strategic_value") or "").strip()
    return _WORDS.get(value.lower(), _WORDS.get(value, "C"))


@hookimpl(trylast=True)
def careflow_customer_tier(customer: dict) -> str | None:
    """A/B/C tiering by the customer's ``strategic_value`` (unset: C, a regular customer)."""
    if not isinstance(customer, dict):
        return None
    return abc_tier(customer)
