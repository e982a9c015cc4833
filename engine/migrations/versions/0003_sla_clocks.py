"""SLA clocks and escalations (engine/sla.py); wake-up notifications for the worker on PostgreSQL

Revision ID: 0003
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One NOTIFY per statement that adds or moves due work, so a sleeping `careflow worker`
# wakes up at once instead of at its next --max-sleep (identical notifications of one
# transaction are delivered once).
WAKE_CHANNEL = "careflow_worker"
WAKE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION careflow_wake_worker() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{WAKE_CHANNEL}', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
WAKE_TRIGGERS = (
    ("careflow_wake_timers", "timers", "INSERT"),
    ("careflow_wake_sla_clocks", "sla_clocks", "INSERT OR UPDATE OF next_rung_at"),
    ("careflow_wake_outbox", "outbox", "INSERT"),
)


def upgrade() -> None:
    op.create_table(
        "sla_clocks",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("subject_type", sa.String(length=30), nullable=False),
        sa.Column("subject_key", sa.String(length=100), nullable=False),
        sa.Column("instance_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("priority", sa.String(length=30), nullable=True),
        sa.Column("ticket_type", sa.String(length=50), nullable=True),
        sa.Column("tier", sa.String(length=50), nullable=True),
        sa.Column("policy", sa.String(length=200), nullable=False),
        sa.Column("budget", sa.String(length=40), nullable=False),
        sa.Column("calendar_name", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pauses", sa.JSON(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("ladder", sa.JSON(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_rung_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(length=150), nullable=True),
        sa.Column("group_name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subject_key", "name", name="uq_sla_clocks_subject_name"),
    )
    with op.batch_alter_table("sla_clocks", schema=None) as batch_op:
        batch_op.create_index("ix_sla_clocks_due_at", ["due_at"], unique=False)
        batch_op.create_index("ix_sla_clocks_next_rung_at", ["next_rung_at"], unique=False)
        batch_op.create_index("ix_sla_clocks_status_due", ["status", "due_at"], unique=False)
        batch_op.create_index("ix_sla_clocks_instance_id", ["instance_id"], unique=False)

    op.create_table(
        "sla_escalations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("clock_id", BigId, nullable=False),
        sa.Column("rung", sa.String(length=100), nullable=False),
        sa.Column("occurrence", sa.Integer(), nullable=False),
        sa.Column("at_fraction", sa.Float(), nullable=True),
        sa.Column("notify", sa.String(length=150), nullable=False),
        sa.Column("recipient", sa.String(length=300), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outbox_key", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["clock_id"], ["sla_clocks.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("clock_id", "rung", "occurrence", name="uq_sla_escalations_once"),
    )
    with op.batch_alter_table("sla_escalations", schema=None) as batch_op:
        batch_op.create_index("ix_sla_escalations_clock_id", ["clock_id"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(WAKE_FUNCTION)
        for name, table, events in WAKE_TRIGGERS:
            op.execute(f"CREATE TRIGGER {name} AFTER {events} ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION careflow_wake_worker()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _ in WAKE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS careflow_wake_worker()")
    with op.batch_alter_table("sla_escalations", schema=None) as batch_op:
        batch_op.drop_index("ix_sla_escalations_clock_id")
    op.drop_table("sla_escalations")
    with op.batch_alter_table("sla_clocks", schema=None) as batch_op:
        batch_op.drop_index("ix_sla_clocks_instance_id")
        batch_op.drop_index("ix_sla_clocks_status_due")
        batch_op.drop_index("ix_sla_clocks_next_rung_at")
        batch_op.drop_index("ix_sla_clocks_due_at")
    op.drop_table("sla_clocks")
