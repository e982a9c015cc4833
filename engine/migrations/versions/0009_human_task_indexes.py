"""human_tasks: drop two indexes no query needs

Revision ID: 0009
Revises: 0008

``(status, assignee)`` is a prefix of the inbox index ``(status, assignee, due_at)``
(migration 0006), which serves every query it could; nothing filters tasks by lane (inboxes
go by group). Each index on ``human_tasks`` costs every step a page written and fsynced when
a task becomes ready or is completed: 2.5 of ~43 pages per after-sales step commit.
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_human_tasks_status_assignee", table_name="human_tasks")
    op.drop_index("ix_human_tasks_status_lane", table_name="human_tasks")


def downgrade() -> None:
    op.create_index("ix_human_tasks_status_lane", "human_tasks", ["status", "lane"])
    op.create_index("ix_human_tasks_status_assignee", "human_tasks", ["status", "assignee"])
