"""Rendering a ready task's instructions (engine.ready_task.instructions)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine import ready_task
from engine.specs import HumanTaskMeta


def _meta(text: str | None) -> HumanTaskMeta:
    return HumanTaskMeta(name="ut", title=None, lane="agents", form_name=None, instructions=text, due_in=None,
                         due_at_expr=None, assignee_expr=None, properties={})


def _task(data: dict) -> SimpleNamespace:
    return SimpleNamespace(data=data)


@pytest.mark.parametrize("text", [
    "登记客户的报修：渠道、客户、联系人。\n",
    "Plain text with a single { brace } and a trailing newline\n\n",
    "",
])
def test_text_without_template_syntax_is_shown_as_jinja_would_render_it(text):
    expected = ready_task._jinja.from_string(text).render() if text else None
    assert ready_task.instructions(_meta(text), _task({"x": 1})) == expected
    assert ready_task.instructions(_meta(text), _task({})) == expected  # the data plays no part


def test_a_template_renders_the_task_data_every_time():
    meta = _meta("**工单 {{ ticket.number }}** · 第 {{ round_no }} 轮{# note #}")
    assert ready_task.instructions(meta, _task({"ticket": {"number": "T1"}, "round_no": 1})) == "**工单 T1** · 第 1 轮"
    assert ready_task.instructions(meta, _task({"ticket": {"number": "T2"}, "round_no": 2})) == "**工单 T2** · 第 2 轮"
    assert ready_task.instructions(meta, _task({})) == "**工单 ** · 第  轮"  # missing values render empty


def test_a_statement_only_template_is_still_a_template():
    meta = _meta("{% if urgent %}紧急{% else %}一般{% endif %}")
    assert ready_task.instructions(meta, _task({"urgent": True})) == "紧急"
    assert ready_task.instructions(meta, _task({"urgent": False})) == "一般"


def test_a_template_error_is_shown_not_raised():
    meta = _meta("{{ broken ")
    shown = ready_task.instructions(meta, _task({}))
    assert shown.startswith("{{ broken ") and "template error" in shown
