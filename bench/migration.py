"""Migration benchmark: dry run and real migration of running instances between two versions.

    .venv/bin/python bench/migration.py [--instances N] [--database-url URL]

Instances of ``tests/fixtures/mig_ticket_v1.bpmn`` wait at their diagnose task (a ready user
task with a waiting SLA timer); version 2 renames that task. Prints ``name: value`` lines:
- plan_instances_per_s: ``plan_migration`` (restore, align, move in memory, save/restore round trip);
- migrate_instances_per_s: ``migrate_instances`` (plus lock, task rows, timers, audit, one
  transaction per instance; SQLite WAL with synchronous=FULL unless --database-url says otherwise);
- migrated: instances moved (must equal --instances).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from engine.config import Settings, normalize_database_url  # noqa: E402
from engine.migration import migrate_instances, plan_migration  # noqa: E402
from engine.runtime import Careflow  # noqa: E402

from migration_helpers import at_diagnose, deploy  # noqa: E402


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = normalize_database_url(args.database_url) if args.database_url else f"sqlite:///{tmp}/bench.db"
        cf = Careflow(Settings(database_url=url, home=Path(tmp)))
        cf.init_db()
        deploy(cf, "mig_ticket_v1.bpmn")
        for _ in range(args.instances):
            at_diagnose(cf)
        deploy(cf, "mig_ticket_v2_renamed.bpmn")
        cf._wf_cache.clear()  # measure restoring from the database, as after a restart

        t0 = time.perf_counter()
        plans = plan_migration(cf, "mig_ticket", 1, 2)
        plan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = migrate_instances(cf, "mig_ticket", 1, 2, batch_size=100)
        migrate_s = time.perf_counter() - t0
        cf.close()
    if not all(p.movable for p in plans) or not report.ok:
        raise SystemExit("some instances could not move")
    print(f"plan_instances_per_s: {len(plans) / plan_s:.0f}")
    print(f"migrate_instances_per_s: {len(report.migrated) / migrate_s:.0f}")
    print(f"migrated: {len(report.migrated)}")


if __name__ == "__main__":
    main()
