"""Personal data in the audit trail: masked in views and exports, kept out of the hashed rows,
erasable without breaking the chain, unmasked only deliberately and audited."""

from __future__ import annotations

import copy
import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from careflow.cli import cli
from engine import pii
from engine.audit import entries_to_dicts
from engine.audit_query import unmask
from engine.audit_verify import verify_chain
from engine.clock import utcnow
from engine.errors import NotFound, ValidationFailed
from engine.models import AuditEntry, User
from engine.pii import (
    ERASED,
    AuditPii,
    UnmaskRefused,
    erase_subject_pii,
    key_kind,
    mask_data,
    mask_email,
    mask_id_number,
    mask_phone,
    mask_value,
)
from plugins.hookspecs import hookimpl

from conftest import FIXTURES

PHONE, EMAIL, ID_NUMBER, CREDIT = "13800000000", "Zhang.San@Example.com", "110101199003071234", "91350100M000100Y43"


def test_masking_helpers():
    assert mask_phone(PHONE) == "138****0000"
    assert mask_phone("+86 138-0000-0000") == mask_phone(13800000000) == "138****0000"
    assert mask_phone("010-12345678") == "010****5678"
    assert mask_email(EMAIL) == "Z***@Example.com"
    assert mask_id_number(ID_NUMBER) == "110***********1234"
    assert mask_id_number(CREDIT) == "913***********0Y43"
    for fn, value in ((mask_phone, PHONE), (mask_email, EMAIL), (mask_id_number, ID_NUMBER)):
        assert fn(fn(value)) == fn(value)  # masking twice changes nothing
    assert mask_value("data_diff/changed/phone/1", "13912345678") == "139****5678"
    assert mask_value(["details", "contact", "email"], "a@b.cn") == "a***@b.cn"
    assert mask_value("data_diff/added/note", f"请回电 {PHONE}") == "请回电 138****0000"
    data = {"customer": "ACME", "contactPhone": 13800000000, "phones": ["13911112222", {"email": "q@w.io"}],
            "idNo": ID_NUMBER, "unified_social_credit_code": CREDIT, "note": f"mail {EMAIL} or {PHONE}",
            "ticket": "SN20240315001", "due_at": "2024-03-15T14:00:00+00:00", "ok": True,
            "task": "0b5e6a52-8f1c-4c39-9b65-1b2f0f6a0c1d", "checksum": "a1" * 32, "amount": 1200}
    masked = mask_data(data)
    assert masked == {**data, "contactPhone": "138****0000", "phones": ["139****2222", {"email": "q***@w.io"}],
                      "idNo": "110***********1234", "unified_social_credit_code": mask_id_number(CREDIT),
                      "note": "mail Z***@Example.com or 138****0000"}
    assert data["contactPhone"] == 13800000000  # the input is left alone
    assert [key_kind(k) for k in ("mobile", "手机号", "身份证号", "emailAddress", "hotel", "video", "customer")] == \
        ["phone", "phone", "id_number", "email", None, None, None]


@pytest.fixture
def deployed(cf):
    cf.deploy([FIXTURES / "simple.bpmn"], author="olivia")
    return cf


def start_with_pii(cf, phone=PHONE, email=EMAIL, id_number=ID_NUMBER):
    data = {"contact_phone": phone, "email": email, "id_number": id_number,
            "note": f"客户电话 {phone}，备用 13900000000", "channel": "phone"}
    return cf.start("simple_review", data, actor="alice").instance_id


def raw_audit_text(cf) -> str:
    """Everything stored in the hashed audit rows, as text."""
    with cf.db.connect() as c:
        rows = c.execute(text("SELECT * FROM audit_log ORDER BY seq")).all()
    return json.dumps([[str(v) for v in r] for r in rows], ensure_ascii=False)


def add_user(cf, username, role):
    with cf.Session() as s, s.begin():
        s.add(User(username=username, role=role, active=True, created_at=utcnow()))


def test_personal_data_never_enters_the_hashed_rows(deployed):
    cf = deployed
    iid = start_with_pii(cf)
    stored = raw_audit_text(cf)
    for clear in (PHONE, EMAIL, ID_NUMBER, "13900000000"):
        assert clear not in stored
    assert "pii:" in stored and "phone" in stored  # the non-personal value of 'channel' stays as it was
    with cf.Session() as s:
        kept = {r.path: (r.kind, json.loads(r.value)) for r in s.scalars(select(AuditPii))}
    assert kept == {"data_diff/added/contact_phone": ("phone", PHONE), "data_diff/added/email": ("email", EMAIL),
                    "data_diff/added/id_number": ("id_number", ID_NUMBER),
                    "data_diff/added/note": ("text", f"客户电话 {PHONE}，备用 13900000000")}
    [started] = [r for r in cf.audit(iid) if r["action"] == "instance_started"]
    assert started["data_diff"]["added"] == {"contact_phone": "138****0000", "email": "Z***@Example.com",
                                             "id_number": "110***********1234",
                                             "note": "客户电话 138****0000，备用 139****0000", "channel": "phone"}
    with cf.Session() as s:
        rows = list(s.scalars(select(AuditEntry).where(AuditEntry.instance_id == iid).order_by(AuditEntry.seq)))
        clear = entries_to_dicts(s, rows, masked=False)[0]
    assert clear["data_diff"]["added"]["contact_phone"] == PHONE
    assert verify_chain(cf.db).ok


