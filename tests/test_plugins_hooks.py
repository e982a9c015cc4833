"""One test (at least) per hook: called with the right arguments at the right moment, and
overridable. ``test_plugins.py`` checks that every hook has a ``test_hook_<name>`` here."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.models import HumanTask
from engine.outbox import deliver_due
from plugins.defaults.escalation import DEFAULT_LADDER
from plugins.hookspecs import hookimpl

from plugin_helpers import (
    FAST,
    ChannelPlugin,
    RecordingChannel,
    add_user,
    engine_factory,
    outbox,
    ticket,
)


@pytest.fixture
def make_cf(settings):
    """Engines with chosen plugins and configuration (see ``plugin_helpers.engine_factory``)."""
    yield from engine_factory(settings)


def test_hook_careflow_script_functions(make_cf):
    seen = []

    class Crm:
        @hookimpl
        def careflow_script_functions(self):
            def credit_limit(customer):
                seen.append(customer["name"])
                return 2 * customer["annual_spend"]

            return {"credit_limit": credit_limit, "tier_of": lambda c: "hijacked"}

    cf = make_cf(Crm())
    env = cf.script_engine.environment
    assert env.globals["credit_limit"]({"name": "x", "annual_spend": 1}) == 2
    # a plugin cannot silently replace a name the engine or an earlier plugin provides
    assert env.globals["tier_of"]({"annual_spend": 0}) == "potential"
    assert callable(env.globals["notify"])
    data = {"customer": {"name": "ACME", "annual_spend": 10}}
    assert cf.script_engine.environment.evaluate("credit_limit(customer)", data) == 20
    assert seen[-1] == "ACME"


def test_hook_careflow_assign_task(make_cf):
    calls = []

    class RoundRobin:
        @hookimpl
        def careflow_assign_task(self, task, data):
            calls.append((dict(task), dict(data)))
            if task["lane"] == "customer_service":
                return {"group": "hotline", "assignee": "wang"}
            return None  # let the default decide

    cf = make_cf(RoundRobin())
    r = cf.start("plugins_notify", ticket(), actor="alice")
    [(task, data)] = calls
    assert task["process_id"] == "plugins_notify" and task["instance_id"] == r.instance_id
    assert (task["name"], task["lane"], task["title"]) == ("handle", "customer_service", "处理 / Handle")
    assert data["number"] == "SN20240315001" and data["tier"] == "potential"
    [row] = cf.tasks(instance_id=r.instance_id)
    assert (row["group"], row["assignee"]) == ("hotline", "wang")

    # account-manager lane: the plugin passes, the default assigns the customer's account manager
    r2 = cf.start("plugins_notify", ticket(spend=150_000, account_manager="li_am"), actor="alice")
    [row2] = cf.tasks(instance_id=r2.instance_id)
    assert (row2["name"], row2["group"], row2["assignee"]) == ("vip_care", "account_manager", "li_am")


def test_hook_careflow_assign_task_lane_map_from_config(make_cf):
    cf = make_cf(environ={"CAREFLOW_LANE_GROUPS": "customer_service=hotline_shanghai"})
    r = cf.start("plugins_notify", ticket(), actor="alice")
    [row] = cf.tasks(instance_id=r.instance_id)
    assert (row["group"], row["assignee"]) == ("hotline_shanghai", None)


def test_hook_careflow_audit_event(make_cf):
    observed = []

    class Observer:
        def __init__(self):
            self.cf = None

        @hookimpl
        def careflow_audit_event(self, event):
            with self.cf.Session() as s:  # the step is committed when observers hear of it
                committed = s.scalar(select(HumanTask.id).where(HumanTask.instance_id == event["instance_id"]))
            observed.append((event, committed))

    obs = Observer()
    cf = make_cf(obs)
    obs.cf = cf
    r = cf.start("plugins_notify", ticket(), actor="alice")
    actions = [e["action"] for e, _ in observed]
    assert actions == [e["action"] for e in cf.audit(r.instance_id)]
    assert actions[0] == "instance_started" and "task_ready" in actions
    assert all(committed is not None for _, committed in observed)
    assert [e["seq"] for e, _ in observed] == sorted(e["seq"] for e, _ in observed)
    assert observed[0][0]["actor"] == "alice" and observed[0][0]["hash"]


def test_hook_careflow_customer_tier(make_cf):
    cf = make_cf()
    tier_of = cf.script_engine.environment.globals["tier_of"]
    assert [tier_of({"annual_spend": s}) for s in (150_000, 100_000, 99_999, 30_000, 10_000, 9_999, 0)] == [
        "core", "core", "important", "important", "basic", "potential", "potential"]
    assert tier_of({"annual_spend": "not a number"}) == "potential"
    assert tier_of(None) is None

    calls = []

    class StrategicAccounts:
        @hookimpl
        def careflow_customer_tier(self, customer):
            calls.append(customer)
            return "core" if customer.get("strategic") else None

    cf2 = make_cf(StrategicAccounts())
    r = cf2.start("plugins_notify", ticket(spend=0, strategic=True), actor="alice")
    # called by the script (tier_of) and by the gateway condition, with the customer record
    assert len(calls) == 2 and calls[0]["strategic"] is True and calls[0]["annual_spend"] == 0
    assert cf2.show(r.instance_id)["data"]["tier"] == "core"
    assert [t["name"] for t in cf2.tasks(instance_id=r.instance_id)] == ["vip_care"]


def test_hook_careflow_sla_policy(make_cf):
    calls = []

    class GoldSla:
        @hookimpl
        def careflow_sla_policy(self, kind, priority, ticket_type, tier):
            calls.append((kind, priority, ticket_type, tier))
            if tier == "core":
                return {"policy": "core-customers", "clocks": {"first_response": "PT1H", "solution": "PT2H"}}
            return None

    cf = make_cf(GoldSla())
    r1 = cf.start("plugins_notify", ticket(spend=500_000, priority="urgent"), actor="alice")
    r2 = cf.start("plugins_notify", ticket(spend=0, priority="general"), actor="alice")
    assert calls == [("ticket", "urgent", None, "core"), ("ticket", "general", None, "potential")]
    assert cf.show(r1.instance_id)["data"]["sla"] == {"policy": "core-customers",
                                                     "clocks": {"first_response": "PT1H", "solution": "PT2H"}}
    assert cf.show(r2.instance_id)["data"]["sla"] == {"policy": "default",
                                                     "clocks": {"first_response": "PT24H", "solution": "3WD"}}
    hook = cf.pm.hook.careflow_sla_policy
    assert hook(kind="complaint", priority=None, ticket_type=None, tier=None) == {
        "policy": "default-complaint-1-24-48", "clocks": {"respond": "PT1H", "plan": "PT24H", "resolve": "PT48H"}}
    assert hook(kind="ticket", priority="important", ticket_type="service_complaint", tier="basic")["clocks"] == {
        "respond": "PT1H", "plan": "PT24H", "resolve": "PT48H"}
    assert hook(kind="ticket", priority="important", ticket_type="product_fault", tier="basic")["clocks"] == {
        "first_response": "PT4H", "solution": "PT24H"}


def test_hook_careflow_escalation_ladder(make_cf):
    seen = []

    class CallTheCustomerFirst:
        @hookimpl
        def careflow_escalation_ladder(self, clock):
            seen.append(clock)
            if clock.get("tier") != "core":
                return []
            return [{"name": "call_customer", "at_fraction": 0.8, "notify": "owner", "repeat_every": None}]

    cf = make_cf(CallTheCustomerFirst())
    clock = {"id": 1, "subject_key": "SN20240315001", "name": "solution", "tier": "core", "owner": "alice"}
    rungs = [r for part in cf.pm.hook.careflow_escalation_ladder(clock=clock) for r in part]
    assert seen == [clock]
    assert [r["name"] for r in rungs] == ["call_customer", "remind_owner", "alert_supervisor", "alert_manager"]
    assert [r["at_fraction"] for r in rungs if r["name"] != "call_customer"] == [0.5, 1.0, 1.5]
    assert {r["notify"] for r in rungs} == {"owner", "supervisor", "manager"}
    plain = [r for part in cf.pm.hook.careflow_escalation_ladder(clock={**clock, "tier": "basic"}) for r in part]
    assert plain == [dict(r) for r in DEFAULT_LADDER]


def test_hook_careflow_notification_channels(make_cf):
    pager = RecordingChannel("pager")
    cf = make_cf(ChannelPlugin(pager), environ={"CAREFLOW_NOTIFY_LOG": "off"})
    cf.start("plugins_notify", ticket(), actor="alice")
    assert pager.calls == []  # nothing is sent inside the step
    deliver_due(cf, policy=FAST)
    [message] = pager.sent
    parent, child = outbox(cf)
    assert message["idempotency_key"] == child.idempotency_key and message["channel"] == "pager"
    assert message["topic"] == "ticket_opened" and message["recipient"] == "customer"
    assert message["instance_id"] == parent.instance_id and message["attempt"] == 1
    assert message["payload"]["number"] == "SN20240315001"

    # a plugin channel with a shipped channel's name replaces it
    class LogReplacement(RecordingChannel):
        pass

    replacement = LogReplacement("log")
    cf2 = make_cf(ChannelPlugin(replacement), environ={"CAREFLOW_NOTIFY_LOG": "/dev/null"}, deploy=False)
    from engine.outbox import channels_of

    assert channels_of(cf2.pm)["log"] is replacement


def test_hook_careflow_resolve_recipient(make_cf):
    calls = []

    class Directory:
        @hookimpl
        def careflow_resolve_recipient(self, recipient, message):
            calls.append((recipient, message["topic"]))
            if recipient == "customer":
                return [{"name": "Service desk", "email": "desk@acme.cn"}]
            return None

    pager = RecordingChannel("pager")
    cf = make_cf(Directory(), ChannelPlugin(pager))
    cf.start("plugins_notify", ticket(), actor="alice")
    deliver_due(cf, policy=FAST)
    assert calls[0] == ("customer", "ticket_opened")
    assert pager.sent[0]["to"] == [{"name": "Service desk", "email": "desk@acme.cn"}]

    # the shipped resolver: users, groups, supervisors, managers, literal addresses, customers
    add_user(cf, "boss", email="boss@acme.cn", role="supervisor")
    add_user(cf, "lead", email="lead@acme.cn", role="supervisor", supervisor="boss", locale="en", groups=("supervisor",))
    add_user(cf, "alice", email="alice@acme.cn", supervisor="lead", groups=("hotline",))
    add_user(cf, "bob", email="bob@acme.cn", groups=("hotline",))
    resolve = cf.pm.subset_hook_caller("careflow_resolve_recipient", [p for _, p in cf.pm.list_name_plugin()
                                                                      if isinstance(p, Directory)])

    def emails(recipient, payload=None, instance_id=None):
        found = resolve(careflow=cf, recipient=recipient, message={
            "topic": "t", "payload": payload or {}, "instance_id": instance_id})
        return [a.get("email") for a in found]

    assert emails("alice") == ["alice@acme.cn"]
    assert emails("hotline") == ["alice@acme.cn", "bob@acme.cn"]
    assert emails("owner", {"owner": "alice"}) == ["alice@acme.cn"]
    assert emails("supervisor", {"owner": "alice"}) == ["lead@acme.cn"]
    assert emails("manager", {"owner": "alice"}) == ["boss@acme.cn"]
    assert emails("supervisor", {}) == ["lead@acme.cn"]  # no owner: the supervisor group
    assert emails("x@y.cn") == ["x@y.cn"]
    assert emails("nobody_like_this") == []
    assert emails(None) == []
    assert emails("customer", {"contact": {"name": "赵", "email": "zhao@acme.cn"}}) == ["zhao@acme.cn"]
    # no contact in the payload: the instance's data
    r = cf.start("plugins_notify", ticket(email="data@acme.cn"), actor="alice")
    assert emails("customer", {}, r.instance_id) == ["data@acme.cn"]
    [task] = cf.tasks(instance_id=r.instance_id)
    cf.complete(task["id"], {}, user="bob")
    assert emails("owner", {}, r.instance_id) == ["bob@acme.cn"]  # whoever completed the latest task
    assert resolve(careflow=cf, recipient="lead", message={"payload": {}})[0]["locale"] == "en"


def test_hook_careflow_message_templates(make_cf):
    class HouseStyle:
        @hookimpl
        def careflow_message_templates(self):
            return {"ticket_opened": {"zh": {"subject": "【ACME】{{ number }}", "body": "您好"},
                                      "en": {"subject": "[ACME] {{ number }}", "body": "Hello"}},
                    "broken": {"zh": {"subject": "{{ oops(", "body": ""}}}

    pager = RecordingChannel("pager")
    cf = make_cf(HouseStyle(), ChannelPlugin(pager))
    cf.start("plugins_notify", ticket(), actor="alice")
    deliver_due(cf, policy=FAST)
    assert pager.sent[0]["subject"] == {"zh": "【ACME】SN20240315001", "en": "[ACME] SN20240315001"}

    from plugins.messages import collect_templates, render

    templates = collect_templates(cf.pm)
    assert "ticket_closed" in templates  # the shipped ones are still there
    broken = render(templates, "broken", {"a": 1})
    assert broken["subject"]["zh"] == "Careflow 通知：broken" and "template_error" in broken
    unknown = render(templates, "no_such_template", {"number": "SN1", "items": [1, 2]})
    assert unknown["template"] is None
    assert unknown["body"]["en"] == 'number: SN1\nitems: [1, 2]'
    assert render(templates, "ticket_closed", None)["subject"]["en"] == "Ticket  closed"  # missing field: blank
