"""Verifying the audit chain: every row's hash, every link, the head, and the personal data.

``verify_chain`` streams ``audit_log`` in sequence order (a server-side cursor on
PostgreSQL, a plain read snapshot on SQLite that never blocks writers), recomputes each
row's hash from its columns in a tight loop, and stops at the first problem, named by
sequence number and kind:

- ``edited``: a row's content (or its ``prev_hash``) no longer matches its hash, or a row
  was rewritten with a recomputed hash (its successor still links to the original), or a
  personal-data value in ``audit_pii`` no longer matches its reference;
- ``deleted``: rows are missing (a gap, or rows renumbered to hide one);
- ``reordered``: the row that belongs at a position sits elsewhere in the log;
- ``truncated``: the log ends before the chain head (in ``audit_head``, or one recorded
  earlier and given to ``head=``);
- ``head_mismatch``: the head table, or a recorded head, disagrees with the rows.

Results can be kept in ``audit_verifications`` so a page can show the last verification
and check only the rows appended since (``verification_status``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, Text, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.audit import GENESIS_HASH, canonical_json
from engine.clock import utcnow
from engine.models import Base, BigId, UTCDateTime
from engine.pii import TOKEN_PREFIX, reference, token_paths

PROBLEMS = ("edited", "deleted", "reordered", "truncated", "head_mismatch")
_HEAD_RE = re.compile(r"^\s*(\d+)\s*:\s*([0-9a-fA-F]{64})\s*$")


@dataclass(frozen=True)
class ChainHead:
    """A point of the chain: a sequence number and the hash of the row there."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> ChainHead:
        """Parse ``SEQ:HASH`` (as printed by ``careflow audit head``); ValueError if malformed."""
        m = _HEAD_RE.match(text or "")
        if not m:
            raise ValueError(f"expected SEQ:HASH (e.g. 1234:{'ab' * 4}…, 64 hex digits), got {text!r}")
        return cls(int(m.group(1)), m.group(2).lower())

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    def to_dict(self) -> dict:
        """JSON-ready form (with the ``SEQ:HASH`` text to record)."""
        return {"seq": self.seq, "hash": self.hash, "head": str(self)}


