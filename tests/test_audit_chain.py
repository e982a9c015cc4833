"""The audit chain under attack: direct tampering with the database is named by sequence number
and kind; recorded heads; append-only triggers; audit rows outlive their instances."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import select, text

from careflow.cli import cli
from engine.audit import GENESIS_HASH, chain_hash, current_head
from engine.audit_verify import ChainHead, latest_verification, verification_status, verify_chain
from engine.models import AuditEntry

from conftest import FIXTURES

GUARDED = ("audit_log", "audit_pii", "audit_head")
SQLITE_TRIGGERS = ("audit_log_no_update", "audit_log_no_delete", "audit_pii_no_delete", "audit_pii_erase_only",
                   "audit_head_no_delete", "audit_head_forward_only")


def make_log(cf, instances: int = 3) -> int:
    """A few instances' worth of steps (one carrying a phone number); returns the head seq."""
    cf.deploy([FIXTURES / "simple.bpmn"], author="olivia")
    for i in range(instances):
        r = cf.start("simple_review", {"contact_phone": f"1380000000{i}", "channel": "phone"}, actor="alice")
        [task] = cf.tasks(instance_id=r.instance_id)
        cf.complete(task["id"], {"customer": f"ACME {i}", "amount": 10 + 60 * i}, user="bob")
    with cf.Session() as s:
        return current_head(s)[0]


def tamper(cf, *statements: str, **params) -> None:
    """Change the audit tables behind the application's back, as the tables' owner could."""
    with cf.db.begin() as c:
        if cf.db.dialect.name == "sqlite":
            for name in SQLITE_TRIGGERS:
                c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        else:
            for t in GUARDED:
                c.exec_driver_sql(f"ALTER TABLE {t} DISABLE TRIGGER USER")
        for sql in statements:
            c.execute(text(sql), params)
        if cf.db.dialect.name != "sqlite":
            for t in GUARDED:
                c.exec_driver_sql(f"ALTER TABLE {t} ENABLE TRIGGER USER")


def row_values(cf, seq: int) -> dict:
    with cf.Session() as s:
        row = s.get(AuditEntry, seq)
        return {c.key: getattr(row, c.key) for c in sa.inspect(AuditEntry).columns}


def rewrite_with_hash(cf, seq: int, **changes) -> str:
    """Edit row ``seq`` and store a hash recomputed for the new content (a careful attacker)."""
    values = {**row_values(cf, seq), **changes}
    new_hash = chain_hash(values["prev_hash"], values)
    sets = ", ".join(f"{k} = :{k}" for k in changes)
    tamper(cf, f"UPDATE audit_log SET {sets}, hash = :h WHERE seq = :seq", **changes, h=new_hash, seq=seq)
    return new_hash


def broken(cf, **kwargs):
    result = verify_chain(cf.db, **kwargs)
    assert not result.ok, result
    return result.problem, result.first_bad_seq


def test_intact_chain_verifies(cf):
    head = make_log(cf)
    result = verify_chain(cf.db)
    assert result.ok and result.problem is None and result.first_bad_seq is None
    assert result.rows_checked == head and result.last.seq == head
    assert result.pii_checked == 3  # one phone per instance, each checked against its reference
    with cf.Session() as s:
        assert result.last.hash == current_head(s)[1]


