"""``careflow migrate``: dry run and real run, --instance, --batch-size, --json and exit codes."""

from __future__ import annotations

import json

from careflow.cli import cli

from migration_helpers import at_diagnose, at_intake, deploy


def run(runner, *args):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_dry_run_lists_what_moves_and_what_cannot(cf, runner):
    deploy(cf, "mig_ticket_v1.bpmn")
    ahead, stuck = at_intake(cf), at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_removed.bpmn")

    res = run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "2", "--dry-run", "--json")

    assert res.exit_code == 2, res.output
    body = json.loads(res.stdout)
    assert (body["dry_run"], body["total"], body["movable"], body["blocked"]) == (True, 2, 1, 1)
    plans = {p["instance_id"]: p for p in body["instances"]}
    assert plans[ahead]["movable"] and [e["element_id"] for e in plans[ahead]["lost"]] == ["diagnose", "escalate",
                                                                                            "sla"]
    [diagnose] = [t for t in plans[stuck]["tasks"] if t["element_id"] == "diagnose"]
    assert diagnose["outcome"] == "blocked" and "removes it" in diagnose["reason"]
    assert cf.show(stuck)["version"] == 1 and cf.show(ahead)["version"] == 1  # a dry run moves nothing

    res = run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "2", "--dry-run")
    assert res.exit_code == 2
    assert f"instance {stuck}: CANNOT MOVE" in res.output and f"instance {ahead}: moves" in res.output
    assert "why: '诊断 / Diagnose' (diagnose) is open and version 2 removes it" in res.output
    assert "no longer on its path: diagnose, escalate, sla" in res.output


def test_real_run_moves_what_it_can_and_exits_2_listing_the_rest(cf, runner):
    deploy(cf, "mig_ticket_v1.bpmn")
    ahead, stuck = at_intake(cf), at_diagnose(cf)
    deploy(cf, "mig_ticket_v2_removed.bpmn")

    res = run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "2", "--user", "owner_li")

    assert res.exit_code == 2
    assert "Migrated 1 of 2 instance(s) of mig_ticket from version 1 to 2" in res.stdout
    assert f"instance {stuck} stays on version 1:" in res.stdout and "removes it" in res.stdout
    assert "Migrating mig_ticket v1 -> v2" in res.stderr  # the progress bar
    assert cf.show(ahead)["version"] == 2 and cf.show(stuck)["version"] == 1
    [row] = [a for a in cf.audit(ahead) if a["action"] == "instance_migrated"]
    assert row["actor"] == "owner_li"


def test_selected_instances_json_and_exit_0(cf, runner):
    deploy(cf, "mig_ticket_v1.bpmn")
    ids = [at_intake(cf) for _ in range(3)]
    deploy(cf, "mig_ticket_v2_added.bpmn")

    res = run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "2", "--instance", str(ids[2]),
              "--instance", str(ids[0]), "--batch-size", "1", "--json")

    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)  # nothing but JSON on stdout
    assert body["ok"] and body["total"] == 2 and body["failed"] == [] and body["dry_run"] is False
    assert [o["instance_id"] for o in body["migrated"]] == [ids[2], ids[0]]
    assert body["migrated"][0]["plan"]["tasks"][0]["element_id"] == "intake"
    assert [cf.show(i)["version"] for i in ids] == [2, 1, 2]

    res = run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "2")
    assert res.exit_code == 0 and "Migrated 1 of 1" in res.stdout
    res = run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "2")
    assert res.exit_code == 0 and "No running instance of mig_ticket is on version 1" in res.stdout


def test_usage_errors(cf, runner):
    deploy(cf, "mig_ticket_v1.bpmn")
    assert run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "1").exit_code == 2
    res = run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "3", "--json")
    assert res.exit_code == 4 and json.loads(res.stdout)["error"] == "not_found"
    assert run(runner, "migrate", "nope", "--from", "1", "--to", "2").exit_code == 4
    assert run(runner, "migrate", "mig_ticket", "--from", "1", "--to", "2", "--batch-size", "0").exit_code == 2
