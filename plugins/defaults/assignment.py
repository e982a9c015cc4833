"""Default assignment: a lane maps to a group; the ``account_manager`` lane goes to the
customer's account manager.

- the task's ``group`` property (``spiffworkflow:property name="group"``) names the group;
- else ``CAREFLOW_LANE_GROUPS`` (``lane=group,...``) maps the lane; else group = lane;
- in the ``account_manager`` lane the assignee is the customer's ``account_manager``
  (from ``customer``, or one level down, e.g. ``intake.customer``), when the data has one.
Rules beyond that (round robin, skills, workload) belong in a plugin of your own.
"""

from __future__ import annotations

from typing import Any

from plugins.config import PluginSettings
from plugins.hookspecs import hookimpl

ACCOUNT_MANAGER_LANE = "account_manager"


def account_manager_of(data: dict) -> str | None:
    """The account manager named in task data (``customer.account_manager`` or one level down)."""
    if not isinstance(data, dict):
        return None
    candidates: list[Any] = [data.get("customer"), data]
    candidates += [v.get("customer") for v in data.values() if isinstance(v, dict)]
    for c in candidates:
        if isinstance(c, dict) and c.get("account_manager"):
            return str(c["account_manager"])
    return None


class AssignmentPlugin:
    """The shipped assignment rule (see module docstring)."""

    def __init__(self, settings: PluginSettings | None = None) -> None:
        self.lane_groups = dict((settings or PluginSettings()).lane_groups)

    @hookimpl(trylast=True)
    def careflow_assign_task(self, task: dict, data: dict) -> dict | None:
        """Group from the task's ``group`` property or the lane; account-manager lane to the customer's manager."""
        lane = task.get("lane")
        group = (task.get("properties") or {}).get("group") or self.lane_groups.get(lane or "", lane)
        assignee = account_manager_of(data) if lane == ACCOUNT_MANAGER_LANE else None
        return {"group": group, "assignee": assignee}