def test_small_batches_and_progress(cf):
    head = make_log(cf)
    calls = []
    result = verify_chain(cf.db, batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert result.ok and result.pii_checked == 3
    assert [d for d, _ in calls] == list(range(4, head, 4)) + [head]
    assert calls[-1][1] == head


def test_edited_row(cf):
    make_log(cf)
    tamper(cf, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 5")
    assert broken(cf) == ("edited", 5)


def test_edited_data_diff(cf):
    make_log(cf)
    [seq] = [r["seq"] for r in cf.audit() if r["action"] == "task_completed"][:1]
    tamper(cf, "UPDATE audit_log SET data_diff = :d WHERE seq = :s", d=json.dumps({"added": {"amount": 1}}), s=seq)
    assert broken(cf) == ("edited", seq)


def test_malformed_json_is_named_not_raised(cf):
    if cf.db.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's json type refuses malformed JSON already")
    make_log(cf)
    tamper(cf, "UPDATE audit_log SET details = '{not json' WHERE seq = 5")
    result = verify_chain(cf.db)
    assert (result.problem, result.first_bad_seq) == ("edited", 5) and "malformed" in result.message


def test_malformed_pii_key_is_named_not_raised(cf):
    make_log(cf)
    with cf.db.connect() as c:
        pii_id, seq = c.execute(text("SELECT id, seq FROM audit_pii ORDER BY id LIMIT 1")).one()
    tamper(cf, "UPDATE audit_pii SET secret = 'zz' WHERE id = :i", i=pii_id)
    assert broken(cf) == ("edited", seq)


def test_rewritten_row_with_recomputed_hash(cf):
    make_log(cf)
    rewrite_with_hash(cf, 6, actor="mallory")
    problem, seq = broken(cf)
    assert (problem, seq) == ("edited", 6)
    assert "recomputed" in verify_chain(cf.db).message


def test_prev_hash_column_edited(cf):
    make_log(cf)
    tamper(cf, "UPDATE audit_log SET prev_hash = :h WHERE seq = 7", h="f" * 64)
    assert broken(cf) == ("edited", 7)


def test_deleted_row(cf):
    make_log(cf)
    tamper(cf, "DELETE FROM audit_log WHERE seq = 8")
    assert broken(cf) == ("deleted", 8)


def test_deleted_rows_and_renumbered(cf):
    head = make_log(cf)
    statements = ["DELETE FROM audit_log WHERE seq IN (8, 9)"]
    statements += [f"UPDATE audit_log SET seq = {s - 2} WHERE seq = {s}" for s in range(10, head + 1)]
    statements.append(f"UPDATE audit_head SET seq = {head - 2}")
    tamper(cf, *statements)
    problem, seq = broken(cf)
    assert (problem, seq) == ("deleted", 8)


def test_reordered_rows(cf):
    make_log(cf)
    tamper(cf, "UPDATE audit_log SET seq = -1 WHERE seq = 10", "UPDATE audit_log SET seq = 10 WHERE seq = 11",
           "UPDATE audit_log SET seq = 11 WHERE seq = -1")
    assert broken(cf) == ("reordered", 10)


def test_row_moved_to_the_end(cf):
    head = make_log(cf)
    tamper(cf, f"UPDATE audit_log SET seq = {head + 1} WHERE seq = 4")
    assert broken(cf) == ("reordered", 4)


def test_truncated_tail(cf):
    head = make_log(cf)
    tamper(cf, f"DELETE FROM audit_log WHERE seq > {head - 3}")
    problem, seq = broken(cf)
    assert (problem, seq) == ("truncated", head - 2)


def test_truncated_table(cf):
    make_log(cf)
    tamper(cf, "DELETE FROM audit_pii", "DELETE FROM audit_log")
    assert broken(cf) == ("truncated", 1)


def test_head_table_disagrees(cf):
    head = make_log(cf)
    tamper(cf, "UPDATE audit_head SET hash = :h", h="a" * 64)
    assert broken(cf) == ("head_mismatch", head)


def test_truncation_covered_up_is_caught_by_a_recorded_head(cf):
    head = make_log(cf)
    with cf.Session() as s:
        recorded = ChainHead(*current_head(s))
    keep = row_values(cf, head - 3)
    tamper(cf, f"DELETE FROM audit_log WHERE seq > {head - 3}", f"DELETE FROM audit_pii WHERE seq > {head - 3}",
           "UPDATE audit_head SET seq = :s, hash = :h", s=head - 3, h=keep["hash"])
    assert verify_chain(cf.db).ok  # indistinguishable from a shorter log without the recorded head
    assert broken(cf, head=recorded) == ("truncated", head - 2)


def test_rewritten_history_is_caught_by_a_recorded_head(cf):
    head = make_log(cf)
    with cf.Session() as s:
        recorded = ChainHead(*current_head(s))
    # rewrite row 3 and re-chain everything after it, head included: the chain itself is consistent
    prev = rewrite_with_hash(cf, 3, actor="mallory")
    for seq in range(4, head + 1):
        prev = rewrite_with_hash(cf, seq, prev_hash=prev)
    tamper(cf, "UPDATE audit_head SET hash = :h", h=prev)
    assert verify_chain(cf.db).ok
    problem, seq = broken(cf, head=recorded)
    assert (problem, seq) == ("head_mismatch", head)


def test_recorded_head_still_extended(cf):
    make_log(cf, instances=1)
    with cf.Session() as s:
        recorded = ChainHead(*current_head(s))
    r = cf.start("simple_review", {}, actor="alice")
    assert r.instance_id
    result = verify_chain(cf.db, head=recorded)
    assert result.ok and result.last.seq > recorded.seq
    assert verify_chain(cf.db, head=ChainHead(recorded.seq, "0" * 64)).problem == "head_mismatch"
    assert broken(cf, head=ChainHead(result.last.seq + 5, "0" * 64)) == ("truncated", result.last.seq + 1)


def test_anchor_after_retention_pruning(cf):
    head = make_log(cf)
    anchor = ChainHead(5, row_values(cf, 5)["hash"])
    tamper(cf, "DELETE FROM audit_pii WHERE seq <= 5", "DELETE FROM audit_log WHERE seq <= 5")
    assert broken(cf) == ("deleted", 1)
    result = verify_chain(cf.db, anchor=anchor)
    assert result.ok and result.rows_checked == head - 5 and result.from_seq == 5
    assert verify_chain(cf.db, anchor=ChainHead(5, "b" * 64)).first_bad_seq == 6


def test_personal_data_tampering(cf):
    make_log(cf)
    with cf.db.connect() as c:
        pii_id, seq = c.execute(text("SELECT id, seq FROM audit_pii ORDER BY id LIMIT 1")).one()
    tamper(cf, "UPDATE audit_pii SET value = :v WHERE id = :i", v='"13999999999"', i=pii_id)
    assert broken(cf) == ("edited", seq)
    assert verify_chain(cf.db, check_pii=False).ok  # the hashed rows themselves are intact


def test_personal_data_deleted_or_forged_erasure(cf):
    make_log(cf)
    with cf.db.connect() as c:
        (id1, seq1), (id2, seq2) = c.execute(text("SELECT id, seq FROM audit_pii ORDER BY id LIMIT 2")).all()
    tamper(cf, "UPDATE audit_pii SET value = NULL, secret = NULL, norm = NULL, erased_at = :t, erased_by = 'x' "
               "WHERE id = :i", t="2024-01-01 00:00:00.000000", i=id2)
    assert broken(cf) == ("edited", seq2)  # marked erased, but no audited erasure names it
    tamper(cf, "DELETE FROM audit_pii WHERE id = :i", i=id1)
    assert broken(cf) == ("deleted", seq1)


def test_no_foreign_keys_into_audit_and_instance_deletion_keeps_rows(cf):
    for table in ("audit_log", "audit_pii", "audit_head"):
        assert sa.inspect(cf.db).get_foreign_keys(table) == []
    referencing = [(t, fk) for t in sa.inspect(cf.db).get_table_names()
                   for fk in sa.inspect(cf.db).get_foreign_keys(t) if fk["referred_table"].startswith("audit")]
    assert referencing == []
    make_log(cf, instances=2)
    before = [r for r in cf.audit(1)]
    with cf.db.begin() as c:  # raw SQL, as a careless cleanup script would
        for table in ("human_tasks", "timers"):
            c.execute(text(f"DELETE FROM {table} WHERE instance_id = 1"))
        c.execute(text("DELETE FROM instances WHERE id = 1"))
        assert c.execute(text("SELECT count(*) FROM instances WHERE id = 1")).scalar() == 0
    assert cf.audit(1) == before and len(before) > 3
    assert verify_chain(cf.db).ok


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET actor = 'mallory' WHERE seq = 1",
    "DELETE FROM audit_log WHERE seq = 1",
    "DELETE FROM audit_log",
    "UPDATE audit_head SET seq = 1, hash = 'x'",
    "DELETE FROM audit_head",
    "DELETE FROM audit_pii",
    "UPDATE audit_pii SET value = '\"1\"'",
    "UPDATE audit_pii SET erased_by = 'x'",
])
def test_append_only_triggers_refuse_changes(cf, statement):
    make_log(cf, instances=1)
    with pytest.raises(sa.exc.DatabaseError) as err, cf.db.begin() as c:
        c.execute(text(statement))
    assert "refused" in str(err.value)
    assert verify_chain(cf.db).ok


