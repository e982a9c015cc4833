"""The customer registry: validation, duplicates, merge, tiers, contact history, masking, CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from careflow.cli import cli
from engine.clock import FrozenClock
from engine.customers import (
    Customer,
    CustomerContact,
    CustomerMerge,
    DuplicateCustomer,
    get_customer,
    list_contacts,
    mask_email,
    mask_id,
    mask_phone,
    merge_customers,
    normalize_phone,
    record_contact,
    retier_all,
    search_customers,
    update_customer,
    validate_customer,
)
from engine.errors import Conflict, NotFound, ValidationFailed
from engine.runtime import Careflow
from plugins.manager import get_plugin_manager

from crm_helpers import add, add_user, audit_rows, credit_code, enterprise, mobile, sh


@pytest.fixture
def clock():
    return FrozenClock(sh(2026, 3, 2, 10))


@pytest.fixture
def crm(settings, clock):
    eng = Careflow(settings, clock=clock)
    yield eng
    eng.close()


# ------------------------------------------------------------------------------ validation


def test_every_bad_field_is_reported_with_its_name():
    with pytest.raises(ValidationFailed) as err:
        validate_customer({"customer_type": "enterprise", "name": " ", "phone": "12345", "email": "x@",
                           "credit_code": "91110108102345675A", "annual_spend": "lots", "source": "tv",
                           "first_contact_date": "2026-13-01", "colour": "red"})
    errors = err.value.field_errors
    assert set(errors) == {"name", "phone", "email", "credit_code", "annual_spend", "source", "first_contact_date",
                           "colour"}
    assert errors["name"] == ["is required"]
    assert "check character is wrong" in errors["credit_code"][0] and "'J'" in errors["credit_code"][0]
    assert "mobile" in errors["phone"][0]
    assert errors["colour"] == ["unknown field"]


def test_required_fields_and_what_each_customer_type_needs():
    with pytest.raises(ValidationFailed) as err:
        validate_customer({})
    assert set(err.value.field_errors) == {"customer_type", "name", "phone"}
    with pytest.raises(ValidationFailed) as err:
        validate_customer({"customer_type": "enterprise", "name": "某公司", "phone": mobile(1)})
    assert err.value.field_errors == {"credit_code": ["is required for an enterprise"]}
    with pytest.raises(ValidationFailed) as err:
        validate_customer({"customer_type": "individual", "name": "张三", "phone": mobile(1),
                           "credit_code": credit_code(1)})
    assert "individual customer has no credit code" in err.value.field_errors["credit_code"][0]
    clean = validate_customer({"customer_type": "个人", "name": "张三", "phone": mobile(1),
                               "id_number": "110105198503152348"})
    assert clean["customer_type"] == "individual"
    assert clean["birthday"].isoformat() == "1985-03-15"  # taken from the ID number


@pytest.mark.parametrize("code, problem", [
    ("91110108102345675J", None),
    ("91110108102345675K", "check character is wrong"),
    ("91110108102345I75J", "only digits and capital letters"),
    ("9111010810234567", "must be 18 characters"),
    ("91ABCDEF102345675J", "administrative division"),
])
def test_credit_code_check_character(code, problem):
    data = {"customer_type": "enterprise", "name": "某公司", "phone": mobile(1), "credit_code": code}
    if problem is None:
        assert validate_customer(data)["credit_code"] == code
    else:
        with pytest.raises(ValidationFailed) as err:
            validate_customer(data)
        assert problem in err.value.field_errors["credit_code"][0]


@pytest.mark.parametrize("number, problem", [
    ("110105198503152348", None),
    ("11010519850315234x", None),  # lower-case x is normalised (and then has the wrong check digit)
    ("110105198503152341", "check digit is wrong"),
    ("110105198502302348", "not a valid birth date"),
    ("11010519850315234", "must be 18 characters"),
    ("110105208503152348", "not plausible"),
])
def test_resident_id_check_digit(number, problem):
    data = {"customer_type": "individual", "name": "张三", "phone": mobile(1), "id_number": number}
    if number.endswith("x"):
        problem = "check digit is wrong"
    if problem is None:
        assert validate_customer(data)["id_number"] == number
    else:
        with pytest.raises(ValidationFailed) as err:
            validate_customer(data)
        assert problem in err.value.field_errors["id_number"][0]


@pytest.mark.parametrize("raw, display, key", [
    ("13901234567", "13901234567", "13901234567"),
    ("+86 139-0123-4567", "13901234567", "13901234567"),
    ("0086 13901234567", "13901234567", "13901234567"),
    ("８６１３９０１２３４５６７", "13901234567", "13901234567"),
    ("１３９ ０１２３ ４５６７", "13901234567", "13901234567"),
    ("010-12345678", "010-12345678", "01012345678"),
    ("(010) 1234 5678 转 12", "010-12345678-12", "0101234567812"),
    ("0571 8765 1234", "0571-87651234", "057187651234"),
    ("+86 10 12345678", "010-12345678", "01012345678"),
    ("400-800-1234", "400-800-1234", "4008001234"),
])
def test_phone_numbers_are_normalised(raw, display, key):
    assert normalize_phone(raw) == (display, key)


@pytest.mark.parametrize("raw", ["12345678901", "1390123456", "139012345678", "010-123", "phone", "+1 415 555 0100",
                                 "0000-0000000"])
def test_bad_phone_numbers_are_refused(raw):
    with pytest.raises(ValueError):
        normalize_phone(raw)


def test_email_dates_money_and_vocabularies():
    clean = validate_customer({
        "customer_type": "Enterprise", "name": "  某   公司 ", "phone": mobile(2), "credit_code": credit_code(2),
        "email": "Wang.JG@HuaLian.CN", "first_contact_date": "2024年3月5日", "annual_spend": "¥1.5万",
        "need_types": "产品购买、售后服务", "source": "展会", "industry": "39", "has_inquiries": "是",
        "strategic_value": "a"})
    assert clean["name"] == "某 公司"
    assert clean["email"] == "Wang.JG@hualian.cn"
    assert clean["first_contact_date"].isoformat() == "2024-03-05"
    assert clean["annual_spend"] == 15000
    assert clean["need_types"] == ["product_purchase", "after_sales_service"]
    assert clean["source"] == "exhibition"
    assert clean["industry"] == "C39"
    assert clean["has_inquiries"] is True
    assert clean["strategic_value"] == "A"
    with pytest.raises(ValidationFailed) as err:
        validate_customer({**enterprise(3), "industry": "A39"})
    assert "belongs to section C" in err.value.field_errors["industry"][0]


def test_masking():
    assert mask_phone("13800000000") == "138****0000"
    assert mask_phone("010-12345678") == "010-****5678"
    assert mask_phone("0571-87651234-12") == "0571-****1234"
    assert mask_email("zhang.san@example.com") == "z***@example.com"
    assert mask_id("110105198503152348") == "1101**********2348"
    assert mask_phone(None) is None and mask_email("") == ""


# ------------------------------------------------------------------------------ duplicates


def test_duplicates_are_detected_at_entry(crm):
    first = add(crm, enterprise(1, email="a@example.com"))
    with crm.Session() as s, s.begin(), pytest.raises(DuplicateCustomer) as err:
        from engine.customers import add_customer

        add_customer(s, enterprise(2, credit_code=credit_code(1)), pm=crm.pm)
    assert err.value.matches == [{"id": first, "name": "测试科技有限公司1号", "reasons": ["same credit code"]}]
    assert isinstance(err.value, Conflict)
    with crm.Session() as s, s.begin(), pytest.raises(DuplicateCustomer) as err:
        from engine.customers import add_customer

        add_customer(s, enterprise(3, phone="+86 139 0000 0001"), pm=crm.pm)
    assert err.value.matches[0]["reasons"] == ["same phone 139****0001"]
    assert "careflow customers merge" in str(err.value)
    # offered for merge: the entry updates the existing customer instead
    with crm.Session() as s, s.begin():
        from engine.customers import add_customer

        c = add_customer(s, {**enterprise(1), "email": "b@example.com", "notes": "second entry"}, pm=crm.pm,
                         on_duplicate="merge", actor="li.na")
        assert c.id == first and c.email == "b@example.com"
    with crm.Session() as s:
        assert s.scalar(select(text("count(*)")).select_from(Customer)) == 1
    change = audit_rows(crm, "customer_contact_changed")[-1]
    assert change["actor"] == "li.na"
    assert change["details"]["changes"]["email"] == ["a***@example.com", "b***@example.com"]


def test_the_database_refuses_a_second_active_customer_with_the_same_phone(crm):
    add(crm, enterprise(1))
    with crm.Session() as s, pytest.raises(IntegrityError):
        with s.begin():
            now = crm.now()
            s.add(Customer(customer_type="enterprise", name="race", phone=mobile(1), phone_key=mobile(1),
                           need_types=[], has_inquiries=False, status="active", created_at=now, updated_at=now))


# ----------------------------------------------------------------------------------- merge


def test_merge_keeps_both_histories_and_is_audited(crm):
    keep = add(crm, enterprise(1, annual_spend=50_000))
    drop = add(crm, enterprise(2, email="old@example.com", annual_spend=1000, notes="来自展会名单"))
    with crm.Session() as s, s.begin():
        record_contact(s, keep, "note", "kept customer's call", by="zhao.min")
        record_contact(s, drop, "ticket", "ticket on the duplicate", by="wang.fang")
    with crm.Session() as s, s.begin():
        m = merge_customers(s, keep, drop, pm=crm.pm, actor="li.na")
        assert m.moved_contacts == 1
        assert set(m.filled_fields) >= {"email", "notes"}
    with crm.Session() as s:
        kept, dropped = get_customer(s, keep), get_customer(s, drop)
        assert dropped["status"] == "merged" and dropped["merged_into"] == keep
        assert dropped["phone"] == mobile(2)  # the dropped record is kept as it was
        assert kept["email"] == "old@example.com" and "来自展会名单" in kept["notes"]
        contacts = list_contacts(s, keep)
        summaries = [c["summary"] for c in contacts]
        assert "kept customer's call" in summaries and "ticket on the duplicate" in summaries
        moved = next(c for c in contacts if c["summary"] == "ticket on the duplicate")
        assert moved["original_customer_id"] == drop and moved["by"] == "wang.fang"
        assert any(c["kind"] == "note" and f"#{drop} merged" in c["summary"] for c in contacts)
        merge = s.scalar(select(CustomerMerge))
        assert merge.dropped_snapshot["email"] == "old@example.com" and merge.kept_before["email"] is None
    audit = audit_rows(crm, "customer_merged")
    assert len(audit) == 1 and audit[0]["actor"] == "li.na"
    assert audit[0]["details"]["kept_id"] == keep and audit[0]["details"]["dropped_id"] == drop
    # later contacts and changes for the merged id go to (or are refused for) the customer kept
    with crm.Session() as s, s.begin():
        assert record_contact(s, drop, "note", "called the old number").customer_id == keep
    with crm.Session() as s, s.begin(), pytest.raises(Conflict, match="merged into"):
        update_customer(s, drop, {"notes": "x"}, pm=crm.pm)
    with crm.Session() as s, s.begin(), pytest.raises(Conflict, match="already merged"):
        merge_customers(s, keep, drop, pm=crm.pm)
    with crm.Session() as s, s.begin(), pytest.raises(Conflict, match="itself"):
        merge_customers(s, keep, keep, pm=crm.pm)
    # the dropped customer's phone is free again; its credit code now belongs to the kept customer
    add(crm, enterprise(3, phone=mobile(2)))
    with crm.Session() as s, s.begin(), pytest.raises(DuplicateCustomer):
        from engine.customers import add_customer

        add_customer(s, enterprise(4, credit_code=credit_code(1)), pm=crm.pm)


# ----------------------------------------------------------------------- tiers and changes


def test_tier_follows_spend_and_the_rule(crm, settings):
    cid = add(crm, enterprise(1, annual_spend=50_000, strategic_value="C"))
    with crm.Session() as s, s.begin():
        assert get_customer(s, cid)["tier"] == "important"
        update_customer(s, cid, {"annual_spend": "15万"}, pm=crm.pm, actor="li.na")
    with crm.Session() as s:
        assert get_customer(s, cid)["tier"] == "core"
    change = audit_rows(crm, "customer_tier_changed")[-1]
    assert (change["details"]["from"], change["details"]["to"]) == ("important", "core")
    abc = Careflow(settings, plugin_manager=get_plugin_manager(environ={"CAREFLOW_TIER_SCHEME": "abc"}),
                   clock=FrozenClock(crm.now()))
    try:
        with abc.Session() as s, s.begin():
            assert retier_all(s, pm=abc.pm, actor="admin") == [{"id": cid, "from": "core", "to": "C"}]
    finally:
        abc.close()


def test_contact_changes_are_audited_without_personal_data(crm):
    cid = add(crm, enterprise(1))
    with crm.Session() as s, s.begin():
        update_customer(s, cid, {"phone": "138-0000-0000", "contact_person": "李四", "industry": "C"},
                        pm=crm.pm, actor="zhao.min")
    row = audit_rows(crm, "customer_contact_changed")[-1]
    assert row["details"]["changes"]["phone"] == ["139****0001", "138****0000"]
    assert row["details"]["changes"]["contact_person"] == ["王**", "李*"]
    other = audit_rows(crm, "customer_updated")[-1]
    assert other["details"]["changes"] == {"industry": [None, "C"]}
    with crm.Session() as s:
        raw = " ".join(str(v) for v in s.execute(text("SELECT details FROM audit_log")).scalars())
    assert mobile(1) not in raw and "13800000000" not in raw and "李四" not in raw


def test_update_validates_the_whole_record(crm):
    a = add(crm, enterprise(1))
    add(crm, enterprise(2))
    with crm.Session() as s, s.begin(), pytest.raises(ValidationFailed) as err:
        update_customer(s, a, {"phone": None, "email": "nope"}, pm=crm.pm)
    assert set(err.value.field_errors) == {"phone", "email"}
    with crm.Session() as s, s.begin(), pytest.raises(DuplicateCustomer):
        update_customer(s, a, {"phone": mobile(2)}, pm=crm.pm)
    with crm.Session() as s, s.begin(), pytest.raises(ValidationFailed, match="computed"):
        update_customer(s, a, {"tier": "core"}, pm=crm.pm)


# --------------------------------------------------------------------------- reading API


def test_search_get_and_contacts(crm):
    a = add(crm, enterprise(1, name="北京华联精密机械有限公司"))
    b = add(crm, {"customer_type": "individual", "name": "张丽华", "phone": "136 1234 5678",
                  "id_number": "110105198503152348", "email": "zlh@163.com"})
    with crm.Session() as s, s.begin():
        record_contact(s, b, "survey", "survey answered", by="customer")
        assert [c["id"] for c in search_customers(s, "华联", 10, 0)] == [a]
        assert [c["id"] for c in search_customers(s, "1234 5678", 10, 0)] == [b]
        assert [c["id"] for c in search_customers(s, credit_code(1), 10, 0)] == [a]
        assert [c["id"] for c in search_customers(s, str(b), 10, 0)] == [b]
        assert len(search_customers(s, None, 1, 1)) == 1
        d = get_customer(s, b)
        assert d["phone"] == "13612345678" and d["masked"]["phone"] == "136****5678"
        assert d["masked"]["name"] == "张**" and d["masked"]["id_number"] == "1101**********2348"
        assert d["birthday"] == "1985-03-15" and d["masked"]["birthday"] == "****-**-**"
        assert [c["summary"] for c in list_contacts(s, b)] == ["survey answered"]
        with pytest.raises(NotFound):
            get_customer(s, 999)
        with pytest.raises(ValidationFailed, match="kind"):
            record_contact(s, a, "gossip", "x")
        with pytest.raises(ValidationFailed, match="summary"):
            record_contact(s, a, "note", "  ")
        assert s.get(Customer, b).last_contact_at is not None
        assert s.scalar(select(CustomerContact.by).where(CustomerContact.customer_id == b)) == "customer"


# ------------------------------------------------------------------------------------- CLI


def test_cli_add_reports_field_errors_and_duplicates(runner):
    ok = runner.invoke(cli, ["customers", "add", "--json", "--user", "zhang.wei", "--data",
                             json.dumps(enterprise(1, annual_spend=120000))])
    assert ok.exit_code == 0, ok.output
    created = json.loads(ok.output)
    assert created["tier"] == "core" and created["phone"] == "139****0001"  # masked in output
    bad = runner.invoke(cli, ["customers", "add", "--json", "--data", json.dumps({"customer_type": "enterprise"})])
    assert bad.exit_code == 2
    assert set(json.loads(bad.output)["field_errors"]) == {"name", "phone", "credit_code"}
    dup = runner.invoke(cli, ["customers", "add", "--json", "--data", json.dumps(enterprise(2, phone=mobile(1)))])
    assert dup.exit_code == 3
    assert json.loads(dup.output)["matches"][0]["id"] == created["id"]
    text_out = runner.invoke(cli, ["customers", "add", "--data", json.dumps(enterprise(1))])
    assert text_out.exit_code == 3 and "duplicate of customer #1" in text_out.output


def test_cli_export_masks_unless_an_allowed_user_unmasks(runner, settings):
    runner.invoke(cli, ["customers", "add", "--data", json.dumps(enterprise(1, email="wangjg@example.com"))])
    masked = runner.invoke(cli, ["customers", "export"])
    assert masked.exit_code == 0
    assert "139****0001" in masked.output and mobile(1) not in masked.output and "w***@example.com" in masked.output
    refused = runner.invoke(cli, ["customers", "export", "--unmask"])
    assert refused.exit_code == 2 and "--user" in refused.output
    eng = Careflow(settings)
    try:
        add_user(eng, "zhang.wei", role="agent")
        add_user(eng, "li.na", role="supervisor")
    finally:
        eng.close()
    agent = runner.invoke(cli, ["customers", "export", "--unmask", "--user", "zhang.wei"])
    assert agent.exit_code == 2 and "may not see unmasked" in agent.output
    out = settings.home / "customers.csv"
    ok = runner.invoke(cli, ["customers", "export", "--unmask", "--user", "li.na", "--output", str(out)])
    assert ok.exit_code == 0, ok.output
    content = out.read_text(encoding="utf-8-sig")
    assert mobile(1) in content and credit_code(1) in content
    eng = Careflow(settings)
    try:
        exported = audit_rows(eng, "customers_exported")
    finally:
        eng.close()
    assert [(r["actor"], r["details"]["unmasked"]) for r in exported] == [("system", False), ("li.na", True)]


def test_cli_merge_show_and_contact(runner):
    runner.invoke(cli, ["customers", "add", "--data", json.dumps(enterprise(1))])
    runner.invoke(cli, ["customers", "add", "--data", json.dumps(enterprise(2, email="x@example.com"))])
    noted = runner.invoke(cli, ["customers", "contact", "2", "--summary", "promised a quote by Friday",
                                "--user", "zhao.min"])
    assert noted.exit_code == 0, noted.output
    merged = runner.invoke(cli, ["customers", "merge", "1", "2", "--user", "li.na", "--json"])
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.output)["moved_contacts"] == 1
    shown = runner.invoke(cli, ["customers", "show", "1"])
    assert "promised a quote by Friday" in shown.output and "x***@example.com" in shown.output
    again = runner.invoke(cli, ["customers", "merge", "1", "2"])
    assert again.exit_code == 3 and "already merged" in again.output
    missing = runner.invoke(cli, ["customers", "show", "42"])
    assert missing.exit_code == 4
