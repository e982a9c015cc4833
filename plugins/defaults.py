"""Default behaviour, shipped as a plugin marked ``trylast`` so any plugin overrides it."""

from __future__ import annotations

from plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def careflow_assign_task(task: dict, data: dict) -> dict | None:
    """Default assignment: the task goes to the group named like its lane."""
    return {"group": task.get("lane"), "assignee": None}
