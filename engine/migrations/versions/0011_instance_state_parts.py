"""instance_state_parts: an instance's finished tasks stored once, not with every step

Revision ID: 0011
Revises: 0010

A step rewrote the whole state of its instance: at 200 steps of history, 80 KB, so the
cost of a step grew with the history behind it. The finished tasks now move into parts
written once (``engine.serialization.dump_state_parts``); the state keeps a stub per
task. States written before keep every task in full and load as they are. The downgrade
puts every archived task back into its state first.
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_state_parts",
        sa.Column("instance_id", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("tasks", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"]),
        sa.PrimaryKeyConstraint("instance_id", "part"),
    )


def downgrade() -> None:
    conn = op.get_bind()
    ids = [r[0] for r in conn.execute(sa.text("SELECT DISTINCT instance_id FROM instance_state_parts"))]
    for instance_id in ids:
        parts = {n: json.loads(text) for n, text in conn.execute(
            sa.text("SELECT part, tasks FROM instance_state_parts WHERE instance_id = :i"), {"i": instance_id})}
        state = json.loads(conn.execute(sa.text("SELECT state FROM instances WHERE id = :i"),
                                        {"i": instance_id}).scalar_one())
        for key, workflow in [("", state), *state.get("subprocesses", {}).items()]:
            tasks = workflow.get("tasks", {})
            for task_key, n in list(tasks.items()):
                if type(n) is int:
                    tasks[task_key] = parts[n][key][task_key]
        conn.execute(sa.text("UPDATE instances SET state = :s WHERE id = :i"),
                     {"s": json.dumps(state, separators=(",", ":")), "i": instance_id})
    op.drop_table("instance_state_parts")
