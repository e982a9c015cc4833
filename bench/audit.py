"""Audit trail benchmark (issue #9): how fast ``careflow audit verify`` walks a large chain.

Builds a 1,000,000-row chain in a temporary SQLite database with the real schema
(migrations, indexes, triggers): rows shaped like the engine's (task_ready / engine_task /
task_completed…, 40 users, 3 processes, a year of timestamps, 1 row in 20 carrying a phone
kept out of the hash in ``audit_pii``), bulk-inserted with precomputed hashes. Then times
``engine.audit_verify.verify_chain`` over all of it (personal data checked too) and a few
auditor searches. Prints ``name: value`` lines; target ``verify_rows_per_s >= 50000``.

    .venv/bin/python bench/audit.py [--rows 1000000] [--keep FILE.db]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.audit import GENESIS_HASH, canonical_json  # noqa: E402
from engine.audit_query import AuditFilter, search_audit  # noqa: E402
from engine.audit_search import index_backlog  # noqa: E402
from engine.audit_verify import verify_chain  # noqa: E402
from engine.db import make_engine, make_session_factory, upgrade_database  # noqa: E402
from engine.pii import reference  # noqa: E402

COLUMNS = ("seq, at, instance_id, process_id, process_version_id, actor, cause, action, task_id, task_name, "
           "task_title, lane, form_version, data_diff, details, prev_hash, hash")
PROCESSES = [("after_sales_ticket", 1), ("complaint", 2), ("revisit", 3)]
STEPS = [  # action, actor, cause, task name, title, lane, details
    ("instance_started", None, "user", None, None, None, {"version": 1}),
    ("engine_task", "system", "system", "start", "开始 / Start", "customer_service", {"type": "StartEvent"}),
    ("task_ready", "system", "system", "intake", "登记 / Intake", "customer_service",
     {"group": "customer_service", "assignee": None, "due_at": "2024-03-15T10:00:00+00:00"}),
    ("task_completed", None, "user", "intake", "登记 / Intake", "customer_service", None),
    ("engine_task", "system", "system", "classify", "分类 / Classify", "customer_service", {"type": "ScriptTask"}),
    ("engine_task", "system", "system", "gw", "紧急? / Urgent?", "customer_service", {"type": "ExclusiveGateway"}),
    ("task_ready", "system", "system", "diagnose", "诊断 / Diagnose", "technical_support",
     {"group": "technical_support", "assignee": None, "due_at": "2024-03-15T14:00:00+00:00"}),
    ("timer_fired", "timer", "timer", "sla", "超时 / SLA breached", "supervisor", {"type": "BoundaryEvent"}),
]


def build(path: str, rows: int) -> tuple[float, int]:
    """Create the schema and ``rows`` chained audit rows; returns (seconds, personal-data values)."""
    started = time.perf_counter()
    upgrade_database(f"sqlite:///{path}")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    step_s = 365 * 86400 / rows
    prev, pii_rows, batch, pii_batch = GENESIS_HASH, 0, [], []
    ins = f"INSERT INTO audit_log ({COLUMNS}) VALUES ({', '.join('?' * 17)})"
    ins_pii = "INSERT INTO audit_pii (seq, path, kind, ref, secret, value, norm) VALUES (?, ?, ?, ?, ?, ?, ?)"
    for seq in range(1, rows + 1):
        process_id, version_id = PROCESSES[seq % 3]
        action, actor, cause, task_name, title, lane, details = STEPS[seq % len(STEPS)]
        actor = actor or f"agent{seq % 40:02d}"
        at = start + timedelta(seconds=seq * step_s)
        data_diff = None
        if action == "task_completed":
            data_diff = {"added": {"priority": ("urgent", "important", "general")[seq % 3], "amount": seq % 997,
                                   "description": "打印机卡纸，重启无效"}}
        if seq % 20 == 0:
            phone = f"13{seq % 10}{seq:08d}"[-11:]
            value = json.dumps(phone)
            secret = os.urandom(16).hex()
            ref = reference(secret, value)
            data_diff = data_diff or {"added": {}}
            data_diff["added"]["contact_phone"] = "pii:" + ref
            pii_batch.append((seq, "data_diff/added/contact_phone", "phone", ref, secret, value, phone))
            pii_rows += 1
        task_id = f"{seq:08x}-0000-4000-8000-000000000000" if task_name else None
        content = {"seq": seq, "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "instance_id": seq // 8,
                   "process_id": process_id, "process_version_id": version_id, "actor": actor, "cause": cause,
                   "action": action, "task_id": task_id, "task_name": task_name, "task_title": title, "lane": lane,
                   "form_version": None, "data_diff": data_diff, "details": details}
        h = sha256(prev.encode() + b"\n" + canonical_json(content).encode()).hexdigest()
        batch.append((seq, at.strftime("%Y-%m-%d %H:%M:%S.%f"), seq // 8, process_id, version_id, actor, cause,
                      action, task_id, task_name, title, lane, None,
                      json.dumps(data_diff) if data_diff is not None else None,
                      json.dumps(details) if details is not None else None, prev, h))
        prev = h
        if len(batch) >= 50_000:
            db.executemany(ins, batch)
            db.executemany(ins_pii, pii_batch)
            batch, pii_batch = [], []
    db.executemany(ins, batch)
    db.executemany(ins_pii, pii_batch)
    db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (rows, prev))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # rows written straight to audit_log: make them searchable
        index_backlog(conn)
    engine.dispose()
    return time.perf_counter() - started, pii_rows


def search_ms(Session, flt: AuditFilter, pages: int = 3) -> float:  # noqa: N803 - a session factory
    """Milliseconds for the first ``pages`` pages of a search (cold connection, keyset paging)."""
    started = time.perf_counter()
    with Session() as session:
        page = search_audit(session, flt)
        for _ in range(pages - 1):
            if not page.older:
                break
            page = search_audit(session, flt, older=page.older)
    return (time.perf_counter() - started) * 1000 / pages


def main() -> None:
    """Build, verify, search; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", default=None, help="build into this SQLite file and keep it")
    args = parser.parse_args()
    tmp = None
    if args.keep:
        path = args.keep
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="careflow-bench-audit-")
        path = os.path.join(tmp.name, "audit.db")
    try:
        build_s, pii = build(path, args.rows)
        engine = make_engine(f"sqlite:///{path}")
        result = verify_chain(engine)
        if not result.ok:
            print(f"verify failed: {result.message}", file=sys.stderr)
            sys.exit(1)
        print(f"rows: {result.rows_checked}")
        print(f"verify_rows_per_s: {int(result.rows_per_s)}")
        print(f"verify_s: {result.elapsed_s:.2f}")
        print(f"pii_values_checked: {result.pii_checked} (of {pii})")
        print(f"build_s: {build_s:.1f}")
        Session = make_session_factory(engine)  # noqa: N806
        june = {"from": "2024-06-01", "to": "2024-06-30"}
        for name, params in (("all", {}), ("user", {"user": "agent07"}), ("user_month", {"user": "agent07", **june}),
                             ("process_action", {"process": "complaint", "action": "task_completed"}),
                             ("month", june), ("instance", {"instance": str(args.rows // 16)})):
            print(f"search_page_ms_{name}: {search_ms(Session, AuditFilter.from_params(params)):.1f}")
        engine.dispose()
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