def test_observers_get_masked_data(deployed):
    cf = deployed
    seen = []

    class Observer:
        @hookimpl
        def careflow_audit_event(self, event):
            seen.append(event)

    cf.pm.register(Observer())
    start_with_pii(cf)
    [started] = [e for e in seen if e["action"] == "instance_started"]
    assert started["data_diff"]["added"]["contact_phone"] == "138****0000"


def test_lookalike_references_are_kept_out_too(deployed):
    cf = deployed
    fake = "pii:" + "ab" * 32
    iid = cf.start("simple_review", {"remark": fake}, actor="alice").instance_id
    assert cf.audit(iid)[0]["data_diff"]["added"]["remark"] == fake
    assert verify_chain(cf.db).ok


def test_erasure_keeps_the_chain_and_removes_the_values(deployed):
    cf = deployed
    iid = start_with_pii(cf)
    other = start_with_pii(cf, phone="13711112222", email="li@example.cn", id_number="110101198001011235")
    with cf.Session() as s:
        erased = erase_subject_pii(s, ["+86 138 0000 0000", "zhang.san@example.com", "11010119900307123x"], "dpo",
                                   reason="PIPL request 2024-17")
    assert erased == 3  # phone, e-mail, and the note mentioning the phone (the ID given differs in its last char)
    result = verify_chain(cf.db)
    assert result.ok, result.message
    [started] = [r for r in cf.audit(iid) if r["action"] == "instance_started"]
    added = started["data_diff"]["added"]
    assert added["contact_phone"] == ERASED and added["email"] == ERASED
    assert added["note"] == "客户电话 [erased]，备用 139****0000"  # only the subject's number goes
    assert added["id_number"] == "110***********1234"
    with cf.db.connect() as c:
        pii_text = json.dumps([[str(v) for v in r] for r in c.execute(text("SELECT * FROM audit_pii")).all()])
        erased_rows = c.execute(text("SELECT secret, norm, erased_by FROM audit_pii WHERE erased_at IS NOT NULL")).all()
    assert PHONE not in pii_text and "zhang.san" not in pii_text.lower()
    assert len(erased_rows) == 3 and all(r == (None, None, "dpo") for r in erased_rows)
    assert PHONE not in raw_audit_text(cf)
    [log] = [r for r in cf.audit() if r["action"] == "pii_erased"]
    assert log["actor"] == "dpo" and len(log["details"]["pii_ids"]) == 3 and log["details"]["erased"] == 3
    assert log["details"]["reason"] == "PIPL request 2024-17"
    # the other customer's data is untouched and still checked against its references
    assert cf.audit(other)[0]["data_diff"]["added"]["contact_phone"] == "137****2222"
    with cf.Session() as s:
        assert erase_subject_pii(s, [PHONE], "dpo") == 0
        with pytest.raises(ValidationFailed):
            erase_subject_pii(s, ["  "], "dpo")
    assert verify_chain(cf.db).pii_checked == 8 - 3  # every value still there is checked against its reference


def test_unmask_is_deliberate_and_audited(deployed):
    cf = deployed
    add_user(cf, "root", "admin")
    add_user(cf, "audrey", "auditor")
    iid = start_with_pii(cf)
    [started] = [r for r in cf.audit(iid) if r["action"] == "instance_started"]
    seq = started["seq"]
    with cf.Session() as s:
        out = unmask(s, seq, "root", "customer complaint #12: confirm the number")
    assert out["values"]["data_diff/added/contact_phone"] == PHONE
    assert out["entry"]["data_diff"]["added"]["email"] == EMAIL
    [log] = [r for r in cf.audit(iid) if r["action"] == "pii_unmasked"]
    assert log["actor"] == "root" and log["details"]["seq"] == seq
    assert log["details"]["reason"] == "customer complaint #12: confirm the number"
    assert "data_diff/added/contact_phone" in log["details"]["paths"]
    count = len(cf.audit())
    with cf.Session() as s:
        with pytest.raises(UnmaskRefused):
            unmask(s, seq, "audrey", "curious")
        with pytest.raises(UnmaskRefused):
            unmask(s, seq, "nobody", "curious")
        with pytest.raises(ValidationFailed):
            unmask(s, seq, "root", " ")
        with pytest.raises(NotFound):
            unmask(s, 99999, "root", "why")
    assert len(cf.audit()) == count  # refusals reveal nothing and write nothing
    assert verify_chain(cf.db).ok


