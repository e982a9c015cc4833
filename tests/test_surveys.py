"""Satisfaction surveys: signed single-use links that expire, phone surveys, low-score follow-up."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from careflow.cli import cli
from engine.clock import FrozenClock
from engine.customers import list_contacts
from engine.errors import ValidationFailed
from engine.models import Incident
from engine.runtime import Careflow
from engine.surveys import (
    SurveyLink,
    SurveyLinkExpired,
    SurveyLinkInvalid,
    SurveyLinkUsed,
    SurveyResponse,
    create_survey_link,
    make_token,
    open_survey_link,
    record_phone_survey,
    submit_survey_link,
    validate_answers,
)

from crm_helpers import ROOT, add, add_user, deploy, enterprise, race, sh

GOOD = {"response_speed": 5, "resolution_efficiency": 4, "engineer_expertise": 5, "overall": 5,
        "overall_suggestion": "工程师很专业"}
LOW = {"response_speed": 2, "resolution_efficiency": 1, "engineer_expertise": 3, "overall": 2,
       "response_speed_suggestion": "等了两天才有人回电"}


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("CAREFLOW_SECRET_KEY", "test-secret-for-survey-links")


@pytest.fixture
def clock():
    return FrozenClock(sh(2026, 3, 2, 10))


@pytest.fixture
def crm(settings, clock):
    eng = Careflow(settings, clock=clock)
    add_user(eng, "li.na", role="supervisor", groups=("supervisor",))
    add_user(eng, "zhao.min", groups=("account_manager",), supervisor="li.na")
    yield eng
    eng.close()


def _responses(cf) -> int:
    with cf.Session() as s:
        return s.scalar(select(func.count()).select_from(SurveyResponse))


def test_a_link_works_once(crm):
    cid = add(crm, {"customer_type": "individual", "name": "张丽华", "phone": "13612345678"})
    link = create_survey_link(crm, cid, ticket_number="SN20260302001", actor="wang.fang")
    assert link["url"] == f"http://localhost:5000/survey/{link['token']}"
    shown = open_survey_link(crm, link["token"])
    assert shown["customer_name"] == "张**" and shown["ticket_number"] == "SN20260302001"
    out = submit_survey_link(crm, link["token"], GOOD)
    assert out["overall"] == 5 and not out["low_score"] and out["followup_instance_id"] is None
    with pytest.raises(SurveyLinkUsed) as used:
        submit_survey_link(crm, link["token"], LOW)
    assert used.value.reason == "used" and "already answered on 2026-03-02 10:00" in str(used.value)
    assert "已于 2026-03-02 10:00" in used.value.messages["zh"]
    with pytest.raises(SurveyLinkUsed):
        open_survey_link(crm, link["token"])
    assert _responses(crm) == 1
    with crm.Session() as s:
        resp = s.scalar(select(SurveyResponse))
        assert (resp.channel, resp.taken_by, resp.ticket_number, resp.link_id) == (
            "link", "customer", "SN20260302001", link["link_id"])
        assert resp.suggestions == {"overall": "工程师很专业"}
        assert s.get(SurveyLink, link["link_id"]).response_id == resp.id
        (contact,) = list_contacts(s, cid)
        assert contact["kind"] == "survey" and "overall satisfaction 5/5" in contact["summary"]


def test_an_expired_link_says_so_and_stores_nothing(crm, clock):
    cid = add(crm, enterprise(1))
    link = create_survey_link(crm, cid, expires_in="PT48H")
    clock.advance(timedelta(hours=47, minutes=59))
    assert open_survey_link(crm, link["token"])["customer_name"] == "测试科技有限公司1号"
    clock.advance(timedelta(minutes=1))
    with pytest.raises(SurveyLinkExpired) as err:
        open_survey_link(crm, link["token"])
    assert err.value.reason == "expired" and "expired on 2026-03-04 10:00 (China time)" in str(err.value)
    with pytest.raises(SurveyLinkExpired):
        submit_survey_link(crm, link["token"], GOOD)
    assert _responses(crm) == 0
    with crm.Session() as s:
        assert s.get(SurveyLink, link["link_id"]).used_at is None


def test_tampered_forged_and_guessed_links_are_refused(crm, monkeypatch):
    cid = add(crm, enterprise(1))
    link = create_survey_link(crm, cid, expires_in="PT1H")
    link_id, expiry, signature = link["token"].split(".")
    assert len(link_id) == 22 and link_id != create_survey_link(crm, cid)["link_id"]  # 128 random bits each
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    longer = str(int(expiry) + 30 * 86400)
    forged_other = make_token(crm, "A" * 22, crm.now() + timedelta(days=1))  # well signed, unknown id
    for token in (f"{link_id}.{expiry}.{flipped}", f"{link_id}.{longer}.{signature}", forged_other,
                  f"{link_id}.{expiry}", "", "../../etc/passwd", link_id, f"{cid}.{expiry}.{signature}"):
        with pytest.raises(SurveyLinkInvalid) as err:
            open_survey_link(crm, token)
        assert err.value.reason == "invalid" and "not valid" in str(err.value)
        with pytest.raises(SurveyLinkInvalid):
            submit_survey_link(crm, token, GOOD)
    monkeypatch.setenv("CAREFLOW_SECRET_KEY", "another-deployment")
    with pytest.raises(SurveyLinkInvalid):
        open_survey_link(crm, link["token"])
    assert _responses(crm) == 0


def test_a_low_score_starts_a_follow_up_for_the_supervisor(crm):
    deploy(crm, "satisfaction_followup.bpmn")
    cid = add(crm, enterprise(1, annual_spend=50_000))
    out = submit_survey_link(crm, create_survey_link(crm, cid)["token"], LOW)
    assert out["low_score"] and out["followup_instance_id"]
    (task,) = crm.tasks(instance_id=out["followup_instance_id"])
    assert (task["lane"], task["assignee"]) == ("supervisor", "li.na")
    assert task["due_at"] == (crm.now() + timedelta(hours=24)).isoformat()
    assert "等了两天才有人回电" in task["instructions"] and "2/5" in task["instructions"]
    assert crm.tasks(user="li.na")[0]["id"] == task["id"]
    crm.complete(task["id"], {"follow_up": {"contacted_at": "2026-03-02T15:00:00+08:00", "mode": "phone",
                                            "cause": "回电太慢", "actions": "指定专人 4 小时内回电",
                                            "outcome": "improving"}}, user="li.na")
    with crm.Session() as s:
        kinds = [(c["kind"], c["by"]) for c in list_contacts(s, cid)]
    assert kinds == [("survey", "li.na"), ("survey", "customer")]
    neutral = record_phone_survey(crm, cid, {**GOOD, "overall": 3}, taken_by="zhang.wei")
    assert not neutral["low_score"] and neutral["followup_instance_id"] is None


def test_a_low_score_without_the_process_keeps_the_answers_and_raises_an_incident(crm):
    cid = add(crm, enterprise(1))
    out = record_phone_survey(crm, cid, {**LOW, "overall": 1}, taken_by="zhang.wei", ticket_number="SN20260302002")
    assert out["low_score"] and out["followup_instance_id"] is None
    assert _responses(crm) == 1
    with crm.Session() as s:
        (incident,) = s.scalars(select(Incident))
    assert "satisfaction_followup" in incident.message and f"customer #{cid}" in incident.message


def test_answers_are_validated_before_the_link_is_used(crm):
    cid = add(crm, enterprise(1))
    link = create_survey_link(crm, cid)
    with pytest.raises(ValidationFailed) as err:
        submit_survey_link(crm, link["token"], {"response_speed": 6, "resolution_efficiency": "4",
                                                "engineer_expertise": True, "overall_suggestion": "x" * 1001,
                                                "mood": "ok"})
    assert set(err.value.field_errors) == {"response_speed", "engineer_expertise", "overall", "overall_suggestion",
                                           "mood"}
    assert submit_survey_link(crm, link["token"], GOOD)["overall"] == 5


def test_the_form_file_and_the_validator_agree():
    from jsonschema import Draft202012Validator

    schema = json.loads((ROOT / "forms" / "survey.schema.json").read_text())
    form = Draft202012Validator(schema)
    for answers, ok in ((GOOD, True), (LOW, True), ({**GOOD, "overall": 0}, False), ({"overall": 5}, False),
                        ({**GOOD, "extra": 1}, False)):
        assert form.is_valid(answers) is ok
        try:
            validate_answers(answers)
            valid = True
        except ValidationFailed:
            valid = False
        assert valid is ok


def test_two_submissions_at_once_store_one(crm, settings):
    cid = add(crm, enterprise(1))
    token = create_survey_link(crm, cid)["token"]
    engines = [Careflow(settings, clock=FrozenClock(crm.now())) for _ in range(4)]

    def submit(eng) -> str:
        try:
            submit_survey_link(eng, token, GOOD)
            return "stored"
        except SurveyLinkUsed:
            return "used"

    outcomes = race(engines, submit)
    assert sorted(outcomes) == ["stored", "used", "used", "used"]
    assert _responses(crm) == 1


def test_the_secret_is_generated_once_in_careflow_home(crm, settings, monkeypatch):
    monkeypatch.delenv("CAREFLOW_SECRET_KEY")
    cid = add(crm, enterprise(1))
    token = create_survey_link(crm, cid)["token"]
    path = settings.home / "secret_key"
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = path.read_text()
    assert open_survey_link(crm, token)  # the same secret is read back
    create_survey_link(crm, cid)
    assert path.read_text() == secret


def test_cli_survey_link_submit_and_take(runner, crm):
    cid = add(crm, enterprise(1))
    made = runner.invoke(cli, ["survey", "link", "--customer", str(cid), "--expires-in", "P3D", "--json"])
    assert made.exit_code == 0, made.output
    url = json.loads(made.stdout)["url"]
    ok = runner.invoke(cli, ["survey", "submit", url, "--data", json.dumps(GOOD)])
    assert ok.exit_code == 0 and "overall 5/5" in ok.output
    used = runner.invoke(cli, ["survey", "submit", url, "--data", json.dumps(GOOD), "--json"])
    assert used.exit_code == 3 and "already answered" in json.loads(used.stdout)["message"]
    bad = runner.invoke(cli, ["survey", "submit", url + "x", "--data", json.dumps(GOOD)])
    assert bad.exit_code == 4 and "not valid" in bad.output
    wrong = runner.invoke(cli, ["survey", "link", "--customer", str(cid), "--expires-in", "3WD"])
    assert wrong.exit_code == 2
    taken = runner.invoke(cli, ["survey", "take", "--customer", str(cid), "--user", "zhang.wei", "--data",
                                json.dumps({**GOOD, "overall": "4"})])
    assert taken.exit_code == 0, taken.output
    missing = runner.invoke(cli, ["survey", "link", "--customer", "999"])
    assert missing.exit_code == 4
