"""Auditor search page benchmark (issue #9): the whole ``/audit`` page (filters, one page of
50 rows, the verification status box, rendering) on a 1,000,000-row audit trail.

Builds the chain with ``bench/audit.py`` (same rows: 40 users, 3 processes, a year), adds the
process versions and, for every 100th instance, an instance row with a ticket number and a
task with a customer id; records a full verification (as after ``careflow audit verify``);
then signs in as an auditor through the real sign-in form and times pages through the Flask
app (the test client: no network, everything else real). Each figure is the median of
``--repeat`` warm requests. Prints ``name: value`` lines; the headline
``audit_search_page_ms`` is a user + date-range search (a couple of filters).

    .venv/bin/python bench/audit_search.py [--rows 1000000] [--repeat 7] [--keep FILE.db]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import accounts  # noqa: E402
from engine.audit_verify import record_verification, verify_chain  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.models import HumanTask, Instance, ProcessVersion  # noqa: E402
from engine.runtime import Careflow  # noqa: E402
from web import create_app  # noqa: E402

PASSWORD = "bench password 1"


def _load_chain_builder():
    """``build(path, rows)`` of bench/audit.py (a script, loaded by path)."""
    spec = importlib.util.spec_from_file_location("careflow_bench_audit", Path(__file__).parent / "audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_context(cf: Careflow, rows: int, every: int = 100) -> int:
    """Process versions 1-3 (the chain's ids), and instance + task rows for every ``every``-th
    instance of the chain (ticket ``SN2024…``, customer ``C…``). Returns how many instances."""
    bench = _load_chain_builder()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    xml = (ROOT / "tests" / "fixtures" / "simple.bpmn").read_text(encoding="utf-8")
    made = 0
    with cf.Session() as s, s.begin():
        for process_id, version_id in bench.PROCESSES:
            s.add(ProcessVersion(id=version_id, process_id=process_id, process_name=process_id,
                                 version=version_id,
                                 checksum=f"{version_id:064d}", bpmn_files={"simple.bpmn": xml}, forms={},
                                 form_checksums={}, warnings=[], author="bench", created_at=start))
        s.flush()
        tasks = []
        for iid in range(every, rows // 8, every):
            process_id, version_id = bench.PROCESSES[(iid * 8) % 3]
            at = start + timedelta(seconds=iid * 8 * 365 * 86400 / rows)
            s.add(Instance(id=iid, process_version_id=version_id, process_id=process_id, status="completed",
                           revision=1, state="{}", serializer_version="bench",
                           business_key=f"SN2024{iid:07d}",
                           started_by=f"agent{iid % 40:02d}", created_at=at, updated_at=at))
            tasks.append(HumanTask(id=str(uuid.UUID(int=iid)), instance_id=iid, process_id=process_id,
                                   process_version_id=version_id, name="intake", title="登记 / Intake",
                                   lane="customer_service", group_name="customer_service", status="completed",
                                   created_at=at, completed_at=at, completed_by=f"agent{iid % 40:02d}",
                                   customer_id=f"C{iid:06d}", customer_name=f"客户 {iid}"))
            made += 1
        s.flush()  # the instances before their tasks (no ORM relationship orders them)
        s.add_all(tasks)
    return made


def timed(client, url: str, repeat: int) -> float:
    """Median milliseconds of ``repeat`` GETs of ``url`` (after one warm-up); fails on non-200."""
    samples = []
    for i in range(repeat + 1):
        started = time.perf_counter()
        r = client.get(url)
        body = r.get_data()
        elapsed = (time.perf_counter() - started) * 1000
        if r.status_code != 200 or not re.search(rb'<(tr|li class="step") (data-seq|id="step-)', body):
            why = f"HTTP {r.status_code}" if r.status_code != 200 else "no rows found"
            raise SystemExit(f"{url}: {why}")
        if i:
            samples.append(elapsed)
    return statistics.median(samples)


def main() -> None:
    """Build, verify, time the pages; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", default=None, help="build into this SQLite file and keep it")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="careflow-bench-audit-search-")
    path = args.keep or os.path.join(tmp.name, "audit.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    try:
        build_s, _pii = _load_chain_builder().build(path, args.rows)
        cf = Careflow(Settings(database_url=f"sqlite:///{path}", home=Path(tmp.name)))
        instances = add_context(cf, args.rows)
        accounts.add_user(cf, "auditor", role="auditor", password=PASSWORD, actor="bench")
        result = verify_chain(cf.db)
        with cf.Session() as s, s.begin():
            record_verification(s, result, "bench")
        app = create_app({"CAREFLOW_ENGINE": cf, "SECRET_KEY": "bench", "TESTING": True,
                          "SESSION_COOKIE_SECURE": False, "WTF_CSRF_SSL_STRICT": False})
        client = app.test_client()
        token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").get_data(as_text=True))
        r = client.post("/login", data={"username": "auditor", "password": PASSWORD,
                                        "csrf_token": token.group(1)})
        if r.status_code != 302:
            raise SystemExit(f"sign-in failed: HTTP {r.status_code}")
        iid = (args.rows // 8 // 2) // 100 * 100
        cases = {
            "user_month": "/audit?user=agent08&from=2024-06-01&to=2024-06-30",
            "all": "/audit",
            "process_action": "/audit?process=complaint&action=task_completed",
            "process_version_month": "/audit?process=complaint&version=2&from=2024-09-01&to=2024-09-30",
            "cause_month": "/audit?cause=timer&from=2024-11-01&to=2024-11-30",
            "ticket": f"/audit?ticket=SN2024{iid:07d}",
            "customer": f"/audit?customer=C{iid:06d}",
        }
        figures = {name: timed(client, url, args.repeat) for name, url in cases.items()}
        # deeper pages cost what the first costs (keyset paging): the 20th page of the headline search
        url = cases["user_month"]
        for _ in range(19):
            body = client.get(url).get_data(as_text=True)
            older = re.search(r'id="page-older" href="([^"]+)"', body)
            if not older:
                break
            url = older.group(1).replace("&amp;", "&")
        figures["user_month_page20"] = timed(client, url, args.repeat)
        figures["history"] = timed(client, f"/audit/instances/{iid}", args.repeat)
        started = time.perf_counter()
        r = client.get(cases["user_month"].replace("/audit?", "/audit/export/csv?"))
        exported = r.get_data(as_text=True).count("\n") - 1
        export_s = time.perf_counter() - started

        print(f"rows: {args.rows}")
        print(f"audit_search_page_ms: {figures['user_month']:.1f}")
        for name, ms in figures.items():
            print(f"audit_search_page_ms_{name}: {ms:.1f}")
        print(f"audit_export_csv_rows: {exported}")
        print(f"audit_export_csv_rows_per_s: {exported / export_s:.0f}")
        print(f"verify_rows_per_s: {result.rows_per_s:.0f}")
        print(f"build_s: {build_s:.1f} (+{instances} instances with tickets and customers)")
        cf.close()
    finally:
        tmp.cleanup()


if __name__ == "__main__":
    main()
