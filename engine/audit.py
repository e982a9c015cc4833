"""The audit trail: append-only, hash-chained rows written in the step's transaction.

Each row's hash covers its canonical content and the previous row's hash, so an edited,
deleted or reordered row breaks the chain from that point on. The chain head lives in a
one-row table that is locked while a transaction appends (rows get gap-free sequence
numbers in commit order).

Personal data (phones, e-mails, ID numbers) never enters the hashed content: before
hashing, ``engine.pii`` swaps each such value in ``data_diff`` / ``details`` for a keyed
reference and keeps the value in ``audit_pii``, so erasing it later leaves the chain intact.
``entry_to_dict`` puts the values back, masked unless asked otherwise. Verification is in
``engine.audit_verify``; search, export and unmasking in ``engine.audit_query``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session, object_session

from engine import audit_search
from engine.fastsql import Prepared
from engine.models import AuditEntry, AuditHead
from engine.pii import (
    AuditPii,
    NotPlain,
    PiiValue,
    contains_tokens,
    extract_pii,
    extract_pii_copy,
    load_values,
    mask_data,
    rejoin,
)
from engine.serialization import to_jsonable

GENESIS_HASH = "0" * 64

# Fields covered by the hash, in order.
HASHED_FIELDS = ("seq", "at", "instance_id", "process_id", "process_version_id", "actor", "cause", "action",
                 "task_id", "task_name", "task_title", "lane", "form_version", "data_diff", "details")

# One encoder for every row: json.dumps with these options would build a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
canonical_json = _CANONICAL.encode


@dataclass
class AuditEvent:
    """An audit row before it gets its place in the chain."""

    action: str
    actor: str
    cause: str
    at: datetime
    instance_id: int | None = None
    process_id: str | None = None
    process_version_id: int | None = None
    task_id: str | None = None
    task_name: str | None = None
    task_title: str | None = None
    lane: str | None = None
    form_version: str | None = None
    data_diff: dict | None = None
    details: dict | None = field(default=None)


def data_diff(before: dict, after: dict) -> dict | None:
    """Top-level changes between two task-data dicts: added, changed (old, new), removed."""
    added, changed, removed = {}, {}, []
    for k, v in after.items():
        if k not in before:
            added[k] = v
        elif before[k] != v:
            changed[k] = [before[k], v]
    removed = [k for k in before if k not in after]
    if not (added or changed or removed):
        return None
    out: dict[str, Any] = {}
    if added:
        out["added"] = to_jsonable(added)
    if changed:
        out["changed"] = to_jsonable(changed)
    if removed:
        out["removed"] = sorted(removed)
    return out


def canonical_content(row: dict) -> bytes:
    """The bytes a row's hash covers (without ``prev_hash``)."""
    content = {k: row.get(k) for k in HASHED_FIELDS}
    at = content["at"]
    if isinstance(at, datetime):
        content["at"] = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return canonical_json(content).encode()


def chain_hash(prev_hash: str, row: dict) -> str:
    """Hash of a row given the previous row's hash."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical_content(row)).hexdigest()


class _Encoder(threading.local):
    """``canonical_json`` of a dict or list without its per-call set-up.

    ``JSONEncoder.encode`` builds a new C encoder on every call, which costs as much as
    encoding a small dict; an audit row encodes two of them. This keeps one C encoder per
    thread, made with the very options of ``canonical_json`` (so the text and the errors are
    the same), and its own circular-reference ``markers``: an error can leave entries behind,
    so the encoder is replaced after one.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A fresh encoder with empty markers."""
        c = _CANONICAL
        self.encode = c_make_encoder({}, c.default, encode_basestring, c.indent, c.key_separator,
                                     c.item_separator, c.sort_keys, c.skipkeys, c.allow_nan)


_encoder = _Encoder() if c_make_encoder is not None else None


def _json(value: Any) -> str:
    """``canonical_json(value)``, faster for dicts and lists."""
    t = type(value)
    if (t is dict or t is list) and _encoder is not None:
        encoder = _encoder
        try:
            return "".join(encoder.encode(value, 0))
        except BaseException:
            encoder.reset()
            raise
    return canonical_json(value)


def _scalar_json(value: Any, _str=encode_basestring, _int=int.__repr__) -> str:
    """``canonical_json`` of a row's field value (a string, None or an int, mostly)."""
    t = type(value)
    if t is str:
        return _str(value)
    if value is None:
        return "null"
    if t is int:
        return _int(value)
    return canonical_json(value)


