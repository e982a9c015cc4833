"""Reading the audit trail as an auditor: filtered, paged search, per-instance history,
CSV / JSON export (masked by default) and the audited unmasking of personal data.

Search is newest first by ``(at, seq)`` with keyset paging (an opaque cursor, no OFFSET),
so page 1,000 costs what page 1 costs. User, process, version and action each have an
index shaped ``(filter, at, seq)`` on ``audit_search`` (``engine.audit_search``: a copy of
those columns filled in batches), read up to its watermark, plus the few newer rows straight
from ``audit_log``; ticket and customer narrow to a few instances and use ``(instance_id, seq)``. The web layer decides who may call what (auditors read
everything and change nothing); ``unmask`` and unmasked exports check the role themselves
too, and audit every use.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, or_, select, tuple_
from sqlalchemy.orm import Session

from engine.audit import AuditEvent, append_events, current_head, entries_to_dicts, entry_to_dict
from engine.audit_search import watermark
from engine.clock import utcnow
from engine.errors import NotFound, Problem, ValidationFailed
from engine.models import AuditEntry, AuditSearchEntry, HumanTask, Instance, ProcessVersion, User
from engine.pii import AuditPii, UnmaskRefused, can_unmask, clear_values, mask_data

EXPORT_FORMATS = ("csv", "json")
CSV_COLUMNS = ("seq", "at", "ticket", "instance_id", "process_id", "version", "process_version_id", "actor",
               "cause", "action", "task_id", "task_name", "task_title", "lane", "form_version", "data_diff",
               "details", "hash", "prev_hash")


@dataclass
class AuditFilter:
    """What to look for. Every field is optional; all given ones must match.

    ``date_from`` inclusive, ``date_to`` exclusive (UTC); ``user`` = the actor; ``process`` =
    process id; ``version`` = version number (of ``process`` if given); ``ticket`` = the
    instance's business key (e.g. ``SN20240315001``); ``customer`` = customer id or name of
    the instance's tasks.
    """

    date_from: datetime | None = None
    date_to: datetime | None = None
    user: str | None = None
    process: str | None = None
    version: int | None = None
    action: str | None = None
    cause: str | None = None
    customer: str | None = None
    ticket: str | None = None
    instance_id: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AuditFilter:
        """Build from text parameters (a query string, CLI options): ``from``, ``to`` (ISO date or
        datetime; a date ``to`` includes that whole day; no zone = UTC), ``user``, ``process``,
        ``version``, ``action``, ``cause``, ``customer``, ``ticket``, ``instance``.
        Raises ``ValidationFailed`` naming each bad field."""
        problems: list[Problem] = []
        out = cls()

        def text(name: str) -> str | None:
            value = params.get(name)
            if value is None:
                return None
            value = str(value).strip()
            return value or None

        def number(name: str) -> int | None:
            value = text(name)
            if value is None:
                return None
            if not value.isdigit():
                problems.append(Problem("must be a whole number", field=name))
                return None
            return int(value)

        for name in ("from", "to"):
            value = text(name)
            if value is None:
                continue
            try:
                setattr(out, f"date_{name}", parse_when(value, end=name == "to"))
            except ValueError:
                problems.append(Problem("must be a date (2024-03-15) or an ISO date-time", field=name))
        for name in ("user", "process", "action", "cause", "customer", "ticket"):
            setattr(out, name, text(name))
        out.version = number("version")
        out.instance_id = number("instance")
        if out.version is not None and not out.process:
            problems.append(Problem("a version number needs the process it belongs to", field="version"))
        if out.date_from and out.date_to and out.date_from >= out.date_to:
            problems.append(Problem("must be after 'from'", field="to"))
        if problems:
            raise ValidationFailed(problems)
        return out

    def to_dict(self) -> dict:
        """The filter as JSON-ready values (only the fields given)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out

    def searchable(self) -> bool:
        """Is ``audit_search`` the way to the rows? Yes unless an instance, ticket or customer
        (a few instances' rows, by ``ix_audit_instance_seq``) narrows them: its indexes serve a
        user, process, version or action, and its ``(at, seq)`` index the time order for no
        filter, dates or cause alone (``audit_log`` has no index on time)."""
        return self.instance_id is None and not self.ticket and not self.customer

    def where(self, session: Session | None = None, *, on: type = AuditEntry) -> list:
        """SQL conditions for this filter (with a ``session``, the version is resolved to its id
        first, so the ``(process_version_id, at, seq)`` index serves it). ``on``: the table the
        date, user, process, version and action conditions apply to (``AuditSearchEntry`` when
        searching through it); the others are on ``audit_log``."""
        conds = []
        if self.date_from is not None:
            conds.append(on.at >= self.date_from)
        if self.date_to is not None:
            conds.append(on.at < self.date_to)
        if self.user:
            conds.append(on.actor == self.user)
        if self.process:
            conds.append(on.process_id == self.process)
        if self.version is not None:
            versions = select(ProcessVersion.id).where(ProcessVersion.version == self.version)
            if self.process:
                versions = versions.where(ProcessVersion.process_id == self.process)
            if session is not None:
                ids = list(session.scalars(versions))
                conds.append(on.process_version_id == ids[0] if len(ids) == 1 else on.process_version_id.in_(ids))
            else:
                conds.append(on.process_version_id.in_(versions))
        if self.action:
            conds.append(on.action == self.action)
        if self.cause:
            conds.append(AuditEntry.cause == self.cause)
        if self.instance_id is not None:
            conds.append(AuditEntry.instance_id == self.instance_id)
        if self.ticket:
            conds.append(AuditEntry.instance_id.in_(select(Instance.id).where(Instance.business_key == self.ticket)))
        if self.customer:
            conds.append(AuditEntry.instance_id.in_(
                select(HumanTask.instance_id).where(or_(HumanTask.customer_id == self.customer,
                                                        HumanTask.customer_name == self.customer))))
        return conds


