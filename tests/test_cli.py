"""The CLI contract: commands, flags, --json fields and exit codes."""

from __future__ import annotations

import json

import pytest

from careflow.cli import cli

from bpmn_factory import process_xml, write_bundle
from conftest import FIXTURES


def run(runner, *args, input=None):
    return runner.invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def deployed(runner):
    assert run(runner, "init-db").exit_code == 0
    res = run(runner, "deploy", str(FIXTURES / "simple.bpmn"), "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["versions"][0]


def test_deploy_reports_version_and_is_idempotent(runner, deployed):
    assert deployed["process_id"] == "simple_review" and deployed["version"] == 1 and deployed["created"]
    res = run(runner, "deploy", str(FIXTURES / "simple.bpmn"))
    assert res.exit_code == 0 and "unchanged, still version 1" in res.output


def test_deploy_invalid_exits_2_with_problem_list(runner, tmp_path):
    path = write_bundle(tmp_path, process_xml(timer="PT2H", form="missing.json"))
    res = run(runner, "deploy", str(path))
    assert res.exit_code == 2
    assert "p_test.bpmn" in res.output and "[t1]" in res.output and "missing.json" in res.output
    res = run(runner, "deploy", str(path), "--json")
    body = json.loads(res.output)
    assert res.exit_code == 2 and body["error"] == "invalid"
    assert {p["element_id"] for p in body["problems"]} == {"t1", "work"}
    assert all({"message", "file", "line"} <= set(p) for p in body["problems"])


def test_start_tasks_complete_show_audit(runner, deployed):
    res = run(runner, "start", "simple_review", "--data", '{"channel": "phone"}', "--user", "alice", "--json")
    assert res.exit_code == 0
    instance_id = json.loads(res.output)["instance_id"]

    res = run(runner, "tasks", "--instance", str(instance_id), "--json")
    [task] = json.loads(res.output)
    assert {"id", "instance_id", "name", "title", "lane", "assignee", "form", "due_at"} <= set(task)
    assert task["form"]["properties"]["amount"]["type"] == "integer"  # the JSON Schema inline
    assert task["lane"] == "customer_service" and task["instance_id"] == instance_id

    res = run(runner, "complete", task["id"], "--user", "alice", "--data", '{"customer": "ACME"}', "--json")
    assert res.exit_code == 2
    assert json.loads(res.output)["field_errors"] == {"amount": ["is required"]}

    res = run(runner, "complete", task["id"], "--user", "alice", "--data", '{"customer": "ACME", "amount": 3}')
    assert res.exit_code == 0 and "completed" in res.output

    res = run(runner, "complete", task["id"], "--user", "bob", "--data", '{"customer": "ACME", "amount": 3}')
    assert res.exit_code == 3 and "already completed" in res.output

    res = run(runner, "show", str(instance_id), "--json")
    info = json.loads(res.output)
    assert {"id", "process_id", "version", "status", "data"} <= set(info)
    assert (info["status"], info["version"], info["data"]["total"]) == ("completed", 1, 6)

    res = run(runner, "audit", str(instance_id), "--json")
    actions = [r["action"] for r in json.loads(res.output)]
    assert actions[0] == "instance_started" and actions[-1] == "instance_completed"
    res = run(runner, "audit", str(instance_id))
    assert res.exit_code == 0 and "task_completed" in res.output


def test_user_filter_and_errors(runner, deployed):
    run(runner, "start", "simple_review")
    res = run(runner, "tasks", "--user", "nobody", "--json")
    assert json.loads(res.output) == []
    assert run(runner, "show", "999", "--json").exit_code == 4
    assert run(runner, "start", "nope").exit_code == 4
    res = run(runner, "start", "simple_review", "--data", "{bad")
    assert res.exit_code == 2 and "not valid JSON" in res.output
    res = run(runner, "start", "simple_review", "--data", "[1]")
    assert res.exit_code == 2 and "JSON object" in res.output
    res = run(runner, "complete", "nope", "--user", "u", "--json")
    assert res.exit_code == 4 and json.loads(res.output)["error"] == "not_found"
