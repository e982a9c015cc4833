"""audit: the time-order index moves from audit_log to audit_search

Revision ID: 0010
Revises: 0009

``ix_audit_at`` on ``audit_log`` cost every step commit 2.5 of its ~41 pages written and
fsynced. The searches it served (no filter, dates alone, cause alone) now walk
``ix_audit_search_at (at, seq)`` on the batched copy, like the other auditor filters
(migration 0008, ``engine/audit_search.py``).

Retention pruning (the DBA procedure of migration 0007) finds its anchor through the copy::

    SELECT seq, hash FROM audit_log WHERE seq = (
        SELECT MAX(seq) FROM audit_search WHERE at < now() - interval '6 months');
"""
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_search_at", "audit_search", ["at", "seq"])
    op.drop_index("ix_audit_at", table_name="audit_log")


def downgrade() -> None:
    op.create_index("ix_audit_at", "audit_log", ["at"])
    op.drop_index("ix_audit_search_at", table_name="audit_search")
