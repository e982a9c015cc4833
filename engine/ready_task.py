"""What a task that became ready gets on its ``human_tasks`` row: group and assignee, due time,
rendered instructions. A step computes them for a new task (``engine.runtime``); a migration
recomputes the ones whose definition changed for a task already waiting (``engine.migration``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2.sandbox
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition

from engine import step as step_mod
from engine.specs import HumanTaskMeta
from engine.step import Step

log = logging.getLogger("careflow.engine")
_jinja = jinja2.sandbox.SandboxedEnvironment(autoescape=False, undefined=jinja2.ChainableUndefined)

Evaluate = Callable[[str], Any]  # an expression's value for the task (None when it fails)


def assignment(pm, step: Step, process_id: str, instance_id: int, task, meta: HumanTaskMeta,
               evaluate: Evaluate) -> tuple[dict, str | None]:
    """The ``careflow_assign_task`` answer for the task (``group``, ``assignee``) and its assignee:
    the task's assignee expression, when it gives one, wins over the hook's."""
    info = {"process_id": process_id, "instance_id": instance_id, "name": meta.name, "title": meta.title,
            "lane": meta.lane, "properties": meta.properties}
    token = step_mod.activate(step)  # a failing assignment plugin becomes an incident of this step
    try:
        answer = pm.hook.careflow_assign_task(task=info, data=task.data) or {}
    finally:
        step_mod.deactivate(token)
    assignee = answer.get("assignee")
    if meta.assignee_expr:
        assignee = evaluate(meta.assignee_expr) or assignee
    return answer, assignee


def due_at(meta: HumanTaskMeta, created_at: datetime, evaluate: Evaluate) -> datetime | None:
    """The task's due time: ``dueIn`` after ``created_at``, unless its ``dueAt`` expression gives one."""
    due = created_at + meta.due_in if meta.due_in else None
    if meta.due_at_expr:
        value = evaluate(meta.due_at_expr)
        if value:
            try:
                due = value if isinstance(value, datetime) else TimerEventDefinition.get_datetime(str(value))
            except ValueError:
                log.warning("dueAt of %s gave %r, not a datetime", meta.name, value)
    return due


def instructions(meta: HumanTaskMeta, task) -> str | None:
    """The task's instructions rendered with its data (a template error is shown, not raised)."""
    if not meta.instructions:
        return None
    try:
        template = _template(meta.instructions)
        return template if type(template) is str else template.render(**dict(task.data))
    except jinja2.TemplateError as err:
        return f"{meta.instructions}\n\n(template error: {err})"


@functools.lru_cache(maxsize=1024)
def _template(source: str) -> jinja2.Template | str:
    """Compiled (sandboxed) Jinja template of a task's instructions; compiling is the costly part.
    Instructions with no Jinja syntax at all are their own rendering (the text, as rendered once)."""
    template = _jinja.from_string(source)
    if not any(mark in source for mark in ("{{", "{%", "{#")):
        return template.render()
    return template
