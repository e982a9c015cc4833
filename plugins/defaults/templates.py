"""Default message templates (zh / en) for the notifications the shipped workflows and the
SLA escalation (topic ``sla_escalation``) send. Fields are Jinja over the message payload; filters: ``local`` (ISO
time → Beijing time), ``label`` (a code such as ``urgent`` → 紧急 / urgent)."""

from __future__ import annotations

from plugins.hookspecs import hookimpl


def _t(zh_subject: str, zh_body: str, en_subject: str, en_body: str) -> dict:
    return {"zh": {"subject": zh_subject, "body": zh_body}, "en": {"subject": en_subject, "body": en_body}}


TEMPLATES: dict[str, dict] = {
    "ticket_opened": _t(
        "工单 {{ number }} 已受理",
        "您的售后工单 {{ number }} 已受理（{{ type | label }}，优先级：{{ priority | label }}）。\n"
        "我们将在 {{ first_response_due | local }} 前首次响应，{{ solution_due | local }} 前解决问题。",
        "Ticket {{ number }} received",
        "Your after-sales ticket {{ number }} has been opened ({{ type | label }}, priority "
        "{{ priority | label }}).\nWe will respond by {{ first_response_due | local }} (Beijing time) and solve "
        "it by {{ solution_due | local }}."),
    "onsite_scheduled": _t(
        "工单 {{ number }}：上门服务已预约",
        "工程师将于 {{ visit_at | local }} 上门服务，地址：{{ address }}。",
        "Ticket {{ number }}: on-site visit booked",
        "Our engineer will visit on {{ visit_at | local }} (Beijing time) at {{ address }}."),
    "deadline_extended": _t(
        "工单 {{ number }}：处理时限调整",
        "很抱歉，您的工单无法在原定时限内完成。原因：{{ reason }}。新的完成时间：{{ new_due | local }}。",
        "Ticket {{ number }}: new deadline",
        "We are sorry: your ticket cannot be completed by the original deadline. Reason: {{ reason }}. "
        "New time: {{ new_due | local }} (Beijing time)."),
    "ticket_resolved": _t(
        "工单 {{ number }} 已处理完毕",
        "您的工单 {{ number }} 已处理完毕，我们将在 24 小时内回访确认。",
        "Ticket {{ number }} resolved",
        "Your ticket {{ number }} has been resolved; we will call you within 24 hours to confirm."),
    "ticket_reopened": _t(
        "工单 {{ number }} 已重新处理",
        "您反馈问题仍未解决，工单 {{ number }} 已进入第 {{ round }} 轮处理。",
        "Ticket {{ number }} reopened",
        "You told us the problem is not solved: ticket {{ number }} is being handled again (round {{ round }})."),
    "ticket_reopened_repeatedly": _t(
        "【需关注】工单 {{ number }} 第 {{ round }} 次重开",
        "工单 {{ number }} 已第 {{ round }} 次重开。原因：{{ reason }}。请主管跟进。",
        "[Attention] Ticket {{ number }} reopened (round {{ round }})",
        "Ticket {{ number }} was reopened again (round {{ round }}). Reason: {{ reason }}. Please follow up."),
    "ticket_closed": _t(
        "工单 {{ number }} 已结案",
        "您的工单 {{ number }} 已结案，感谢您的支持。",
        "Ticket {{ number }} closed",
        "Your ticket {{ number }} is closed. Thank you."),
    "sla_escalation": _t(
        "{% if overdue_by_seconds %}【超时】{% else %}【提醒】{% endif %}{{ subject_key }} · {{ clock | label }}时限",
        "{{ explanation_zh or explanation }}\n时限：{{ due_at | local }}（北京时间）；负责人：{{ owner or '未指派' }}。",
        "{% if overdue_by_seconds %}[Overdue]{% else %}[Reminder]{% endif %} {{ subject_key }} · "
        "{{ clock | label }} deadline",
        "{{ explanation_en or explanation }}\nDeadline: {{ due_at | local }} (Beijing time); owner: {{ owner or 'nobody yet' }}."),
    "task_assigned": _t(
        "新任务：{{ title }}",
        "您有一项新任务：{{ title }}{% if due_at %}，请于 {{ due_at | local }} 前完成{% endif %}。",
        "New task: {{ title }}",
        "You have a new task: {{ title }}{% if due_at %}, due {{ due_at | local }} (Beijing time){% endif %}."),
    "satisfaction_survey": _t(
        "满意度调查",
        "感谢您选择我们的服务。请为本次服务的响应速度、解决效率、工程师专业度和整体满意度打分（1–5 分）。",
        "How did we do?",
        "Thank you for choosing us. Please rate our response speed, resolution efficiency, engineer "
        "expertise and overall satisfaction (1-5)."),
}


@hookimpl(trylast=True)
def careflow_message_templates() -> dict[str, dict]:
    """The shipped bilingual templates (an installed plugin's template of the same name wins)."""
    return TEMPLATES