def test_cli_export_is_masked_and_unmasking_is_audited(deployed, runner, tmp_path):
    cf = deployed
    add_user(cf, "root", "admin")
    add_user(cf, "audrey", "auditor")
    start_with_pii(cf)
    res = runner.invoke(cli, ["audit", "export"])
    assert res.exit_code == 0 and "138****0000" in res.output and PHONE not in res.output
    res = runner.invoke(cli, ["audit", "export", "--format", "json"])
    assert PHONE not in res.output and json.loads(res.output)["masked"] is True

    res = runner.invoke(cli, ["audit", "export", "--unmask", "--as", "audrey"])
    assert res.exit_code == 1 and "may not see personal data" in res.output and PHONE not in res.output
    res = runner.invoke(cli, ["audit", "export", "--unmask"])
    assert res.exit_code == 2
    out = tmp_path / "clear.csv"
    res = runner.invoke(cli, ["audit", "export", "--unmask", "--as", "root", "--reason", "court order 5",
                              "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    [started] = [r for r in rows if r["action"] == "instance_started"]
    assert json.loads(started["data_diff"])["added"]["contact_phone"] == PHONE
    [log] = [r for r in cf.audit() if r["action"] == "pii_unmasked"]
    assert log["actor"] == "root" and log["details"]["export"] == "csv" and log["details"]["reason"] == "court order 5"
    assert rows[-1]["action"] == "pii_unmasked"  # committed before any row was read: the export shows it


def test_cli_erase_pii(deployed, runner):
    cf = deployed
    iid = start_with_pii(cf)
    res = runner.invoke(cli, ["audit", "erase-pii", "-", EMAIL, "--user", "dpo", "--json"], input=f"{PHONE}\n\n")
    assert res.exit_code == 0 and json.loads(res.output) == {"erased": 3}
    assert cf.audit(iid)[0]["data_diff"]["added"]["contact_phone"] == ERASED
    assert runner.invoke(cli, ["audit", "verify"]).exit_code == 0
    assert runner.invoke(cli, ["audit", "erase-pii", "x"]).exit_code == 2


PLAIN_VALUES = [
    {"phone": "13812345678", "note": "call 0571-88886666 or it@x.example.com", "n": 13812345678, "ok": True},
    {"contact": {"name": "王磊", "mobile": "13812345678", "tags": ["a", "13900001111"]}, "score": 4.5, "x": None},
    [{"email": "A@B.example.com"}, ["139****0001", "pii:abc"], 12, 10_000_000_001],
    {"手机": "13812345678", "list": [{"idNumber": "11010519491231002X"}], "deep": {"a": {"b": {"c": "c"}}}},
    {"steps": [{"at": "2026-11-23T09:00:00+08:00", "action": "重启", "result": "ok"}], "empty": {}, "e": []},
]
NOT_PLAIN_VALUES = [
    {"phone": "13812345678", "when": datetime(2026, 1, 1, tzinfo=UTC)},
    {"mobile": "13812345678", "amount": Decimal("1.50")},
    {"a": ("13812345678", 1)},
    {1: "13812345678"},
    {"big": 1 << 70, "phone": "13812345678"},
]


def _deterministic(monkeypatch):
    counter = iter(range(10_000))
    monkeypatch.setattr(pii.os, "urandom", lambda n: next(counter).to_bytes(n, "big"))


@pytest.mark.parametrize("value", PLAIN_VALUES + NOT_PLAIN_VALUES)
def test_tokenized_copy_equals_convert_then_tokenize(value, monkeypatch):
    """The audit's one-walk tokenizing copy gives what to_jsonable + extract_pii gives, and leaves the input."""
    from engine.serialization import to_jsonable

    original = copy.deepcopy(value)
    _deterministic(monkeypatch)
    expected_out: list = []
    expected = pii.extract_pii(to_jsonable(value), "data_diff", expected_out)
    _deterministic(monkeypatch)
    out: list = [object()]  # what was taken before stays
    try:
        got = pii.extract_pii_copy(value, "data_diff", out)
    except pii.NotPlain:
        assert value in NOT_PLAIN_VALUES and len(out) == 1
        return
    assert value in PLAIN_VALUES
    assert got == expected and out[1:] == expected_out
    assert value == original