def parse_when(value: str, *, end: bool = False) -> datetime:
    """``2024-03-15`` → that midnight UTC (``end=True``: the next midnight, so the day is included);
    an ISO date-time keeps its offset (none = UTC). Raises ValueError."""
    value = value.strip()
    if len(value) == 10:
        day = datetime.combine(datetime.strptime(value, "%Y-%m-%d").date(), time(0), tzinfo=UTC)
        return day + timedelta(days=1) if end else day
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass
class AuditPage:
    """One page of search results, newest first.

    ``older`` / ``newer``: cursors for the next and previous pages (None at either end).
    """

    items: list[dict]
    older: str | None
    newer: str | None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _cursor(item: dict) -> str:
    at = datetime.fromisoformat(item["at"])
    return f"{int(at.timestamp() * 1_000_000)}.{item['seq']}"


def _parse_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        micros, seq = cursor.split(".")
        return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=int(micros)), int(seq)
    except ValueError as err:
        raise ValidationFailed([Problem("is not a page cursor from a previous result", field="cursor")]) from err


def _query(session: Session, flt: AuditFilter, on: type = AuditEntry) -> Select:
    q = select(AuditEntry, Instance.business_key, ProcessVersion.version)
    if on is AuditSearchEntry:
        q = q.select_from(AuditSearchEntry).join(AuditEntry, AuditEntry.seq == AuditSearchEntry.seq)
    return (q.outerjoin(Instance, Instance.id == AuditEntry.instance_id)
            .outerjoin(ProcessVersion, ProcessVersion.id == AuditEntry.process_version_id)
            .where(*flt.where(session, on=on)))


def _in_order(q: Select, table: type, ascending: bool, bound: tuple[datetime, int] | None) -> Select:
    """``q`` ordered by ``(at, seq)`` of ``table``, from just after ``bound`` in that order."""
    key = tuple_(table.at, table.seq)
    if bound is not None:
        at, seq = bound
        # the plain ``at`` bound lets an index on (…, at) serve the row-value comparison
        q = q.where(table.at >= at, key > tuple_(at, seq)) if ascending else q.where(table.at <= at,
                                                                                     key < tuple_(at, seq))
    return q.order_by(table.at, table.seq) if ascending else q.order_by(table.at.desc(), table.seq.desc())


