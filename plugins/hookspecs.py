"""Hook specifications: the one place that says what a Careflow plugin can implement.

Call semantics are declared on each spec (``firstresult=True``: the first non-None
result wins; otherwise every implementation is called and the results collected) and
repeated in its docstring.
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
