"""Engine benchmark: bare SpiffWorkflow vs Careflow's durable steps, and step cost vs history.

    .venv/bin/python bench/engine.py [--instances N]

Prints ``name: value`` lines:
- raw_instances_per_s: the after-sales process run to completion in memory by bare
  SpiffWorkflow (default script engine, host functions as in-memory stand-ins);
- durable_instances_per_s: the same path through Careflow: a transaction per step with
  audit, ticket rows and outbox, SQLite in WAL mode with synchronous=FULL;
- durable_over_raw: their ratio (target >= 0.5);
- durable_over_raw_range: the lowest and highest ratio of the rounds;
- durable_commit_ms_per_instance: of a durable instance's time, the part spent in its five
  commits (the WAL fsync of synchronous=FULL; depends on the disk more than on the code);
- step_cost_200_over_5: median cost of completing a task in an instance with 200 steps
  of history over one with 5 (target <= 1.5).

The two sides are measured in alternating rounds (``--rounds``, ``--instances`` each), and the
figures are the medians over the rounds: a machine that slows down for a few seconds then
weighs on one round of each side, not on one whole side. The durable side keeps one
database through its rounds, so later rounds run against a larger one.

Both sides run under the garbage-collector threshold Careflow's processes set
(``engine.gc_tuning``; ``CAREFLOW_GC_THRESHOLD=0`` measures with Python's own).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this file is named like the engine package: look in the project root first, bench/ last
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"] + [str(ROOT / "bench")]

from engine.config import Settings  # noqa: E402
from engine.gc_tuning import tune_gc  # noqa: E402
from engine.runtime import Careflow  # noqa: E402

from scenario import AFTER_SALES, raw_run  # noqa: E402


def durable_run(cf: Careflow, scenario) -> None:
    """One instance through the engine, completing each ready task with the scenario's data."""
    r = cf.start(scenario.process_id, scenario.initial_data, actor="bench")
    ready = r.ready_tasks
    while ready:
        task = ready[0]
        r = cf.complete(task["id"], scenario.data_for(task["name"]), user="bench")
        ready = r.ready_tasks
    if r.status != "completed":
        raise SystemExit(f"instance {r.instance_id} ended {r.status}, not completed")


def measure(fn, n: int, warm_up: int = 2) -> float:
    """Runs per second of ``fn`` over ``n`` runs (after ``warm_up`` runs)."""
    for _ in range(warm_up):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def step_costs(cf: Careflow) -> dict[int, float]:
    """Median complete() time at 5 and 200 steps of history (looped task, one step each)."""
    cf.deploy([ROOT / "bench" / "history.bpmn"])
    r = cf.start("bench_history", {"done": False})
    times = []
    for i in range(215):
        [t] = cf.tasks(instance_id=r.instance_id)
        t0 = time.perf_counter()
        cf.complete(t["id"], {"done": False, "entry": f"entry {i}"}, user="bench")
        times.append(time.perf_counter() - t0)
    return {5: statistics.median(times[2:12]), 200: statistics.median(times[195:215])}


def _time_commits(cf: Careflow) -> list[float]:
    """Seconds each database commit of ``cf`` takes from now on (appended to the returned list):
    the steps' own connections (``engine.step_sessions``) and the shared pool's."""
    times: list[float] = []
    for db in {cf.db, cf.step_session.engine} - {None}:
        do_commit = db.dialect.do_commit

        def timed(dbapi_connection, do_commit=do_commit) -> None:  # noqa: ANN001 - a DBAPI connection
            t0 = time.perf_counter()
            do_commit(dbapi_connection)
            times.append(time.perf_counter() - t0)

        db.dialect.do_commit = timed
    return times


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=200, help="instances per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    scenario = AFTER_SALES
    tune_gc()  # both measured in a process set up as Careflow's own are (engine/gc_tuning.py)

    home = Path(tempfile.mkdtemp(prefix="careflow-bench-"))
    cf = Careflow(Settings(database_url=f"sqlite:///{home / 'bench.db'}", home=home))
    cf.init_db()
    cf.deploy([ROOT / "workflows"] if scenario.deploy_folder else [scenario.bpmn])
    commits = _time_commits(cf)
    gc.collect()  # the set-up's garbage (parsing, deploying) is collected before the timing, not in a round
    raws, durables, commit_ms = [], [], []
    for i in range(args.rounds):
        warm_up = 2 if i == 0 else 0
        raws.append(measure(lambda: raw_run(scenario), args.instances, warm_up))
        del commits[:]
        durables.append(measure(lambda: durable_run(cf, scenario), args.instances, warm_up))
        commit_ms.append(sum(commits[-args.instances * (scenario.user_tasks + 1):]) * 1000 / args.instances)
    costs = step_costs(cf)
    cf.close()
    ratios = [d / r for d, r in zip(durables, raws, strict=True)]

    print(f"scenario: {scenario.process_id} ({scenario.user_tasks} user tasks per instance)")
    print(f"raw_instances_per_s: {statistics.median(raws):.1f}")
    print(f"durable_instances_per_s: {statistics.median(durables):.1f}")
    print(f"durable_over_raw: {statistics.median(ratios):.2f}")
    print(f"durable_over_raw_range: {min(ratios):.2f}-{max(ratios):.2f}")
    print(f"durable_commit_ms_per_instance: {statistics.median(commit_ms):.2f}")
    print(f"step_ms_at_5: {costs[5] * 1000:.2f}")
    print(f"step_ms_at_200: {costs[200] * 1000:.2f}")
    print(f"step_cost_200_over_5: {costs[200] / costs[5]:.2f}")


if __name__ == "__main__":
    main()
