"""audit_search: the auditor-search indexes move off audit_log onto a copy filled in batches

Revision ID: 0008
Revises: 0007

The four ``(filter, at, seq)`` indexes of migration 0007 made every step commit write a
page per distinct actor, action, process and version it appended (see
``engine/audit_search.py``). They now index ``audit_search``, a copy of those columns that
the step crossing each multiple of 512 audit rows fills. The upgrade copies every existing
row. Retention pruning (see 0007) deletes the pruned sequence numbers from ``audit_search``
too: ``DELETE FROM audit_search WHERE seq <= :anchor_seq`` (it has no triggers: it is a
derived copy, rebuilt from ``audit_log`` at will).
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

OLD_INDEXES = {
    "ix_audit_actor_at": ["actor", "at", "seq"],
    "ix_audit_process_at": ["process_id", "at", "seq"],
    "ix_audit_action_at": ["action", "at", "seq"],
    "ix_audit_version_at": ["process_version_id", "at", "seq"],
}
NEW_INDEXES = {
    "ix_audit_search_actor_at": ["actor", "at", "seq"],
    "ix_audit_search_process_at": ["process_id", "at", "seq"],
    "ix_audit_search_action_at": ["action", "at", "seq"],
    "ix_audit_search_version_at": ["process_version_id", "at", "seq"],
}
COLUMNS = "seq, at, actor, action, process_id, process_version_id"


def upgrade() -> None:
    op.create_table(
        "audit_search",
        sa.Column("seq", BigId, autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("process_id", sa.String(length=200), nullable=True),
        sa.Column("process_version_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.execute(f"INSERT INTO audit_search ({COLUMNS}) SELECT {COLUMNS} FROM audit_log")
    for name, columns in NEW_INDEXES.items():
        op.create_index(name, "audit_search", columns)
    for name in OLD_INDEXES:
        op.drop_index(name, table_name="audit_log")


def downgrade() -> None:
    for name, columns in OLD_INDEXES.items():
        op.create_index(name, "audit_log", columns)
    for name in NEW_INDEXES:
        op.drop_index(name, table_name="audit_search")
    op.drop_table("audit_search")
