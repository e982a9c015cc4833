"""Host functions for BPMN scripts and gateway conditions, backed by the rule hooks:
``tier_of(customer)`` and ``sla_policy(kind, priority, ticket_type, tier)``.

They call the hooks through the plugin manager, so an installed plugin's rule applies
and a failing plugin falls back to the default (see ``plugins.isolation``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plugins.hookspecs import hookimpl


class HostFunctions:
    """The shipped host functions, bound to one plugin manager."""

    def __init__(self, pm: Any) -> None:
        self.pm = pm

    def tier_of(self, customer: dict | None) -> str | None:
        """The customer's tier by the active tier rule (None for no customer)."""
        if not isinstance(customer, dict):
            return None
        return self.pm.hook.careflow_customer_tier(customer=dict(customer))

    def sla_policy(self, kind: str = "ticket", priority: str | None = None, ticket_type: str | None = None,
                   tier: str | None = None) -> dict | None:
        """The SLA policy (``{"policy", "clocks"}``) for a ticket or complaint."""
        return self.pm.hook.careflow_sla_policy(kind=kind, priority=priority, ticket_type=ticket_type, tier=tier)

    @hookimpl(trylast=True)
    def careflow_script_functions(self) -> dict[str, Callable[..., Any]]:
        """``tier_of`` and ``sla_policy`` for scripts and conditions."""
        return {"tier_of": self.tier_of, "sla_policy": self.sla_policy}