def test_truncate_refused_on_postgresql(cf):
    if cf.db.dialect.name != "postgresql":
        pytest.skip("TRUNCATE is a PostgreSQL statement")
    make_log(cf, instances=1)
    for table in GUARDED:
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), cf.db.begin() as c:
            c.execute(text(f"TRUNCATE {table}"))
    assert verify_chain(cf.db).ok


def test_verification_status_checks_only_new_rows(cf):
    make_log(cf, instances=1)
    with cf.Session() as s:
        assert verification_status(cf.db, s)["state"] == "never_verified"
    from engine.audit_verify import record_verification

    with cf.Session() as s, s.begin():
        record_verification(s, verify_chain(cf.db), "auditor")
    cf.start("simple_review", {}, actor="alice")
    with cf.Session() as s:
        status = verification_status(cf.db, s)
        assert status["state"] == "verified" and status["since"]["rows_checked"] == 3
        assert latest_verification(s)["by"] == "auditor"
    last = status["last_full"]["head_seq"]
    tamper(cf, "UPDATE audit_log SET actor = 'm' WHERE seq = :s", s=last + 2)
    with cf.Session() as s:
        status = verification_status(cf.db, s)
    assert status["state"] == "broken" and status["since"]["first_bad_seq"] == last + 2


# -- the command line ---------------------------------------------------------------------------------
def test_cli_head_and_verify(cf, runner):
    head = make_log(cf)
    res = runner.invoke(cli, ["audit", "head"])
    assert res.exit_code == 0
    recorded = res.output.strip()
    seq, hash_ = recorded.split(":")
    assert int(seq) == head and len(hash_) == 64
    res = runner.invoke(cli, ["audit", "head", "--json"])
    assert json.loads(res.output)["head"] == recorded

    res = runner.invoke(cli, ["audit", "verify"])
    assert res.exit_code == 0 and f"{head} rows verified" in res.output
    res = runner.invoke(cli, ["audit", "verify", "--head", recorded, "--json"])
    body = json.loads(res.output)
    assert res.exit_code == 0 and body["ok"] is True and body["rows_checked"] == head
    with cf.Session() as s:
        assert latest_verification(s)["ok"] is True

    tamper(cf, "DELETE FROM audit_log WHERE seq = 4")
    res = runner.invoke(cli, ["audit", "verify"])
    assert res.exit_code == 5
    assert "BROKEN at seq 4: deleted" in res.output
    res = runner.invoke(cli, ["audit", "verify", "--json"])
    body = json.loads(res.output)
    assert res.exit_code == 5 and (body["ok"], body["first_bad_seq"], body["problem"]) == (False, 4, "deleted")
    assert body["rows_checked"] == 3

    res = runner.invoke(cli, ["audit", "verify", "--head", "12:nothex"])
    assert res.exit_code == 2 and "SEQ:HASH" in res.output


