"""The outbox: rows commit with their step, the delivery worker sends them with retries,
backoff, incidents and manual retry, and a hanging channel never holds up the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, timedelta

import pytest
from sqlalchemy import func, select

from careflow.cli import cli
from engine.clock import FrozenClock
from engine.errors import Conflict, NotFound, ScriptError
from engine.models import AuditEntry, HumanTask, Instance, OutboxMessage
from engine.outbox import (
    OutboxPolicy,
    _claim,
    deliver_due,
    next_delivery_due,
    resolve_incident,
    retry_incident,
)
from plugins.hookspecs import hookimpl

from plugin_helpers import (
    FAST,
    T0,
    ChannelPlugin,
    RecordingChannel,
    engine_factory,
    incidents,
    outbox,
    ticket,
)


@pytest.fixture
def make_cf(settings):
    """Engines with chosen plugins and configuration (see ``plugin_helpers.engine_factory``)."""
    yield from engine_factory(settings)


# -- rows written with the step -------------------------------------------------------------


def test_notify_writes_one_outbox_row_with_the_step(make_cf):
    cf = make_cf()
    r = cf.start("plugins_notify", ticket(), actor="alice")
    [row] = outbox(cf)
    assert (row.topic, row.recipient, row.channel, row.status, row.attempts) == (
        "ticket_opened", "customer", None, "pending", 0)
    assert row.instance_id == r.instance_id
    assert row.payload["number"] == "SN20240315001" and row.payload["customer"]["email"] == "zhao@acme.cn"
    assert row.next_attempt_at == T0 and row.created_at == T0
    assert str(r.instance_id) in row.idempotency_key


def test_no_outbox_row_when_the_step_rolls_back(make_cf):
    cf = make_cf()
    with pytest.raises(ScriptError, match="ZeroDivisionError"):
        cf.start("plugins_notify", ticket(fail=True), actor="alice")  # notify() ran, then 1 / 0
    assert outbox(cf) == []
    with cf.Session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0


def test_a_failed_completion_leaves_only_the_earlier_steps_rows(make_cf):
    cf = make_cf()
    r = cf.start("plugins_notify", ticket(), actor="alice")
    [task] = cf.tasks(instance_id=r.instance_id)
    with pytest.raises(ScriptError):
        cf.complete(task["id"], {"fail_after": True}, user="bob")  # notify("ticket_closed") then 1 / 0
    assert [row.topic for row in outbox(cf)] == ["ticket_opened"]
    assert cf.task(task["id"])["status"] == "ready"
    cf.complete(task["id"], {"fail_after": False}, user="bob")
    assert [row.topic for row in outbox(cf)] == ["ticket_opened", "ticket_closed"]


# -- delivery -------------------------------------------------------------------------------


def test_a_message_without_channel_fans_out_to_every_accepting_channel(make_cf, tmp_path):
    log_file = tmp_path / "notifications.jsonl"
    mail = RecordingChannel("mail", accepts=lambda m: any(a.get("email") for a in m["to"]))
    fax = RecordingChannel("fax", accepts=lambda m: any(a.get("fax") for a in m["to"]))
    cf = make_cf(ChannelPlugin(mail, fax), environ={"CAREFLOW_NOTIFY_LOG": str(log_file)})
    cf.start("plugins_notify", ticket(), actor="alice")

    report = deliver_due(cf, policy=FAST)
    assert (report.fanned_out, report.sent, report.retrying, report.incidents) == (1, 2, 0, 0)
    assert int(report) == 3
    rows = outbox(cf)
    parent, *children = rows
    assert parent.status == "fanned_out" and parent.delivered_at == T0
    assert sorted((c.channel, c.status, c.attempts) for c in children) == [("log", "sent", 1), ("mail", "sent", 1)]
    assert {c.idempotency_key for c in children} == {f"{parent.idempotency_key}#log", f"{parent.idempotency_key}#mail"}

    [message] = mail.sent
    assert fax.calls == []
    assert message["idempotency_key"] == f"{parent.idempotency_key}#mail"
    assert message["to"] == [{"kind": "customer", "name": "ACME 有限公司", "email": "zhao@acme.cn",
                              "phone": "13800000000", "locale": None}]
    assert message["subject"] == {"zh": "工单 SN20240315001 已受理", "en": "Ticket SN20240315001 received"}
    assert "首次响应" in message["body"]["zh"] and message["topic"] == "ticket_opened"

    [line] = log_file.read_text(encoding="utf-8").splitlines()
    logged = json.loads(line)
    assert logged["subject"]["en"] == "Ticket SN20240315001 received"
    assert logged["to"] == [{"name": "ACME 有限公司", "email": "z***@acme.cn", "phone": "138****0000"}]
    assert deliver_due(cf, policy=FAST) == 0  # nothing left


def test_failures_back_off_then_become_an_incident_that_an_operator_retries(make_cf):
    clock = FrozenClock(T0)
    flaky = RecordingChannel("flaky", fail_times=3)
    cf = make_cf(ChannelPlugin(flaky), clock=clock)
    r = cf.start("plugins_notify", ticket(), actor="alice")

    deliver_due(cf, policy=FAST)  # fan-out to "flaky", attempt 1 fails
    child = outbox(cf)[1]
    assert (child.channel, child.status, child.attempts) == ("flaky", "pending", 1)
    assert "service unavailable" in child.last_error
    first_delay = child.next_attempt_at - T0
    assert timedelta(seconds=30) <= first_delay <= timedelta(seconds=60)  # base 60 s, equal jitter

    assert deliver_due(cf, policy=FAST) == 0  # not due yet
    clock.advance(timedelta(seconds=60))
    assert deliver_due(cf, policy=FAST).retrying == 1  # attempt 2 fails
    child = outbox(cf)[1]
    assert child.attempts == 2
    assert timedelta(seconds=60) <= child.next_attempt_at - clock.now() <= timedelta(seconds=120)

    clock.advance(timedelta(seconds=120))
    assert deliver_due(cf, policy=FAST).incidents == 1  # attempt 3 of 3 fails
    child = outbox(cf)[1]
    assert (child.status, child.attempts) == ("incident", 3)
    [incident] = incidents(cf, "delivery")
    assert incident.outbox_id == child.id and incident.instance_id == r.instance_id
    assert incident.source == "flaky" and "3 attempts" in incident.message
    assert "RuntimeError: flaky: service unavailable" in incident.traceback
    assert len(flaky.calls) == 3 and all(c["idempotency_key"] == child.idempotency_key for c in flaky.calls)

    clock.advance(timedelta(hours=5))
    assert deliver_due(cf, policy=FAST) == 0  # an incident is not retried by itself

    result = retry_incident(cf, incident.id, "ops_lead")
    assert result["resolved_by"] == "ops_lead" and result["outbox"]["status"] == "pending"
    child = outbox(cf)[1]
    assert (child.status, child.attempts, child.next_attempt_at) == ("pending", 0, clock.now())
    with cf.Session() as s:
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "delivery_retried")).one()
    assert audit.actor == "ops_lead" and audit.details["incident_id"] == incident.id

    assert deliver_due(cf, policy=FAST).sent == 1  # the channel is healthy again
    assert outbox(cf)[1].status == "sent" and len(flaky.sent) == 1
    with pytest.raises(Conflict, match="already resolved by ops_lead"):
        retry_incident(cf, incident.id, "ops_lead")
    with pytest.raises(NotFound):
        retry_incident(cf, 9999, "ops_lead")


def test_a_permanent_failure_is_an_incident_at_once(make_cf):
    refused = RecordingChannel("mail", fail_times=1, permanent=True)
    cf = make_cf(ChannelPlugin(refused))
    cf.start("plugins_notify", ticket(), actor="alice")
    report = deliver_due(cf, policy=FAST)
    assert report.incidents == 1
    [incident] = incidents(cf, "delivery")
    assert "permanent failure" in incident.message and "address refused" in incident.message
    assert outbox(cf)[1].attempts == 1


def test_a_row_for_a_channel_that_is_not_enabled_is_an_incident(make_cf):
    cf = make_cf()
    with cf.Session() as s, s.begin():
        s.add(OutboxMessage(idempotency_key="manual:1", topic="holiday_greeting", channel="sms", recipient="customer",
                            payload={"name": "赵总", "holiday": "春节", "phone": "13800000000"}, status="pending",
                            attempts=0, next_attempt_at=T0, created_at=T0))
    deliver_due(cf, policy=FAST)
    [incident] = incidents(cf, "delivery")
    assert "no channel named 'sms' is enabled" in incident.message


def test_a_message_no_channel_accepts_is_an_incident(make_cf):
    mail = RecordingChannel("mail", accepts=lambda m: any(a.get("email") for a in m["to"]))
    cf = make_cf(ChannelPlugin(mail))  # log channel off
    cf.start("plugins_notify", ticket(email=None, phone=None), actor="alice")
    deliver_due(cf, policy=FAST)
    [incident] = incidents(cf, "delivery")
    assert "no enabled channel accepts this message" in incident.message
    assert "resolved to 0 address" in incident.message


def test_a_hanging_channel_does_not_hold_up_the_others(make_cf):
    release = threading.Event()
    stuck = RecordingChannel("stuck", hang=release, timeout=0.5)
    quick = RecordingChannel("quick")
    cf = make_cf(ChannelPlugin(stuck, quick))
    try:
        cf.start("plugins_notify", ticket("SN1"), actor="alice")
        cf.start("plugins_notify", ticket("SN2"), actor="alice")
        started = time.monotonic()
        deliver_due(cf, policy=FAST)
        elapsed = time.monotonic() - started
        assert elapsed < 3, elapsed
        assert sorted(m["payload"]["number"] for m in quick.sent) == ["SN1", "SN2"]
        stuck_rows = [r for r in outbox(cf) if r.channel == "stuck"]
        assert len(stuck_rows) == 2
        assert all(r.status == "pending" and "no answer within 0.5 s" in r.last_error for r in stuck_rows)
    finally:
        release.set()


def test_an_expired_lease_is_claimed_again(make_cf):
    clock = FrozenClock(T0)
    quick = RecordingChannel("quick")
    cf = make_cf(ChannelPlugin(quick), clock=clock)
    cf.start("plugins_notify", ticket(), actor="alice")
    [job] = _claim(cf, T0, 10, timedelta(minutes=2))  # a worker claims the row and dies
    assert outbox(cf)[0].status == "sending"
    assert deliver_due(cf, policy=FAST) == 0  # the lease still holds
    clock.advance(timedelta(minutes=3))
    deliver_due(cf, policy=FAST)
    parent = outbox(cf)[0]
    assert (parent.status, parent.attempts) == ("fanned_out", 2)
    assert len(quick.sent) == 1 and job.attempts == 1


def test_next_delivery_due(make_cf):
    clock = FrozenClock(T0)
    flaky = RecordingChannel("flaky", fail_times=1)
    cf = make_cf(ChannelPlugin(flaky), clock=clock)
    assert next_delivery_due(cf) is None
    cf.start("plugins_notify", ticket(), actor="alice")
    due = next_delivery_due(cf)
    assert due == T0 and due.tzinfo is not None
    deliver_due(cf, policy=FAST)
    retry_at = next_delivery_due(cf)
    assert retry_at == outbox(cf)[1].next_attempt_at and retry_at > T0
    clock.set(retry_at)
    deliver_due(cf, policy=FAST)
    assert next_delivery_due(cf) is None


def test_concurrent_workers_send_each_message_exactly_once(make_cf):
    slow = RecordingChannel("slow", delay=0.02)
    cf = make_cf(ChannelPlugin(slow))
    for n in range(12):
        cf.start("plugins_notify", ticket(f"SN{n:03d}"), actor="alice")
    policy = OutboxPolicy(max_attempts=3, backoff_s=60, channel_timeout_s=5, concurrency=3)
    errors: list[BaseException] = []

    def worker():
        try:
            while deliver_due(cf, policy=policy, limit=6):
                pass
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    keys = [m["idempotency_key"] for m in slow.sent]
    assert len(keys) == 12 and len(set(keys)) == 12
    assert {r.status for r in outbox(cf)} == {"fanned_out", "sent"}
    assert all(r.attempts == 1 for r in outbox(cf))


def test_a_raising_recipient_plugin_falls_back_and_is_an_incident(make_cf):
    class BrokenDirectory:
        @hookimpl
        def careflow_resolve_recipient(self, recipient, message):
            raise LookupError("directory service down")

    quick = RecordingChannel("quick")
    cf = make_cf(BrokenDirectory(), ChannelPlugin(quick))
    r = cf.start("plugins_notify", ticket(), actor="alice")
    deliver_due(cf, policy=FAST)
    assert quick.sent[0]["to"][0]["email"] == "zhao@acme.cn"  # the shipped resolver answered
    found = incidents(cf, "plugin")  # one per call: the fan-out and the delivery both asked
    assert len(found) == 2
    for incident in found:
        assert incident.source.endswith("BrokenDirectory")
        assert "careflow_resolve_recipient" in incident.message and "directory service down" in incident.message
        assert "LookupError" in incident.traceback and incident.instance_id == r.instance_id


def test_resolve_incident_closes_it_without_sending(make_cf):
    refused = RecordingChannel("mail", fail_times=1, permanent=True)
    cf = make_cf(ChannelPlugin(refused))
    cf.start("plugins_notify", ticket(), actor="alice")
    deliver_due(cf, policy=FAST)
    [incident] = incidents(cf, "delivery")
    resolve_incident(cf, incident.id, "ops_lead")
    assert incidents(cf, "delivery")[0].resolved_by == "ops_lead"
    assert outbox(cf)[1].status == "incident"
    assert deliver_due(cf, policy=FAST) == 0


def test_policy_from_environment():
    p = OutboxPolicy.from_env({"CAREFLOW_OUTBOX_MAX_ATTEMPTS": "7", "CAREFLOW_OUTBOX_BACKOFF": "10",
                               "CAREFLOW_OUTBOX_BACKOFF_MAX": "100", "CAREFLOW_CHANNEL_TIMEOUT": "3"})
    assert (p.max_attempts, p.backoff_s, p.backoff_max_s, p.channel_timeout_s) == (7, 10, 100, 3)
    assert p.delay(10) <= timedelta(seconds=100)  # capped
    with pytest.raises(Exception, match="CAREFLOW_OUTBOX_MAX_ATTEMPTS='many' is not a whole number"):
        OutboxPolicy.from_env({"CAREFLOW_OUTBOX_MAX_ATTEMPTS": "many"})


# -- command line ---------------------------------------------------------------------------


def test_cli_incidents_list_show_retry_and_deliver(make_cf, runner, monkeypatch, tmp_path):
    broken = RecordingChannel("mail", fail_times=1, permanent=True)
    cf = make_cf(ChannelPlugin(broken))
    cf.start("plugins_notify", ticket(), actor="alice")
    deliver_due(cf, policy=FAST)
    [incident] = incidents(cf, "delivery")
    log_file = tmp_path / "sent.jsonl"
    monkeypatch.setenv("CAREFLOW_NOTIFY_LOG", str(log_file))  # the CLI's engine has the log channel only

    out = runner.invoke(cli, ["incidents", "--json"])
    assert out.exit_code == 0, out.output
    [listed] = json.loads(out.output)
    assert listed["id"] == incident.id and listed["kind"] == "delivery" and listed["retryable"] is True
    assert listed["outbox"]["channel"] == "mail" and "address refused" in listed["traceback"]

    out = runner.invoke(cli, ["incidents"])
    assert out.exit_code == 0 and f"#{incident.id}" in out.output and "address refused" in out.output
    out = runner.invoke(cli, ["incidents", "show", str(incident.id)])
    assert out.exit_code == 0 and "PermanentDeliveryError" in out.output

    # the mail channel does not exist in the CLI's configuration: the retry ends in a new incident
    out = runner.invoke(cli, ["incidents", "retry", str(incident.id), "--user", "ops_lead"])
    assert out.exit_code == 0, out.output
    assert runner.invoke(cli, ["incidents", "retry", str(incident.id)]).exit_code == 3
    assert runner.invoke(cli, ["incidents", "retry", "999"]).exit_code == 4
    out = runner.invoke(cli, ["deliver", "--once"])
    assert out.exit_code == 0 and "1 incidents" in out.output, out.output
    out = runner.invoke(cli, ["incidents", "--json", "--all"])
    rows = json.loads(out.output)
    assert [r["resolved_by"] for r in rows] == ["ops_lead", None]
    assert "no channel named 'mail' is enabled" in rows[1]["message"]

    # a plugin incident cannot be retried, only resolved
    cf.record_incident("plugin", "some_plugin", "boom", tb="Traceback: boom")
    plugin_id = incidents(cf, "plugin")[0].id
    out = runner.invoke(cli, ["incidents", "retry", str(plugin_id), "--json"])
    assert out.exit_code == 3 and "nothing to send again" in json.loads(out.output)["message"]
    out = runner.invoke(cli, ["incidents", "resolve", str(plugin_id), "--user", "ops_lead"])
    assert out.exit_code == 0
    assert runner.invoke(cli, ["incidents"]).output.count("#") == 1  # the new delivery incident only


def test_cli_deliver_once_sends_through_the_log_channel(make_cf, runner, monkeypatch, tmp_path):
    cf = make_cf()
    cf.start("plugins_notify", ticket(), actor="alice")
    log_file = tmp_path / "sent.jsonl"
    monkeypatch.setenv("CAREFLOW_NOTIFY_LOG", str(log_file))
    out = runner.invoke(cli, ["deliver", "--once"])
    assert out.exit_code == 0, out.output
    assert "1 sent, 1 fanned out" in out.output
    assert json.loads(log_file.read_text(encoding="utf-8"))["topic"] == "ticket_opened"
    out = runner.invoke(cli, ["deliver", "--once"])
    assert "Nothing to deliver." in out.output


def test_tasks_and_outbox_agree_after_delivery(make_cf):
    """Delivery touches only the outbox: instance state and tasks are as the step left them."""
    cf = make_cf(ChannelPlugin(RecordingChannel("quick")))
    r = cf.start("plugins_notify", ticket(), actor="alice")
    with cf.Session() as s:
        before = (s.get(Instance, r.instance_id).revision, s.scalar(select(func.count()).select_from(HumanTask)))
    deliver_due(cf, policy=FAST)
    with cf.Session() as s:
        after = (s.get(Instance, r.instance_id).revision, s.scalar(select(func.count()).select_from(HumanTask)))
    assert before == after
    assert all(r.created_at.tzinfo == UTC for r in outbox(cf))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_delivery_worker_runs_until_sigterm(make_cf, settings, tmp_path):
    cf = make_cf()
    cf.start("plugins_notify", ticket("SN1"), actor="alice")
    log_file = tmp_path / "sent.jsonl"
    env = {**os.environ, "CAREFLOW_DATABASE_URL": settings.database_url, "CAREFLOW_HOME": str(settings.home),
           "CAREFLOW_NOTIFY_LOG": str(log_file), "CAREFLOW_PLUGINS": ""}

    def lines() -> int:
        return log_file.read_text(encoding="utf-8").count("\n") if log_file.exists() else 0

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 30
        while lines() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines() == n

    proc = subprocess.Popen([sys.executable, "-m", "careflow", "deliver", "--poll", "0.2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(1)
        cf.start("plugins_notify", ticket("SN2"), actor="alice")  # written while the worker sleeps
        wait_for(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Delivery stopped." in out and "1 sent, 1 fanned out" in out
    assert [json.loads(x)["subject"]["en"] for x in log_file.read_text(encoding="utf-8").splitlines()] == [
        "Ticket SN1 received", "Ticket SN2 received"]
