"""Appending audit rows takes fast paths: the row's hashed text is written field by field
(``engine.audit._content_text``), ``data_diff``/``details`` are encoded by a reused C encoder
(``_json``) and tokenized by a copying walk with its rules inline (``engine.pii``). These
tests hold them to the straightforward definitions: ``canonical_content`` for the hashed
bytes, ``canonical_json`` for the stored text, and a plain recursive tokenizer written from
the documented rules (``reference_tokenize``), on every row of a real after-sales run and on
edge cases, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import enum
import random
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from engine import audit, pii, runtime
from engine.audit import (
    HASHED_FIELDS,
    AuditEvent,
    append_events,
    canonical_content,
    canonical_json,
    chain_hash,
    entry_to_dict,
)
from engine.audit_verify import verify_chain
from engine.serialization import to_jsonable

from conftest import ROOT

AT = datetime(2026, 11, 23, 3, 2, 6, 152245, tzinfo=UTC)
# every character JSON escapes, and some it does not
WEIRD = 'q"uote \\back\\slash /~ \n\t\r\b\f\x01\x1f\x7f \u2028\u2029 中文 😀 é'
WEIRD_DATA = WEIRD + "\x00"  # NUL only inside JSON documents: PostgreSQL text columns refuse it
REF_LIKE = "pii:" + "0" * 64


class Level(enum.IntEnum):
    HIGH = 3


class Tag(enum.StrEnum):
    RED = "red"


class Text(str):
    pass


class Shown:
    """Encoded through ``default=str``; its ``__str__`` lets other threads run meanwhile."""

    def __str__(self) -> str:
        time.sleep(0)
        return "shown"


# ----------------------------------------------------------------------------- the straightforward path

def reference_tokenize(obj, root: str, out: list) -> object:
    """``data_diff``/``details`` with personal data swapped for references, by the rules as documented:
    convert to plain JSON, then walk it; a string or int item is taken when its field name (or an
    enclosing one) names a kind, unless it is already masked, or when its shape is one (strings
    that look like a reference too; ints from 11 digits on)."""
    value = to_jsonable(obj)
    return _reference_walk(value, None, root, out) if isinstance(value, dict | list) else value


def _reference_walk(obj, kind, path, out):
    result = {} if isinstance(obj, dict) else [None] * len(obj)
    for key, v in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
        where = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
        k = (pii.key_kind(key) if isinstance(key, str) else None) or kind
        if isinstance(v, dict | list):
            result[key] = _reference_walk(v, k, where, out)
            continue
        if type(v) is str:
            if k is None:
                k = pii.shape_kind(v) or ("other" if v.startswith(pii.TOKEN_PREFIX) else None)
            elif pii._is_masked(v):
                k = None
        elif type(v) is int:
            if k is None and v >= 10_000_000_000:
                k = pii.shape_kind(str(v))
        else:
            k = None
        result[key] = v if k is None else pii._tokenize(v, k, where, out)
    return result


def reference_append(events: list[AuditEvent], seq: int, prev: str) -> list[tuple[dict, list]]:
    """What appending ``events`` after (``seq``, ``prev``) gives, computed the plain way:
    (the row's values as observers get them, the personal data taken)."""
    rows = []
    for ev in events:
        seq += 1
        values = {**ev.__dict__, "seq": seq, "at": ev.at}
        taken: list = []
        for name in ("data_diff", "details"):
            if values[name] is not None:
                values[name] = reference_tokenize(values[name], name, taken)
        values["prev_hash"], values["hash"] = prev, chain_hash(prev, values)
        if taken:
            values["_pii_clear"] = {p.ref: p.value for p in taken}
        rows.append((values, taken))
        prev = values["hash"]
    return rows


@pytest.fixture
def fixed_secrets(monkeypatch):
    """One per-value key for every value, so references depend on the value only and the fast
    path and the reference give the same ones (``pii``'s own ``os`` only: task ids stay random)."""
    monkeypatch.setattr(pii, "os", SimpleNamespace(urandom=lambda n: b"\x5a" * n))


def stored(cf) -> tuple[dict[int, tuple[str, str]], list[tuple]]:
    """The stored JSON text of every audit row, and every ``audit_pii`` row."""
    with cf.db.connect() as c:
        texts = {seq: (diff, details) for seq, diff, details in c.execute(text(
            "SELECT seq, CAST(data_diff AS TEXT), CAST(details AS TEXT) FROM audit_log ORDER BY seq"))}
        pii_rows = [tuple(r) for r in c.execute(text(
            "SELECT seq, path, kind, ref, secret, value, norm FROM audit_pii ORDER BY id"))]
    return texts, pii_rows


def assert_appended_as_reference(calls: list, cf) -> None:
    """Each recorded ``append_events`` call returned, stored and hashed what ``reference_append``
    computes from its events; the chain verifies."""
    texts, pii_rows = stored(cf)
    expected_texts, expected_pii = {}, []
    for before, events, rows in calls:
        assert events == before  # the events are left as they were
        expected = reference_append(before, rows[0].seq - 1, rows[0].prev_hash)
        assert len(rows) == len(expected)
        for row, (values, taken) in zip(rows, expected, strict=True):
            assert list(row.__dict__) == list(values)  # same attributes, in the same order
            assert row.__dict__ == values
            assert entry_to_dict(row, masked=False) == entry_to_dict(SimpleNamespace(**values), masked=False)
            assert row.hash == chain_hash(row.prev_hash, row.__dict__)
            expected_texts[row.seq] = (canonical_json(values["data_diff"]), canonical_json(values["details"]))
            expected_pii += [tuple(p.to_values(row.seq)[c] for c in ("seq", "path", "kind", "ref", "secret", "value",
                                                                      "norm")) for p in taken]
    assert {seq: texts[seq] for seq in expected_texts} == expected_texts
    assert [r for r in pii_rows if r[0] in expected_texts] == expected_pii
    result = verify_chain(cf.db)
    assert result.ok, result
    assert result.pii_checked == len(pii_rows)


# ----------------------------------------------------------------------------- a real after-sales run

def _after_sales():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from scenario import AFTER_SALES
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return AFTER_SALES


def test_a_real_after_sales_run_appends_what_the_plain_path_computes(cf, fixed_secrets, monkeypatch):
    """Every audit row of the benchmark's after-sales path (deploy, start, four completions)."""
    calls = []
    real = runtime.append_events

    def recording(session, events):
        before = copy.deepcopy(events)
        rows = real(session, events)
        calls.append((before, events, rows))
        return rows

    monkeypatch.setattr(runtime, "append_events", recording)
    scenario = _after_sales()
    cf.deploy([ROOT / "workflows"])
    r = cf.start(scenario.process_id, scenario.initial_data, actor="bench")
    while r.ready_tasks:
        task = r.ready_tasks[0]
        r = cf.complete(task["id"], scenario.data_for(task["name"]), user="bench")
    assert r.status == "completed"
    assert len(calls) == 6 and sum(len(rows) for _, _, rows in calls) >= 40  # deploy, start, 4 completions
    assert_appended_as_reference(calls, cf)
    # the intake's phones and e-mail were taken out
    assert sum(len(getattr(row, "_pii_clear", {})) for _, _, rows in calls for row in rows) >= 3


# ----------------------------------------------------------------------------- edge cases, both databases

def edge_events() -> list[AuditEvent]:
    """Rows with awkward strings, numbers, shapes and types in every place."""
    east8 = AT.astimezone(timezone(timedelta(hours=8)))
    return [
        AuditEvent(action="task_completed", actor=WEIRD, cause="user", at=AT, instance_id=7, process_id="p/1",
                   process_version_id=3, task_id=str(uuid.UUID(int=1)), task_name=WEIRD, task_title="受理登记 / Intake",
                   lane="customer_service", form_version="0" * 64,
                   data_diff={"added": {"note": WEIRD_DATA, "phones": ["13812345678", {"mobile": 13900001111}],
                                        "float": 1.5, "neg": -0.0, "huge": 1e300, "big": 10 ** 15, "small": -7,
                                        "nested": [[[]], {}, [{"email": ["a@b.cn", None, True, 2.5]}]],
                                        "masked": "139****0001", "ref_like": REF_LIKE, "contact": {
                                            "phone": "139****0001", "name": "王磊"}},
                              "changed": {"contact_email": ["a@b.cn", "c@d.cn"], "n": [1, 2]},
                              "removed": ["x", "y/z~"]},
                   details={"when": AT, "amount": Decimal("12.50"), "day": date(2026, 1, 2),
                            "pair": ("13812345678", 2), 5: "five", "big": 1 << 70, "set_of": ["0571-88886666"]}),
        AuditEvent(action="bare", actor="system", cause="system", at=AT),
        AuditEvent(action="shapes", actor="timer", cause="timer", at=east8, instance_id=0, process_version_id=-1,
                   details={"id_number": "11010519491231002X", "text": "请回电 0571-88886666，谢谢",
                            "long": "x" * 300 + " 13812345678", "credit": "91350100M000100Y43",
                            "ticket": "SN20261123001", "uuid": str(uuid.UUID(int=2)), "at": "2026-11-23T03:00:06+00:00",
                            "padded": " 13812345678 ", "intl": "+86 138-1234-5678", "int_phone": 13812345678,
                            "neg_phone": -13812345678, "bool": False, "none": None, "empty": "", "erased": "[erased]"}),
        AuditEvent(action="lists", actor="bench", cause="user", at=AT, data_diff={"added": {"手机": [
            "13812345678", 13812345678, None, True, 2.5, ["13900001111"]]}},
                   details=[{"tel": "010-12345678"}, "a@b.cn", REF_LIKE, [["13812345678"]]]),
        AuditEvent(action="scalars", actor="bench", cause="user", at=AT, data_diff={}, details="13812345678"),
        AuditEvent(action="keys", actor="bench", cause="user", at=AT, data_diff={"added": {1: "a", "1": "b"}},
                   details={"a/b": {"c~d": "13812345678"}, "": "a@b.cn", "pii:x": 1}),
        AuditEvent(action="types", actor="bench", cause="user", at=AT, task_name=Text("子类"), lane=Tag.RED,
                   process_version_id=Level.HIGH, details={"tag": Tag.RED, "level": Level.HIGH, "text": Text("t")}),
    ]


def test_edge_case_rows_append_what_the_plain_path_computes(cf, fixed_secrets):
    calls = []
    for events in (edge_events()[:3], edge_events()[3:], edge_events()[::-1]):
        before = copy.deepcopy(events)
        with cf.Session() as s, s.begin():
            rows = append_events(s, events)
        calls.append((before, events, rows))
    assert sorted(stored(cf)[0]) == [row.seq for _, _, rows in calls for row in rows]
    assert_appended_as_reference(calls, cf)


# ----------------------------------------------------------------------------- the hashed text

def _row(**fields) -> dict:
    row = {k: None for k in HASHED_FIELDS}
    row.update(action="task_completed", actor="bench", cause="user", at=AT, seq=1)
    row.update(fields)
    return row


ROWS = [
    _row(),
    _row(actor=WEIRD, task_name=WEIRD, task_title="任务 / Task", lane="lane", process_id="p", task_id="t",
         form_version="f", instance_id=1 << 40, process_version_id=0, seq=123456789012),
    _row(at=AT.astimezone(timezone(timedelta(hours=-5, minutes=-30)))),
    _row(at=datetime(2026, 1, 1, 0, 0)),  # naive: read as local time, as canonical_content does
    _row(at="2026-11-23T03:02:06Z"),
    _row(at=None),
    _row(task_name=Text("子类"), lane=Tag.RED, process_version_id=Level.HIGH, instance_id=True, process_id=1.5,
         task_id=Decimal("1.50"), task_title={"b": 1, "a": [None]}, form_version=("t", 1), actor=uuid.UUID(int=3)),
    _row(cause=float("nan"), action=float("inf"), lane=-0.0, task_id=b"bytes"),
    _row(data_diff={"added": {"x": '"data_diff":null,"details":null'}}, details={"b": [1, 2.5, None, True], "a": "中文"}),
    _row(data_diff=[], details={}),
    _row(data_diff="text", details=12),
]


@pytest.mark.parametrize("row", ROWS)
def test_row_text_is_canonical_content(row):
    """The hashed bytes are exactly ``canonical_content`` (what verification recomputes)."""
    fields = {k: v for k, v in row.items() if k != "seq"}
    diff_json, details_json = audit._json(row["data_diff"]), audit._json(row["details"])
    assert audit._content_text(fields, row["seq"], diff_json, details_json).encode() == canonical_content(row)


# ----------------------------------------------------------------------------- the stored text

def _circular_dict():
    d = {"a": 1}
    d["self"] = [d]
    return d


def _circular_list():
    values = [1]
    values.append({"x": values})
    return values


def _deep(n: int):
    value: list = []
    for _ in range(n):
        value = [value]
    return value


JSON_VALUES = [
    None, "text", 5, {}, [], {"b": 1, "a": [1, 2.5, None, True, False]}, {"s": WEIRD_DATA, WEIRD: WEIRD},
    [1e300, -0.0, 1e-7, 1e16, float("nan"), float("inf"), float("-inf")], {"big": 1 << 80, "neg": -(1 << 80)},
    {"when": AT, "day": date(2026, 1, 2), "amount": Decimal("1.50"), "id": uuid.UUID(int=5)},
    {"pair": (1, "a"), "set": {1}, "bytes": b"x", "shown": Shown()}, {2: "x", 1: "y"}, {2.5: "y", -1.5: "z"},
    {None: "z"}, {True: "w", False: "v"},
    {"level": Level.HIGH, "tag": Tag.RED, "text": Text("t"), Text("k"): 1}, [{"z": {"y": {"x": [[[]]]}}}],
    _deep(200),
]
JSON_ERRORS = [_circular_dict(), _circular_list(), {1: "a", "b": 2}, {1: "x", 2.5: "y", None: "z"}, _deep(100_000)]


@pytest.mark.parametrize("value", JSON_VALUES)
def test_json_is_canonical_json(value):
    assert audit._json(value) == canonical_json(value)


@pytest.mark.parametrize("value", JSON_ERRORS)
def test_json_raises_what_canonical_json_raises(value):
    with pytest.raises(Exception) as expected:
        canonical_json(value)
    with pytest.raises(expected.type) as got:
        audit._json(value)
    assert str(got.value) == str(expected.value)


def test_json_forgets_what_a_failed_encoding_was_in_the_middle_of():
    """The reused encoder's circular-reference markers are dropped after an error: the containers
    it was inside are not taken for circular ones next time."""
    inner = {"k": [1]}
    outer = [inner, {"ok": inner}, {1: "a", "b": 2}]
    with pytest.raises(TypeError):
        audit._json(outer)
    outer.pop()
    assert audit._json(outer) == canonical_json(outer) == '[{"k":[1]},{"ok":{"k":[1]}}]'


def test_json_from_several_threads_at_once():
    """One encoder per thread: threads encoding the same containers (and switching in the middle of
    an encoding) never see each other's circular-reference markers."""
    shared = {"rows": [{"n": i, "shown": Shown(), "tags": ["a", "b"]} for i in range(20)]}
    expected = canonical_json(shared)
    errors, results = [], []

    def work():
        try:
            results.extend(audit._json(shared) for _ in range(100))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 600 and set(results) == {expected}


# ----------------------------------------------------------------------------- tokenizing

KEYS = ["phone", "contactPhone", "name", "note", "email", "e-mail", "idNo", "id_no", "ID card", "uscc",
        "credit_code", "手机", "联系电话", "x", "a/b~c", "pii:k", "tel", "hotel", "mobile_masked", "", "customer_id",
        "Contact Mobile", "passport", "steps"]
LEAVES = ["13812345678", "+86 138-1234-5678", "0571-88886666", "a@b.cn", "Zhang.San@Example.com",
          "110101199003071234", "11010519491231002X", "91350100M000100Y43", "139****0001", "z***@b.cn", REF_LIKE,
          "pii:", "SN20261123001", "2026-11-23T03:00:06+00:00", "call 13812345678 now", " 13812345678 ", "王磊",
          "", "x" * 250 + "13812345678", "x" * 250, "[erased]", WEIRD_DATA, 13812345678, 12345, -13812345678,
          10 ** 12, 1.5, -0.0, True, False, None]
NOT_PLAIN = [(1, "13812345678"), date(2026, 1, 2), Decimal("13812345678"), 1 << 70, AT, Tag.RED, Text("a@b.cn")]


def _random_value(rng: random.Random, depth: int, odd: bool):
    roll = rng.random()
    if depth >= 4 or roll < 0.45:
        if odd and rng.random() < 0.08:
            return rng.choice(NOT_PLAIN)
        return rng.choice(LEAVES)
    if roll < 0.75:
        value = {}
        for _ in range(rng.randint(0, 5)):
            key = rng.choice(KEYS) if not (odd and rng.random() < 0.05) else rng.choice([3, 2.5, None])
            value[key] = _random_value(rng, depth + 1, odd)
        return value
    return [_random_value(rng, depth + 1, odd) for _ in range(rng.randint(0, 5))]


def _realistic_documents() -> list:
    scenario = _after_sales()
    payloads = [scenario.data_for(task) for task in scenario.steps]
    return payloads + [{"added": p} for p in payloads] + [{"changed": {k: [v, v] for k, v in p.items()}}
                                                           for p in payloads]


@pytest.mark.parametrize("odd", [False, True], ids=["plain", "with-non-json-types"])
def test_tokenizing_copy_matches_the_plain_rules(odd, fixed_secrets):
    """``_tokenized`` (the copying walk, or convert-then-tokenize for non-JSON types) takes exactly
    what the plain rules take, leaves its input unchanged, and returns the value's canonical text."""
    rng = random.Random(20261123 + odd)
    values = [_random_value(rng, 0, odd) for _ in range(3000)]
    values += _realistic_documents() + [e.data_diff for e in edge_events()] + [e.details for e in edge_events()]
    taken_any = 0
    for value in values:
        before = copy.deepcopy(value)
        expected_out: list = []
        expected = reference_tokenize(value, "details", expected_out)
        out: list = []
        got, got_json = audit._tokenized(value, "details", out)
        assert (got, out) == (expected, expected_out), before
        assert got_json == canonical_json(expected)
        assert value == before
        taken_any += bool(out)
    assert taken_any > 500
