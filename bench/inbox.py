"""Inbox speed with 100,000 open tasks (rows inserted directly).

    .venv/bin/python bench/inbox.py [--tasks 100000] [--database-url URL]

Prints ``name: value`` lines: ``inbox_page_ms`` is the median time of the agent's inbox
page as the browser gets it (HTTP through the Flask app: query, count, render);
``inbox_query_ms``/``team_query_ms``/``all_query_ms``/``filtered_query_ms``/``deep_page_query_ms``
time the engine queries alone.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from engine import accounts  # noqa: E402
from engine import inbox as engine_inbox  # noqa: E402
from engine.models import HumanTask, Instance  # noqa: E402
from engine.runtime import Careflow  # noqa: E402

from benchutil import analyze, signed_in_client, temp_engine, timed  # noqa: E402

GROUPS = ["customer_service", "technical_support", "supervisor", "account_manager", "sales"]
AGENTS = [f"agent{i:02d}" for i in range(40)]


def seed(cf: Careflow, n: int) -> None:
    """Users, one deployed process, 1,000 instances and ``n`` open tasks spread over groups and people."""
    accounts.add_user(cf, "boss", role="supervisor", password="bench-password", groups=["customer_service"])
    for i, name in enumerate(AGENTS):
        accounts.add_user(cf, name, role="agent", password=None, groups=[GROUPS[i % 2]], supervisor="boss")
    accounts.add_user(cf, "viewer", role="auditor", password=None)
    version_id = cf.deploy([ROOT / "tests" / "fixtures" / "simple.bpmn"], author="bench")[0].version_id
    now = cf.now()
    with cf.Session() as s, s.begin():
        s.execute(insert(Instance), [dict(process_version_id=version_id, process_id="simple_review", status="running",
                                          revision=1, state="{}", serializer_version="bench", created_at=now,
                                          updated_at=now) for _ in range(1000)])
    rows = []
    for i in range(n):
        group = GROUPS[i % 5] if i % 3 else GROUPS[i % 2]
        assignee = AGENTS[i % 40] if i % 4 == 0 else None
        rows.append(dict(id=str(uuid.UUID(int=i + 1)), instance_id=1 + i % 1000, process_id="simple_review",
                         process_version_id=version_id, name="intake" if i % 2 else "approve", title="登记 / Intake",
                         lane=group, group_name=group, assignee=assignee, status="ready",
                         created_at=now - timedelta(hours=i % 72),
                         due_at=(now + timedelta(minutes=(i * 7) % 10000 - 2000)) if i % 10 else None,
                         priority=("urgent", "important", "general")[i % 3], customer_id=f"C{i % 5000:05d}",
                         customer_name=f"客户{i % 5000:05d}"))
        if len(rows) == 10_000:
            with cf.Session() as s, s.begin():
                s.execute(insert(HumanTask), rows)
            rows = []
    if rows:
        with cf.Session() as s, s.begin():
            s.execute(insert(HumanTask), rows)
    analyze(cf, "human_tasks")


def main() -> None:
    """Seed and measure."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    cf, tmp = temp_engine(args.database_url)
    t0 = time.perf_counter()
    seed(cf, args.tasks)
    print(f"seed_s: {time.perf_counter() - t0:.1f}")
    print(f"open_tasks: {args.tasks}")
    agent = engine_inbox.Scope(username="agent01", groups=["technical_support"])
    boss = engine_inbox.Scope(username="boss", groups=["customer_service"], reports=AGENTS, whole_groups=True)
    everyone = engine_inbox.Scope(username="viewer", everything=True)
    print(f"inbox_query_ms: {timed(lambda: engine_inbox.inbox(cf, agent, 'inbox')):.1f}")
    print(f"team_query_ms: {timed(lambda: engine_inbox.inbox(cf, boss, 'team')):.1f}")
    print(f"all_query_ms: {timed(lambda: engine_inbox.inbox(cf, everyone, 'all')):.1f}")
    print(f"filtered_query_ms: {timed(lambda: engine_inbox.inbox(cf, agent, 'inbox', priority='urgent')):.1f}")
    print(f"customer_query_ms: {timed(lambda: engine_inbox.inbox(cf, everyone, 'all', customer='客户0012')):.1f}")
    print(f"deep_page_query_ms: {timed(lambda: engine_inbox.inbox(cf, agent, 'inbox', page=200)):.1f}")

    accounts.set_active(cf, "agent01", True, actor="bench")
    client = signed_in_client(cf, "agent01")

    def page():
        r = client.get("/tasks")
        assert r.status_code == 200, r.status_code

    print(f"inbox_page_ms: {timed(page):.1f}")
    cf.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
