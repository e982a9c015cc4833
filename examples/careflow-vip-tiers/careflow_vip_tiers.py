"""Example Careflow plugin: VIP customers get the top tier whatever they spend.

A customer is a VIP when its record says ``"vip": true`` or when its ``customer_id`` or
``name`` is listed in ``CAREFLOW_VIP_CUSTOMERS`` (comma separated). VIPs get ``core``
(or ``A`` when ``CAREFLOW_TIER_SCHEME=abc``); for everyone else this plugin returns None,
so the configured tier rule decides. It overrides the shipped rule without forking it:
the shipped rule is ``trylast``, this implementation is not.
"""

from __future__ import annotations

import os

import pluggy

hookimpl = pluggy.HookimplMarker("careflow")

__version__ = "0.1.0"


def _vip_list() -> set[str]:
    return {n.strip() for n in os.environ.get("CAREFLOW_VIP_CUSTOMERS", "").split(",") if n.strip()}


def is_vip(customer: dict) -> bool:
    """Whether the customer is flagged or listed as a VIP."""
    if customer.get("vip") is True:
        return True
    listed = _vip_list()
    return any(str(customer.get(k)) in listed for k in ("customer_id", "name") if customer.get(k))


@hookimpl
def careflow_customer_tier(customer: dict) -> str | None:
    """VIPs: the top tier of the active scheme; others: no opinion (None)."""
    if not is_vip(customer):
        return None
    return "A" if os.environ.get("CAREFLOW_TIER_SCHEME", "spend").strip().lower() == "abc" else "core"
