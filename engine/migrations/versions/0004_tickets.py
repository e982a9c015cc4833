"""tickets: after-sales tickets, their status history and the daily number serials (engine/tickets.py)

Revision ID: 0004
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("instance_id", sa.BigInteger(), nullable=True),
        sa.Column("customer_id", sa.String(length=64), nullable=True),
        sa.Column("customer_name", sa.String(length=200), nullable=True),
        sa.Column("customer_type", sa.String(length=20), nullable=True),
        sa.Column("customer_tier", sa.String(length=30), nullable=True),
        sa.Column("phone", sa.String(length=40), nullable=True),
        sa.Column("contact_name", sa.String(length=100), nullable=True),
        sa.Column("channel", sa.String(length=20), nullable=True),
        sa.Column("type", sa.String(length=30), nullable=False),
        sa.Column("priority", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("reopen_count", sa.Integer(), nullable=False),
        sa.Column("symptom", sa.Text(), nullable=True),
        sa.Column("fault_category", sa.String(length=30), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("sla_policy", sa.String(length=200), nullable=True),
        sa.Column("sla_subject", sa.String(length=100), nullable=False),
        sa.Column("first_response_due", sa.DateTime(timezone=True), nullable=True),
        sa.Column("solution_due", sa.DateTime(timezone=True), nullable=True),
        sa.Column("solution_warn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_response_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=20), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("visit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("engineer", sa.String(length=150), nullable=True),
        sa.Column("spare_parts", sa.JSON(), nullable=False),
        sa.Column("satisfaction", sa.JSON(), nullable=True),
        sa.Column("overall_score", sa.Integer(), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("last_update_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("number", name="uq_tickets_number"),
    )
    op.create_index("ix_tickets_status", "tickets", ["status"])
    op.create_index("ix_tickets_created_at", "tickets", ["created_at"])
    op.create_index("ix_tickets_customer_id", "tickets", ["customer_id"])
    op.create_index("ix_tickets_priority_status", "tickets", ["priority", "status"])
    op.create_index("ix_tickets_instance_id", "tickets", ["instance_id"])

    op.create_table(
        "ticket_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=400), nullable=True),
        sa.Column("by_user", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ticket_events_number", "ticket_events", ["number", "id"])

    op.create_table(
        "ticket_serials",
        sa.Column("day", sa.String(length=8), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day"),
    )


def downgrade() -> None:
    op.drop_table("ticket_serials")
    op.drop_index("ix_ticket_events_number", table_name="ticket_events")
    op.drop_table("ticket_events")
    for name in ("ix_tickets_instance_id", "ix_tickets_priority_status", "ix_tickets_customer_id",
                 "ix_tickets_created_at", "ix_tickets_status"):
        op.drop_index(name, table_name="tickets")
    op.drop_table("tickets")