def _rows(session: Session, flt: AuditFilter, *, limit: int, ascending: bool,
          bound: tuple[datetime, int] | None = None) -> list:
    """Up to ``limit`` rows ``(entry, ticket, version)`` matching ``flt`` in ``(at, seq)`` order
    (newest first unless ``ascending``), after ``bound``.

    Through ``audit_search``: its rows up to the watermark read first, plus the newer ones
    (a few hundred at most) from ``audit_log``; a row is in exactly one of the two parts.
    """
    if not flt.searchable():
        return session.execute(_in_order(_query(session, flt), AuditEntry, ascending, bound).limit(limit)).all()
    mark = watermark(session.connection())
    indexed = _query(session, flt, on=AuditSearchEntry).where(AuditSearchEntry.seq <= mark)
    # the rows after the watermark picked by primary key in a subquery: with ``seq > mark`` in the
    # query itself SQLite would walk the whole ``(at)`` index for the order, seeing no limit to the range
    after_mark = AuditEntry.__table__.alias("after_mark")
    newer = _query(session, flt).where(AuditEntry.seq.in_(select(after_mark.c.seq).where(after_mark.c.seq > mark)))
    rows = (session.execute(_in_order(indexed, AuditSearchEntry, ascending, bound).limit(limit)).all()
            + session.execute(_in_order(newer, AuditEntry, ascending, bound).limit(limit)).all())
    rows.sort(key=lambda r: (r[0].at, r[0].seq), reverse=not ascending)
    return rows[:limit]


def _dicts(session: Session, rows: list, masked: bool) -> list[dict]:
    items = entries_to_dicts(session, [r[0] for r in rows], masked=masked)
    for item, (_, ticket, version) in zip(items, rows, strict=True):
        item["ticket"], item["version"] = ticket, version
    return items


def search_audit(session: Session, flt: AuditFilter | None = None, *, limit: int = 50, older: str | None = None,
                 newer: str | None = None, masked: bool = True) -> AuditPage:
    """One page of audit rows matching ``flt``, newest first; pass a page's ``older`` (or
    ``newer``) cursor to get the next (or previous) page. Personal data masked."""
    flt = flt or AuditFilter()
    limit = max(1, min(int(limit), 1000))
    if newer:
        rows = _rows(session, flt, limit=limit + 1, ascending=True, bound=_parse_cursor(newer))
    else:
        rows = _rows(session, flt, limit=limit + 1, ascending=False, bound=_parse_cursor(older) if older else None)
    more = len(rows) > limit
    rows = rows[:limit]
    if newer:
        rows.reverse()
    items = _dicts(session, rows, masked)
    if not items:
        return AuditPage([], None, None)
    older_cursor = _cursor(items[-1]) if (more or newer) else None
    newer_cursor = _cursor(items[0]) if (older or (newer and more)) else None
    return AuditPage(items, older_cursor, newer_cursor)


def iter_audit(session: Session, flt: AuditFilter | None = None, *, masked: bool = True,
               batch: int = 1000) -> Iterator[dict]:
    """Every audit row matching ``flt``, oldest first, read in keyset batches (for exports)."""
    flt = flt or AuditFilter()
    after: tuple[datetime, int] | None = None
    while True:
        rows = _rows(session, flt, limit=batch, ascending=True, bound=after)
        if not rows:
            return
        yield from _dicts(session, rows, masked)
        after = (rows[-1][0].at, rows[-1][0].seq)
        for r in rows:  # a long export must not keep every row in the identity map
            session.expunge(r[0])


def instance_history(session: Session, instance_id: int, *, masked: bool = True) -> list[dict]:
    """Every step of one instance in order: time, actor, cause, task (``task_name`` is the BPMN
    element id to highlight in the diagram), data diff, process version number and form version.
    Raises ``NotFound`` when the instance has no audit rows (its rows outlive the instance)."""
    rows = session.execute(_query(session, AuditFilter(instance_id=instance_id)).order_by(AuditEntry.seq)).all()
    if not rows:
        raise NotFound(f"no audit rows for instance {instance_id}")
    return _dicts(session, rows, masked)