@functools.lru_cache(maxsize=64)
def _at_texts(at: datetime) -> tuple[str, str]:
    """``at`` as hashed (a JSON string: ISO 8601 UTC with Z) and as SQLite stores it (the rows of a
    step share one)."""
    utc = at.astimezone(UTC)
    return f'"{utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"', utc.strftime("%Y-%m-%d %H:%M:%S.%f")


def _content_text(ev: dict, seq: int, diff_json: str, details_json: str) -> str:
    """``canonical_content`` of a row as text, from its event's ``__dict__``, its ``seq`` and the
    canonical JSON of its (tokenized) ``data_diff`` and ``details``.

    ``canonical_content`` encodes a dict of the ``HASHED_FIELDS`` with sorted keys; this writes
    the same text directly, the keys in that sorted order and each value encoded as the C
    encoder encodes it inside the dict (``_scalar_json``). Tests compare the two.
    """
    at = ev["at"]
    at_json = _at_texts(at)[0] if isinstance(at, datetime) else _scalar_json(at)
    s = _scalar_json
    return (f'{{"action":{s(ev["action"])},"actor":{s(ev["actor"])},"at":{at_json},"cause":{s(ev["cause"])},'
            f'"data_diff":{diff_json},"details":{details_json},"form_version":{s(ev["form_version"])},'
            f'"instance_id":{s(ev["instance_id"])},"lane":{s(ev["lane"])},"process_id":{s(ev["process_id"])},'
            f'"process_version_id":{s(ev["process_version_id"])},"seq":{s(seq)},"task_id":{s(ev["task_id"])},'
            f'"task_name":{s(ev["task_name"])},"task_title":{s(ev["task_title"])}}}')


def _tokenized(raw: Any, root: str, taken: list[PiiValue]) -> tuple[Any, str]:
    """``data_diff`` or ``details`` with its personal data swapped for references (appended to
    ``taken``), and that value's canonical JSON text (hashed and stored)."""
    if raw is None:
        return None, "null"
    try:
        value = extract_pii_copy(raw, root, taken)
    except NotPlain:  # dates, Decimals, tuples...: converted first
        value = extract_pii(to_jsonable(raw), root, taken)
    return value, _json(value)


# Prebuilt statements, run on the session's connection: a step appends on every commit.
_head = AuditHead.__table__
_select_head = select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)
_SELECT_HEAD = Prepared(_select_head)
_SELECT_HEAD_FOR_UPDATE = Prepared(_select_head.with_for_update())
_UPDATE_HEAD = Prepared(update(_head).where(_head.c.id == 1).values(seq=bindparam("seq"), hash=bindparam("hash")))
_INSERT_ROWS = insert(AuditEntry.__table__)
_INSERT_PII = Prepared(insert(AuditPii.__table__))


def append_events(session: Session, events: list[AuditEvent]) -> list[SimpleNamespace]:
    """Give ``events`` their sequence numbers and hashes and write them in the session's transaction.

    Returns the rows as written (attribute access like ``AuditEntry``, for ``entry_to_dict``).
    """
    if not events:
        return []
    session.flush()  # pending ORM rows first: the audit rows go straight to the connection
    conn = session.connection()
    dialect = conn.dialect.name
    head = (_SELECT_HEAD_FOR_UPDATE if dialect == "postgresql" else _SELECT_HEAD).first(conn)
    seq, prev = head.seq, head.hash
    rows, pii_rows, params = [], [], []
    stored_at = _STORED_AT.get(dialect)
    last_at = at_param = None
    sha256 = hashlib.sha256
    for ev in events:
        seq += 1
        d = ev.__dict__
        taken: list[PiiValue] = []
        diff, diff_json = _tokenized(d["data_diff"], "data_diff", taken)
        details, details_json = _tokenized(d["details"], "details", taken)
        content = _content_text(d, seq, diff_json, details_json).encode()
        h = sha256(prev.encode() + b"\n" + content).hexdigest()
        row = SimpleNamespace(**d)  # what observers read
        values = row.__dict__  # the event's fields in its order, then these (as ``AuditEntry`` has them)
        values["seq"], values["data_diff"], values["details"], values["prev_hash"], values["hash"] = (
            seq, diff, details, prev, h)
        if stored_at is not None:
            at = d["at"]
            if at is not last_at:  # the rows of a step share one
                last_at, at_param = at, stored_at(at)
            params.append((seq, at_param, d["instance_id"], d["process_id"], d["process_version_id"], d["actor"],
                           d["cause"], d["action"], d["task_id"], d["task_name"], d["task_title"], d["lane"],
                           d["form_version"], diff_json, details_json, prev, h))
        if taken:
            row._pii_clear = {p.ref: p.value for p in taken}  # lets entry_to_dict re-join after commit
            pii_rows.extend(p.to_values(seq) for p in taken)
        rows.append(row)
        prev = h
    # one executemany instead of an ORM flush per row: a step writes dozens of rows
    _insert_rows(conn, params, rows)
    if pii_rows:
        _INSERT_PII.run_many(conn, pii_rows)
    _UPDATE_HEAD.run(conn, {"seq": seq, "hash": prev})
    audit_search.after_append(conn, head.seq + 1, seq)
    return rows


