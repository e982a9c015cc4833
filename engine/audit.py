"""The audit trail: append-only, hash-chained rows written in the step's transaction.

Each row's hash covers its canonical content and the previous row's hash, so an edited,
deleted or reordered row breaks the chain from that point on. The chain head lives in a
one-row table that is locked while a transaction appends (rows get gap-free sequence
numbers in commit order).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.models import AuditEntry, AuditHead
from engine.serialization import to_jsonable

GENESIS_HASH = "0" * 64

# Fields covered by the hash, in order.
HASHED_FIELDS = ("seq", "at", "instance_id", "process_id", "process_version_id", "actor", "cause", "action",
                 "task_id", "task_name", "task_title", "lane", "form_version", "data_diff", "details")


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
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def chain_hash(prev_hash: str, row: dict) -> str:
    """Hash of a row given the previous row's hash."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical_content(row)).hexdigest()


def append_events(session: Session, events: list[AuditEvent]) -> list[AuditEntry]:
    """Give ``events`` their sequence numbers and hashes and add them to the session."""
    if not events:
        return []
    stmt = select(AuditHead).where(AuditHead.id == 1)
    if session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    head = session.scalar(stmt)
    seq, prev = head.seq, head.hash
    rows = []
    for ev in events:
        seq += 1
        values = {**ev.__dict__, "seq": seq, "at": ev.at}
        values["data_diff"] = to_jsonable(ev.data_diff) if ev.data_diff is not None else None
        values["details"] = to_jsonable(ev.details) if ev.details is not None else None
        h = chain_hash(prev, values)
        row = AuditEntry(**values, prev_hash=prev, hash=h)
        rows.append(row)
        prev = h
    session.add_all(rows)
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))
    return rows


def entry_to_dict(row: AuditEntry) -> dict:
    """JSON-ready view of an audit row."""
    return {
        "seq": row.seq, "at": row.at.isoformat() if row.at else None, "instance_id": row.instance_id,
        "process_id": row.process_id, "process_version_id": row.process_version_id, "actor": row.actor,
        "cause": row.cause, "action": row.action, "task_id": row.task_id, "task_name": row.task_name,
        "task_title": row.task_title, "lane": row.lane, "form_version": row.form_version,
        "data_diff": row.data_diff, "details": row.details, "hash": row.hash, "prev_hash": row.prev_hash,
    }