# -- export ----------------------------------------------------------------------------------------
def _masked_row(row: dict) -> dict:
    return {**row, "data_diff": mask_data(row.get("data_diff")), "details": mask_data(row.get("details"))}


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    # a spreadsheet would run a cell starting like a formula (CSV injection): make it text
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_csv(rows: Iterable[dict], masked: bool = True) -> Iterator[str]:
    """Audit rows as CSV text chunks (UTF-8 with a BOM so spreadsheets read Chinese correctly).
    ``masked``: mask personal data even if the rows carry it in clear (the default)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    yield "\ufeff" + buf.getvalue()
    for row in rows:
        buf.seek(0)
        buf.truncate()
        if masked:
            row = _masked_row(row)
        writer.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
        yield buf.getvalue()


def export_json(rows: Iterable[dict], masked: bool = True, meta: dict | None = None) -> Iterator[str]:
    """Audit rows as a JSON document in text chunks: ``{"masked": …, <meta>, "rows": [...]}``."""
    head = {"masked": masked, **(meta or {})}
    yield json.dumps(head, ensure_ascii=False)[:-1] + ', "rows": ['
    first = True
    for row in rows:
        if masked:
            row = _masked_row(row)
        yield ("\n" if first else ",\n") + json.dumps(row, ensure_ascii=False, default=str)
        first = False
    yield "\n]}\n"


def export_audit(session: Session, flt: AuditFilter | None = None, *, fmt: str = "csv", by: str | None = None,
                 unmask: bool = False, reason: str | None = None) -> Iterator[str]:
    """The filtered set as CSV or JSON text chunks, masked; ``unmask=True`` checks that ``by`` may
    see personal data, audits the export (``pii_unmasked``, committed before anything is read)
    and exports in clear. The JSON document carries the filter and the chain head."""
    if fmt not in EXPORT_FORMATS:
        raise ValidationFailed([Problem(f"must be one of {', '.join(EXPORT_FORMATS)}", field="format")])
    flt = flt or AuditFilter()
    if unmask:
        _authorize_unmask(session, by)
        _audit_unmask(session, by, {"export": fmt, "filter": flt.to_dict(), "reason": reason or "export"})
    seq, hash_ = current_head(session)
    rows = iter_audit(session, flt, masked=not unmask)
    if fmt == "csv":
        return export_csv(rows, masked=not unmask)
    meta = {"exported_at": utcnow().isoformat(), "exported_by": by, "filter": flt.to_dict(),
            "head": {"seq": seq, "hash": hash_}}
    return export_json(rows, masked=not unmask, meta=meta)


# -- unmasking -------------------------------------------------------------------------------------
def _authorize_unmask(session: Session, by: str | None) -> None:
    user = session.scalar(select(User).where(User.username == by)) if by else None
    if user is None or not user.active:
        raise UnmaskRefused(f"unmasking needs a known, active user (got {by!r})")
    if not can_unmask(user.role):
        raise UnmaskRefused(f"user {by} ({user.role}) may not see personal data unmasked")


def _audit_unmask(session: Session, by: str, details: dict, entry: AuditEntry | None = None) -> None:
    """Append the ``pii_unmasked`` row and commit it before any clear value leaves."""
    event = AuditEvent(action="pii_unmasked", actor=by, cause="user", at=utcnow(), details=details,
                       instance_id=entry.instance_id if entry else None,
                       process_id=entry.process_id if entry else None,
                       process_version_id=entry.process_version_id if entry else None)
    if session.in_transaction():
        append_events(session, [event])
        session.commit()
    else:
        with session.begin():
            append_events(session, [event])


def unmask(session: Session, seq: int, by: str, reason: str) -> dict:
    """Personal data of audit row ``seq`` in clear, for a user allowed to see it.

    A deliberate, audited action: ``reason`` is required, ``by`` must be an active user whose
    role may unmask (``engine.pii.UNMASK_ROLES``), and a ``pii_unmasked`` row (who, which row,
    which fields, why) is committed before the values are returned; the session's transaction,
    if one is open, is committed with it. Returns ``{"seq", "values": {path: value}, "entry"}``
    (``entry``: the row with its data in clear). Raises ``UnmaskRefused``, ``NotFound``,
    ``ValidationFailed``.
    """
    if not reason or not str(reason).strip():
        raise ValidationFailed([Problem("say why the personal data must be seen", field="reason")])
    _authorize_unmask(session, by)
    entry = session.get(AuditEntry, seq)
    if entry is None:
        raise NotFound(f"no audit row {seq}")
    pii_rows = list(session.scalars(select(AuditPii).where(AuditPii.seq == seq).order_by(AuditPii.path)))
    values = clear_values(pii_rows)
    by_path = {r.path: values[r.ref] for r in pii_rows}
    _audit_unmask(session, by, {"seq": seq, "paths": sorted(by_path), "reason": str(reason).strip()}, entry)
    view = entry_to_dict(entry, masked=False, values=values)
    return {"seq": seq, "values": by_path, "entry": view}
