"""customers: registry, contacts, merges, revisits, surveys, complaints

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("customer_type", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("industry", sa.String(length=10), nullable=True),
        sa.Column("credit_code", sa.String(length=18), nullable=True),
        sa.Column("id_number", sa.String(length=18), nullable=True),
        sa.Column("contact_person", sa.String(length=100), nullable=True),
        sa.Column("contact_title", sa.String(length=100), nullable=True),
        sa.Column("phone", sa.String(length=40), nullable=False),
        sa.Column("phone_key", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("first_contact_date", sa.Date(), nullable=True),
        sa.Column("need_types", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=30), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("annual_spend", sa.BigInteger(), nullable=True),
        sa.Column("has_inquiries", sa.Boolean(), nullable=False),
        sa.Column("strategic_value", sa.String(length=1), nullable=True),
        sa.Column("tier", sa.String(length=30), nullable=True),
        sa.Column("account_manager", sa.String(length=150), nullable=True),
        sa.Column("birthday", sa.Date(), nullable=True),
        sa.Column("signing_date", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("merged_into", sa.BigInteger(), nullable=True),
        sa.Column("revisit_due_at", TS, nullable=True),
        sa.Column("last_revisit_at", TS, nullable=True),
        sa.Column("last_contact_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index("ux_customers_credit_code_active", ["credit_code"], unique=True,
                              sqlite_where=sa.text("status = 'active' AND credit_code IS NOT NULL"),
                              postgresql_where=sa.text("status = 'active' AND credit_code IS NOT NULL"))
        batch_op.create_index("ux_customers_id_number_active", ["id_number"], unique=True,
                              sqlite_where=sa.text("status = 'active' AND id_number IS NOT NULL"),
                              postgresql_where=sa.text("status = 'active' AND id_number IS NOT NULL"))
        batch_op.create_index("ux_customers_phone_key_active", ["phone_key"], unique=True,
                              sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
        batch_op.create_index("ix_customers_status_due", ["status", "revisit_due_at"], unique=False)
        batch_op.create_index("ix_customers_name", ["name"], unique=False)
        batch_op.create_index("ix_customers_account_manager", ["account_manager"], unique=False)

    op.create_table(
        "customer_contacts",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("original_customer_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.BigInteger(), nullable=True),
        sa.Column("by_user", sa.String(length=200), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("customer_contacts", schema=None) as batch_op:
        batch_op.create_index("ix_customer_contacts_customer_at", ["customer_id", "at"], unique=False)
        batch_op.create_index("ix_customer_contacts_instance_id", ["instance_id"], unique=False)

    op.create_table(
        "customer_merges",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("kept_id", ID, nullable=False),
        sa.Column("dropped_id", ID, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("by_user", sa.String(length=200), nullable=True),
        sa.Column("filled_fields", sa.JSON(), nullable=False),
        sa.Column("moved_contacts", sa.Integer(), nullable=False),
        sa.Column("kept_before", sa.JSON(), nullable=False),
        sa.Column("dropped_snapshot", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["kept_id"], ["customers.id"]),
        sa.ForeignKeyConstraint(["dropped_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dropped_id"),
    )
    with op.batch_alter_table("customer_merges", schema=None) as batch_op:
        batch_op.create_index("ix_customer_merges_kept_id", ["kept_id"], unique=False)

    op.create_table(
        "customer_revisits",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("due_key", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("tier", sa.String(length=30), nullable=True),
        sa.Column("mode", sa.String(length=20), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("instance_id", sa.BigInteger(), nullable=True),
        sa.Column("source_instance_id", sa.BigInteger(), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("customer_id", "due_key", name="uq_customer_revisits_customer_due"),
    )
    with op.batch_alter_table("customer_revisits", schema=None) as batch_op:
        batch_op.create_index("ix_customer_revisits_status", ["status", "customer_id"], unique=False)
        batch_op.create_index("ix_customer_revisits_instance_id", ["instance_id"], unique=False)

    op.create_table(
        "survey_links",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("ticket_number", sa.String(length=40), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("response_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("survey_links", schema=None) as batch_op:
        batch_op.create_index("ix_survey_links_customer_id", ["customer_id"], unique=False)

    op.create_table(
        "survey_responses",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("ticket_number", sa.String(length=40), nullable=True),
        sa.Column("link_id", sa.String(length=32), nullable=True),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("taken_by", sa.String(length=200), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("response_speed", sa.Integer(), nullable=False),
        sa.Column("resolution_efficiency", sa.Integer(), nullable=False),
        sa.Column("engineer_expertise", sa.Integer(), nullable=False),
        sa.Column("overall", sa.Integer(), nullable=False),
        sa.Column("suggestions", sa.JSON(), nullable=False),
        sa.Column("followup_instance_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("link_id"),
    )
    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.create_index("ix_survey_responses_customer_at", ["customer_id", "at"], unique=False)
        batch_op.create_index("ix_survey_responses_ticket_number", ["ticket_number"], unique=False)

    op.create_table(
        "complaints",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("customer_id", ID, nullable=True),
        sa.Column("customer_name", sa.String(length=200), nullable=True),
        sa.Column("channel", sa.String(length=30), nullable=True),
        sa.Column("cause", sa.String(length=50), nullable=True),
        sa.Column("severity", sa.String(length=20), nullable=True),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("customer_demand", sa.Text(), nullable=True),
        sa.Column("related_ticket", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.BigInteger(), nullable=True),
        sa.Column("tier", sa.String(length=30), nullable=True),
        sa.Column("sla_policy", sa.String(length=100), nullable=True),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("respond_due", TS, nullable=True),
        sa.Column("plan_due", TS, nullable=True),
        sa.Column("resolve_due", TS, nullable=True),
        sa.Column("responded_at", TS, nullable=True),
        sa.Column("planned_at", TS, nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("satisfaction", sa.Integer(), nullable=True),
        sa.Column("substantiated", sa.Boolean(), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("recorded_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("number"),
    )
    with op.batch_alter_table("complaints", schema=None) as batch_op:
        batch_op.create_index("ix_complaints_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_complaints_cause", ["cause"], unique=False)
        batch_op.create_index("ix_complaints_customer_id", ["customer_id"], unique=False)
        batch_op.create_index("ix_complaints_instance_id", ["instance_id"], unique=False)


def downgrade() -> None:
    for table in ("complaints", "survey_responses", "survey_links", "customer_revisits", "customer_merges",
                  "customer_contacts", "customers"):
        op.drop_table(table)