_ROW_COLUMNS = ("seq", "at", "instance_id", "process_id", "process_version_id", "actor", "cause", "action",
                "task_id", "task_name", "task_title", "lane", "form_version", "data_diff", "details", "prev_hash",
                "hash")
_SQL = {
    "sqlite": f"INSERT INTO audit_log ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join('?' * len(_ROW_COLUMNS))})",
    "postgresql": f"INSERT INTO audit_log ({', '.join(_ROW_COLUMNS)}) VALUES "
                  f"({', '.join('%s::json' if c in ('data_diff', 'details') else '%s' for c in _ROW_COLUMNS)})",
}
# ``at`` as SQLAlchemy writes it: naive UTC text on SQLite, an aware datetime for psycopg
_STORED_AT = {"sqlite": lambda at: _at_texts(at)[1], "postgresql": lambda at: at.astimezone(UTC)}


def _insert_rows(conn, params: list[tuple], rows: list[SimpleNamespace]) -> None:
    """Insert audit rows with one executemany on the driver's cursor.

    Through SQLAlchemy every row's parameters are processed one by one (JSON encoded again,
    datetimes converted): half the cost of appending. ``params`` hold the values in
    ``_ROW_COLUMNS`` order, the JSON text being the canonical one already computed for the
    hash. Other dialects (no ``params``) go through SQLAlchemy with ``rows``.
    """
    sql = _SQL.get(conn.dialect.name)
    if sql is None:
        conn.execute(_INSERT_ROWS, [{k: v for k, v in r.__dict__.items() if k != "_pii_clear"} for r in rows])
        return
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(sql, params)
    finally:
        cursor.close()


def entry_to_dict(row: AuditEntry, *, masked: bool = True, values: dict[str, Any] | None = None) -> dict:
    """JSON-ready view of an audit row, personal data put back and masked (``138****0000``).

    ``masked=False`` shows it in clear: only for a caller that audits the unmasking
    (``engine.audit_query.unmask``). ``values``: ``{ref: clear value}`` when already loaded
    (see ``entries_to_dicts``); otherwise they come from the row's own session.
    """
    data_diff, details = row.data_diff, row.details
    if values is None:
        values = getattr(row, "_pii_clear", None)
    if values is None and (contains_tokens(data_diff) or contains_tokens(details)):
        session = object_session(row)
        values = load_values(session, [row.seq]).get(row.seq, {}) if session is not None else {}
    if values:
        data_diff, details = rejoin(data_diff, values), rejoin(details, values)
    if masked:
        data_diff, details = mask_data(data_diff), mask_data(details)
    return {
        "seq": row.seq, "at": row.at.isoformat() if row.at else None, "instance_id": row.instance_id,
        "process_id": row.process_id, "process_version_id": row.process_version_id, "actor": row.actor,
        "cause": row.cause, "action": row.action, "task_id": row.task_id, "task_name": row.task_name,
        "task_title": row.task_title, "lane": row.lane, "form_version": row.form_version,
        "data_diff": data_diff, "details": details, "hash": row.hash, "prev_hash": row.prev_hash,
    }


def entries_to_dicts(session: Session, rows: list[AuditEntry], *, masked: bool = True) -> list[dict]:
    """``entry_to_dict`` for many rows, loading their personal data in one query per 500 rows."""
    with_pii = [r.seq for r in rows if contains_tokens(r.data_diff) or contains_tokens(r.details)]
    loaded = load_values(session, with_pii) if with_pii else {}
    return [entry_to_dict(r, masked=masked, values=loaded.get(r.seq, {})) for r in rows]


def current_head(session: Session) -> tuple[int, str]:
    """The chain head: (sequence number, hash) of the last appended row (``(0, GENESIS_HASH)`` if none)."""
    row = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one_or_none()
    return (row.seq, row.hash) if row is not None else (0, GENESIS_HASH)
