"""Customer registry benchmark: CSV import, the revisit scheduler and care greetings.

    .venv/bin/python bench/customers.py [--customers N]

Prints ``name: value`` lines (SQLite in WAL mode with synchronous=FULL, a fresh database):
- import_rows_per_s: rows of a valid CSV imported by ``careflow customers import``'s code path;
- import_rerun_rows_per_s: the same file again (every row found as an unchanged duplicate);
- revisits_started_per_s: ``start_due_revisits`` with every customer due (one instance each);
- revisits_rerun_ms: a second ``start_due_revisits`` call when nothing is due any more;
- care_greetings_per_s: ``run_care`` on a holiday (one greeting per customer).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.care import run_care  # noqa: E402
from engine.clock import FrozenClock  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.customers import credit_code_check_char, import_customers, read_csv  # noqa: E402
from engine.revisits import start_due_revisits  # noqa: E402
from engine.runtime import Careflow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="careflow-bench-customers-"))
    cf = Careflow(Settings(database_url=f"sqlite:///{home / 'bench.db'}", home=home),
                  clock=FrozenClock(datetime(2026, 3, 2, 2, tzinfo=UTC)))
    cf.init_db()
    cf.deploy([ROOT / "workflows" / "customer_revisit.bpmn"], author="bench")
    src = home / "customers.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_type", "name", "credit_code", "phone", "annual_spend", "first_contact_date"])
        for n in range(args.customers):
            first = f"91110108{n:09d}"
            spend = (150_000, 50_000, 15_000, 0)[n % 4]
            w.writerow(["enterprise", f"客户{n}号有限公司", first + credit_code_check_char(first), f"139{n:08d}",
                        spend, "2025-06-01"])
    _, rows = read_csv(src)
    t = time.perf_counter()
    result = import_customers(cf, rows)
    took = time.perf_counter() - t
    assert result.created == args.customers, result.to_dict()
    print(f"import_rows_per_s: {args.customers / took:.0f}")
    t = time.perf_counter()
    result = import_customers(cf, rows)
    print(f"import_rerun_rows_per_s: {args.customers / (time.perf_counter() - t):.0f}")
    assert result.unchanged == args.customers
    t = time.perf_counter()
    started = start_due_revisits(cf, limit=args.customers)
    print(f"revisits_started_per_s: {len(started) / (time.perf_counter() - t):.0f}")
    assert len(started) == args.customers
    t = time.perf_counter()
    assert start_due_revisits(cf, limit=args.customers) == []
    print(f"revisits_rerun_ms: {(time.perf_counter() - t) * 1000:.1f}")
    t = time.perf_counter()
    sent = run_care(cf, date(2026, 10, 1))["sent"]
    print(f"care_greetings_per_s: {sent / (time.perf_counter() - t):.0f}")
    cf.close()


if __name__ == "__main__":
    main()
