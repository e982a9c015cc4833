"""The shipped plugins: Careflow's default rules, each module one plugin marked ``trylast``.

``plugins.manager.DEFAULT_PLUGINS`` lists them; the tier scheme (``spend_tiers`` or
``abc_tiers``) is chosen by ``CAREFLOW_TIER_SCHEME``. The tables are re-exported here so
code that needs the default numbers reads them from one place.
"""

from plugins.defaults.abc_tiers import ABC_TIERS
from plugins.defaults.escalation import DEFAULT_LADDER
from plugins.defaults.sla import COMPLAINT_SLA, TICKET_SLA
from plugins.defaults.spend_tiers import SPEND_TIERS

__all__ = ["ABC_TIERS", "COMPLAINT_SLA", "DEFAULT_LADDER", "SPEND_TIERS", "TICKET_SLA"]
