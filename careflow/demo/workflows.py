"""Demo step 1: deploy the shipped workflows in ``workflows/``."""

from __future__ import annotations

from pathlib import Path

ORDER = 10
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def seed(engine, echo) -> None:
    """Deploy every BPMN file in workflows/ (unchanged ones keep their version)."""
    if not any(WORKFLOWS.glob("*.bpmn")):
        echo("No workflows to deploy.")
        return
    for r in engine.deploy([WORKFLOWS], author="demo", comment="shipped workflows"):
        echo(f"Workflow {r.process_id}: version {r.version}{' (new)' if r.created else ''}")