@dataclass
class VerifyResult:
    """The outcome of a verification."""

    ok: bool
    rows_checked: int
    first_bad_seq: int | None = None
    problem: str | None = None  # one of PROBLEMS
    message: str = ""
    head: ChainHead | None = None  # the head table when the verification started
    last: ChainHead | None = None  # the last row checked and found good
    from_seq: int = 0  # rows after this seq were checked (0: from the genesis)
    pii_checked: int = 0
    elapsed_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        """Verification speed."""
        return self.rows_checked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-ready form."""
        out = asdict(self)
        out["head"] = self.head.to_dict() if self.head else None
        out["last"] = self.last.to_dict() if self.last else None
        out["elapsed_s"] = round(self.elapsed_s, 3)
        out["rows_per_s"] = round(self.rows_per_s)
        return out


class _Broken(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, problem: str, seq: int, message: str):
        super().__init__(message)
        self.problem, self.seq, self.message = problem, seq, message


class _Reader:
    """Backend differences: parameter style, column expressions, server-side cursors."""

    def __init__(self, db: Engine):
        self.pg = db.dialect.name == "postgresql"
        self.fairy = db.raw_connection()
        self.conn = self.fairy.driver_connection
        self.p = "%s" if self.pg else "?"
        self._cursors: list = []
        if self.pg:
            with self.conn.cursor() as c:
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        else:
            self.conn.execute("BEGIN")  # deferred: a consistent snapshot, writers carry on (WAL)

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        cur = self.conn.cursor()
        try:
            cur.execute(sql.replace("?", self.p), params)
            return cur.fetchone()
        finally:
            cur.close()

    def stream(self, sql: str, params: tuple, batch: int) -> Iterator[list[tuple]]:
        if self.pg:
            cur = self.conn.cursor(name=f"careflow_audit_verify_{len(self._cursors)}")
            cur.itersize = batch
        else:
            cur = self.conn.cursor()
        self._cursors.append(cur)
        try:
            cur.execute(sql.replace("?", self.p), params)
            while rows := cur.fetchmany(batch):
                yield rows
        finally:
            cur.close()

    def close(self) -> None:
        try:
            for cur in self._cursors:
                cur.close()
            self.conn.rollback()
        finally:
            self.fairy.close()

    @property
    def at_expr(self) -> str:
        return "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')" if self.pg else "at"

    def json_expr(self, col: str) -> str:
        return f"{col}::text" if self.pg else col


def _iso_z(value: Any) -> str:
    """A stored ``at`` (SQLite text, or a datetime) in the canonical ``...T...Z`` form."""
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " ":
            return value[:10] + "T" + value[11:] + "Z"
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hash(prev: str, body: bytes) -> str:
    return sha256(prev.encode() + b"\n" + body).hexdigest()


def verify_chain(db: Engine, *, head: ChainHead | None = None, anchor: ChainHead | None = None,
                 batch_size: int = 10_000, progress: Callable[[int, int], None] | None = None,
                 check_pii: bool = True) -> VerifyResult:
    """Walk the audit chain and report the first problem (see the module docstring).

    ``head``: a head recorded earlier (``careflow audit head``); the log must still extend
    it. ``anchor``: start after this point instead of the genesis (rows before it were
    pruned under the retention procedure, or were verified before). ``progress(done,
    total)`` is called after each batch. ``check_pii``: also check every personal-data
    value against its reference, and that erased ones were erased by an audited erasure.
    """
    started = time.perf_counter()
    reader = _Reader(db)
    start = anchor.seq if anchor else 0
    result = VerifyResult(ok=True, rows_checked=0, from_seq=start)
    try:
        row = reader.one("SELECT seq, hash FROM audit_head WHERE id = 1")
        db_head = ChainHead(int(row[0]), row[1]) if row else ChainHead(0, GENESIS_HASH)
        result.head = db_head
        try:
            _walk(reader, result, db_head, head, anchor, batch_size, progress, check_pii)
        except _Broken as broken:
            result.ok, result.problem, result.first_bad_seq, result.message = (
                False, broken.problem, broken.seq, broken.message)
    finally:
        reader.close()
    result.elapsed_s = time.perf_counter() - started
    if result.ok:
        result.message = (f"{result.rows_checked} rows verified"
                          + (f" after seq {start}" if start else "") + f"; head {result.last}")
    return result


def _walk(reader: _Reader, result: VerifyResult, db_head: ChainHead, recorded: ChainHead | None,
          anchor: ChainHead | None, batch_size: int, progress: Callable[[int, int], None] | None,
          check_pii: bool) -> None:
    start = anchor.seq if anchor else 0
    prev = anchor.hash if anchor else GENESIS_HASH
    if anchor and anchor.seq > 0:
        at_anchor = reader.one("SELECT hash FROM audit_log WHERE seq = ?", (anchor.seq,))
        if at_anchor is not None and at_anchor[0] != anchor.hash:
            raise _Broken("head_mismatch", anchor.seq,
                          f"row {anchor.seq} has hash {at_anchor[0][:16]}…, the anchor says {anchor.hash[:16]}…")
    if recorded is not None and recorded.seq <= start:
        if recorded.seq < start or recorded.hash != prev:
            raise _Broken("head_mismatch", recorded.seq,
                          f"the recorded head {recorded.seq} is at or before the start of the checked range ({start})"
                          + ("" if recorded.seq < start else "; its hash differs from the anchor"))
        recorded = None
    rec_seq = recorded.seq if recorded else -1
    total = max(db_head.seq - start, 1)
    expected = start + 1
    pii = _PiiChecker(reader, start, batch_size) if check_pii else None
    pii_next = pii.next_seq if pii else None
    enc, loads, pg = canonical_json, json.loads, reader.pg
    sql = (f"SELECT seq, {reader.at_expr}, instance_id, process_id, process_version_id, actor, cause, action, "
           f"task_id, task_name, task_title, lane, form_version, {reader.json_expr('data_diff')}, "
           f"{reader.json_expr('details')}, prev_hash, hash FROM audit_log WHERE seq > ? ORDER BY seq")
    checked = 0
    for batch in reader.stream(sql, (start,), batch_size):
        for row in batch:
            try:
                (seq, at, iid, pid, pvid, actor, cause, action, tid, tname, ttitle, lane, fv, dd, de,
                 ph, h) = row
                if seq != expected:
                    result.rows_checked = checked
                    raise _classify(reader, expected, prev, seq, ph, h, b"", start)
                ddo = loads(dd) if dd is not None else None
                deo = loads(de) if de is not None else None
                if not pg:
                    at = at[:10] + "T" + at[11:] + "Z" if len(at) == 26 else _iso_z(at)
                body = enc({"action": action, "actor": actor, "at": at, "cause": cause,
                            "data_diff": ddo, "details": deo, "form_version": fv, "instance_id": iid, "lane": lane,
                            "process_id": pid, "process_version_id": pvid, "seq": seq, "task_id": tid,
                            "task_name": tname, "task_title": ttitle}).encode()
                if ph != prev:
                    result.rows_checked = checked
                    raise _classify(reader, expected, prev, seq, ph, h, body, start)
                if sha256(ph.encode() + b"\n" + body).hexdigest() != h:
                    result.rows_checked = checked
                    raise _Broken("edited", seq, f"row {seq} was edited: its content no longer matches its hash")
                if seq == rec_seq and h != recorded.hash:
                    result.rows_checked = checked
                    raise _Broken("head_mismatch", seq,
                                  f"the log no longer extends the recorded head: row {seq} has hash {h[:16]}…, "
                                  f"recorded {recorded.hash[:16]}… (history up to {seq} was rewritten)")
                if pii is not None and (pii_next <= seq or (dd is not None and TOKEN_PREFIX in dd)
                                        or (de is not None and TOKEN_PREFIX in de) or action == "pii_erased"):
                    result.rows_checked = checked
                    pii.check_row(seq, action, ddo, deo)
                    pii_next = pii.next_seq
                prev = h
                expected += 1
                checked += 1
            except (ValueError, TypeError, AttributeError) as err:  # tampered into malformed values
                result.rows_checked = checked
                raise _Broken("edited", row[0], f"row {row[0]} holds malformed values "
                                                  f"({type(err).__name__}: {err})") from None
        result.rows_checked = checked
        if progress is not None:
            progress(checked, max(total, checked))
    last_seq = expected - 1
    result.last = ChainHead(last_seq, prev)
    if pii is not None:
        pii.finish(last_seq)
        result.pii_checked = pii.checked
    if recorded is not None and recorded.seq > last_seq:
        raise _Broken("truncated", last_seq + 1,
                      f"the log ends at seq {last_seq}, before the recorded head {recorded.seq}: "
                      f"rows {last_seq + 1}–{recorded.seq} were removed")
    if db_head.seq > last_seq:
        raise _Broken("truncated", last_seq + 1,
                      f"the chain head is at seq {db_head.seq} but the log ends at {last_seq}: "
                      f"rows {last_seq + 1}–{db_head.seq} were removed")
    if db_head.seq < last_seq:
        raise _Broken("head_mismatch", db_head.seq + 1,
                      f"rows {db_head.seq + 1}–{last_seq} lie beyond the chain head ({db_head.seq}): "
                      "they were added without the head, or the head was moved back")
    if db_head.hash != prev:
        raise _Broken("head_mismatch", last_seq,
                      f"the chain head's hash for seq {last_seq} differs from the row's hash: the last row was "
                      "rewritten with a recomputed hash, or the head was altered")


def _classify(reader: _Reader, expected: int, prev: str, seq: int, ph: str, h: str, body: bytes,
              start: int) -> _Broken:
    """Name what broke at ``expected`` (the row found there is ``seq``, linking to ``ph``;
    ``body`` is its canonical content, only needed when ``seq == expected``)."""

    def successor_of(link: str) -> int | None:
        row = reader.one("SELECT seq FROM audit_log WHERE prev_hash = ? AND seq > ? ORDER BY seq LIMIT 1",
                         (link, start))
        return None if row is None else int(row[0])

    if seq != expected:
        moved = successor_of(prev)
        if moved is not None and moved != seq:
            return _Broken("reordered", expected,
                           f"row {expected} is not where it belongs: the row that follows {expected - 1} in the "
                           f"chain sits at seq {moved}")
        missing = str(expected) if seq == expected + 1 else f"{expected}–{seq - 1}"
        return _Broken("deleted", expected, f"row(s) {missing} are missing (deleted)")
    if _hash(prev, body) == h:
        return _Broken("edited", seq, f"row {seq} was edited: its prev_hash column was altered")
    if _hash(ph, body) == h:
        if expected - 1 > start:
            return _Broken("edited", expected - 1,
                           f"row {expected - 1} was rewritten with a recomputed hash: row {seq} still links "
                           "to the original")
        return _Broken("edited", seq, f"row {seq} does not link to the start of the chain")
    moved = successor_of(prev)
    if moved is not None:
        return _Broken("reordered", seq,
                       f"row {seq} is out of order: the row that follows {seq - 1} in the chain sits at seq {moved}")
    return _Broken("deleted", seq,
                   f"row(s) are missing before seq {seq}: the row there does not follow row {seq - 1} "
                   "(rows were deleted and the rest renumbered)")


class _PiiChecker:
    """Merge-joins ``audit_pii`` (by seq) with the chain walk."""

    _INF = 1 << 62

    def __init__(self, reader: _Reader, start: int, batch_size: int):
        self._groups = self._grouped(reader.stream(
            "SELECT id, seq, path, ref, secret, value, erased_at FROM audit_pii WHERE seq > ? ORDER BY seq, path",
            (start,), batch_size))
        self.next_seq, self._rows = next(self._groups, (self._INF, []))
        self.erased_ids: set[int] = set()
        self.marked_erased: dict[int, tuple[int, str]] = {}  # pii id -> (seq, path)
        self.checked = 0

    @staticmethod
    def _grouped(batches: Iterator[list[tuple]]) -> Iterator[tuple[int, list[tuple]]]:
        seq, group = None, []
        for batch in batches:
            for r in batch:
                if r[1] != seq:
                    if group:
                        yield seq, group
                    seq, group = r[1], []
                group.append(r)
        if group:
            yield seq, group

    def check_row(self, seq: int, action: str, ddo: Any, deo: Any) -> None:
        if self.next_seq < seq:
            raise _Broken("edited", self.next_seq,
                          f"audit_pii holds personal data for row {self.next_seq}, which does not reference it")
        rows = []
        if self.next_seq == seq:
            rows = self._rows
            self.next_seq, self._rows = next(self._groups, (self._INF, []))
        if action == "pii_erased" and isinstance(deo, dict):
            self.erased_ids.update(i for i in deo.get("pii_ids") or [] if isinstance(i, int))
        refs = {}
        if ddo is not None:
            refs.update(token_paths(ddo, "data_diff"))
        if deo is not None:
            refs.update(token_paths(deo, "details"))
        by_path = {r[2]: r for r in rows}
        for path, ref in refs.items():
            r = by_path.pop(path, None)
            if r is None:
                raise _Broken("deleted", seq, f"the personal data at {path} of row {seq} is missing from audit_pii")
            pii_id, _, _, stored_ref, secret, value, erased_at = r
            if stored_ref != ref:
                raise _Broken("edited", seq, f"the personal data at {path} of row {seq} was swapped in audit_pii")
            if erased_at is not None:
                self.marked_erased[pii_id] = (seq, path)
            elif secret is None or value is None or reference(secret, value) != ref:
                raise _Broken("edited", seq,
                              f"the personal data at {path} of row {seq} was altered in audit_pii "
                              "(it no longer matches the reference in the row)")
            else:
                self.checked += 1
        if by_path:
            raise _Broken("edited", seq, f"audit_pii holds values at {', '.join(sorted(by_path))} for row {seq}, "
                                         "which the row does not reference")

    def finish(self, last_seq: int) -> None:
        if self.next_seq != self._INF:
            raise _Broken("edited", self.next_seq,
                          f"audit_pii holds personal data for row {self.next_seq}, which the log does not have")
        unexplained = [(seq, path) for pid, (seq, path) in self.marked_erased.items() if pid not in self.erased_ids]
        if unexplained:
            seq, path = min(unexplained)
            raise _Broken("edited", seq, f"the personal data at {path} of row {seq} is marked erased, but no "
                                         "audited erasure (pii_erased) names it")


# -- keeping results ---------------------------------------------------------------------------
class AuditVerification(Base):
    """The outcome of one run of ``careflow audit verify`` (shown on the auditor's pages)."""

    __tablename__ = "audit_verifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    by: Mapped[str | None] = mapped_column(String(200))
    ok: Mapped[bool] = mapped_column(Boolean)
    from_seq: Mapped[int] = mapped_column(BigInteger)  # 0: the whole chain
    rows_checked: Mapped[int] = mapped_column(BigInteger)
    head_seq: Mapped[int | None] = mapped_column(BigInteger)  # the last good row
    head_hash: Mapped[str | None] = mapped_column(String(64))
    first_bad_seq: Mapped[int | None] = mapped_column(BigInteger)
    problem: Mapped[str | None] = mapped_column(String(20))
    message: Mapped[str | None] = mapped_column(Text)
    elapsed_ms: Mapped[int] = mapped_column(Integer)


def record_verification(session: Session, result: VerifyResult, by: str | None) -> AuditVerification:
    """Keep a verification's outcome (in the caller's transaction)."""
    row = AuditVerification(at=utcnow(), by=by, ok=result.ok, from_seq=result.from_seq,
                            rows_checked=result.rows_checked, head_seq=result.last.seq if result.last else None,
                            head_hash=result.last.hash if result.last else None,
                            first_bad_seq=result.first_bad_seq, problem=result.problem, message=result.message,
                            elapsed_ms=int(result.elapsed_s * 1000))
    session.add(row)
    return row


def _verification_dict(row: AuditVerification) -> dict:
    return {"at": row.at.isoformat(), "by": row.by, "ok": row.ok, "from_seq": row.from_seq,
            "rows_checked": row.rows_checked, "head_seq": row.head_seq, "head_hash": row.head_hash,
            "first_bad_seq": row.first_bad_seq, "problem": row.problem, "message": row.message,
            "elapsed_ms": row.elapsed_ms}


def latest_verification(session: Session, *, full_only: bool = True) -> dict | None:
    """The most recent recorded verification (of the whole chain, unless ``full_only=False``)."""
    q = select(AuditVerification).order_by(AuditVerification.id.desc()).limit(1)
    if full_only:
        q = q.where(AuditVerification.from_seq == 0)
    row = session.scalar(q)
    return _verification_dict(row) if row else None


def verification_status(db: Engine, session: Session) -> dict:
    """What an auditor's page shows: the last full verification, plus a fresh check of the rows
    appended since it (fast: only those rows are read). ``state``: ``verified`` (the last full
    run and everything since are good), ``broken`` or ``never_verified``."""
    last = latest_verification(session)
    if last is None:
        return {"state": "never_verified", "last_full": None, "since": None}
    if not last["ok"]:
        return {"state": "broken", "last_full": last, "since": None}
    since = verify_chain(db, anchor=ChainHead(last["head_seq"], last["head_hash"]))
    return {"state": "verified" if since.ok else "broken", "last_full": last, "since": since.to_dict()}