def test_cli_audit_instance_still_works(cf, runner):
    make_log(cf, instances=1)
    res = runner.invoke(cli, ["audit", "1", "--json"])
    rows = json.loads(res.output)
    assert res.exit_code == 0 and rows[0]["action"] == "instance_started"
    assert rows[0]["data_diff"]["added"]["contact_phone"] == "138****0000"
    res = runner.invoke(cli, ["audit", "1"])
    assert res.exit_code == 0 and "instance_started" in res.output
    assert runner.invoke(cli, ["audit", "999"]).output.startswith("No audit rows")


def test_genesis(cf):
    result = verify_chain(cf.db)
    assert result.ok and result.rows_checked == 0 and result.last == ChainHead(0, GENESIS_HASH)
    with cf.Session() as s:
        assert s.scalar(select(sa.func.count()).select_from(AuditEntry)) == 0


@pytest.mark.parametrize("diff, details", [
    (None, None),
    ({"added": {"x": "\"data_diff\":null,\"details\":null"}}, {"b": [1, 2.5, None, True], "a": "中文"}),
    ({"changed": {"k": [1, 2]}}, {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "n": Decimal("1.5")}),
    ([], {}),
])
def test_row_text_is_the_canonical_content(diff, details):
    """append_events encodes data_diff/details once and writes the row's text field by field: the
    bytes hashed must be exactly ``canonical_content`` (what verification recomputes from the stored
    row). More cases in test_audit_encoding.py."""
    from engine.audit import _content_text, _json, canonical_content, canonical_json

    row = {"seq": 7, "at": datetime(2026, 11, 23, 1, 2, 3, 456, tzinfo=UTC), "instance_id": 3,
           "process_id": "p", "process_version_id": 1, "actor": 'a"data_diff":null', "cause": "user",
           "action": "task_completed", "task_id": None, "task_name": "t", "task_title": "任务", "lane": None,
           "form_version": None, "data_diff": diff, "details": details}
    diff_json, details_json = _json(diff), _json(details)
    assert (diff_json, details_json) == (canonical_json(diff), canonical_json(details))
    assert _content_text(row, 7, diff_json, details_json).encode() == canonical_content(row)
