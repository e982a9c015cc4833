"""Core tables of the engine. Each concern adds its own tables in its own module,
all on this ``Base`` and each with its own Alembic migration.

Queryable side columns (status, lane, assignee, due times) live next to the serialized
workflow state so inboxes, schedulers and reports never deserialize instances.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"  # sqlalchemy.dialects.sqlite.DATETIME's storage format


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect):  # noqa: ANN001
        """On SQLite, the naive-UTC text SQLAlchemy's DATETIME stores, made in one step (every step
        writes a few dozen datetimes; the decorator's chain costs three times more)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value):  # noqa: ANN001, ANN202
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            v = value.astimezone(UTC)
            return _SQLITE_DATETIME % (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)

        return process

    def process_result_value(self, value, dialect):  # noqa: ANN001
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base shared by every Careflow table."""


class ProcessVersion(Base):
    """One deployed version of one executable process, with the whole bundle it came in."""

    __tablename__ = "process_versions"
    __table_args__ = (UniqueConstraint("process_id", "version"), UniqueConstraint("process_id", "checksum"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    process_id: Mapped[str] = mapped_column(String(200), index=True)
    process_name: Mapped[str | None] = mapped_column(String(400))
    version: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(64))
    bpmn_files: Mapped[dict] = mapped_column(JSON)  # {filename: xml text}
    forms: Mapped[dict] = mapped_column(JSON)  # {filename: JSON Schema}
    form_checksums: Mapped[dict] = mapped_column(JSON)  # {filename: sha256}
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    called_only: Mapped[bool] = mapped_column(Boolean, default=False)  # only reached via a call activity
    author: Mapped[str | None] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Instance(Base):
    """A running or finished process instance: serialized state plus side columns."""

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_status_process", "status", "process_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    process_version_id: Mapped[int] = mapped_column(ForeignKey("process_versions.id"), index=True)
    process_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))  # running | completed | failed | cancelled
    revision: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(Text)  # workflow JSON without the spec
    serializer_version: Mapped[str] = mapped_column(String(20))
    business_key: Mapped[str | None] = mapped_column(String(100), index=True)
    started_by: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_timer_due: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class InstanceStatePart(Base):
    """Finished tasks of an instance's state, written once rather than with every step
    (``engine.serialization.dump_state_parts``; the state holds a stub per task)."""

    __tablename__ = "instance_state_parts"

    instance_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("instances.id"), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)  # the revision whose step wrote it
    tasks: Mapped[str] = mapped_column(Text)  # {workflow key: {task id: task}}, as in the state


class HumanTask(Base):
    """A user task mirrored out of the workflow state (ready ones form the inboxes)."""

    __tablename__ = "human_tasks"
    __table_args__ = (
        Index("ix_human_tasks_status_due", "status", "due_at"),
        # inbox queries (migration 0006): a group's or a user's open tasks in due order
        Index("ix_human_tasks_inbox_group", "status", "group_name", "assignee", "due_at"),
        Index("ix_human_tasks_inbox_assignee", "status", "assignee", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # SpiffWorkflow task UUID
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    process_id: Mapped[str] = mapped_column(String(200))
    process_version_id: Mapped[int] = mapped_column(ForeignKey("process_versions.id"))
    name: Mapped[str] = mapped_column(String(200))  # BPMN element id
    title: Mapped[str | None] = mapped_column(String(400))  # BPMN element name
    lane: Mapped[str | None] = mapped_column(String(200))
    group_name: Mapped[str | None] = mapped_column(String(200))
    assignee: Mapped[str | None] = mapped_column(String(200))
    form_name: Mapped[str | None] = mapped_column(String(300))
    form_checksum: Mapped[str | None] = mapped_column(String(64))
    instructions: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # ready | completed | cancelled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_by: Mapped[str | None] = mapped_column(String(200))
    # inbox filter facets taken from the task data when it became ready (migration 0006)
    priority: Mapped[str | None] = mapped_column(String(20))
    customer_id: Mapped[str | None] = mapped_column(String(64))
    customer_name: Mapped[str | None] = mapped_column(String(200))


class AuditEntry(Base):
    """One append-only, hash-chained audit row per step; never updated or deleted."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_instance_seq", "instance_id", "seq"),
        # the auditor-search indexes, the time order included, are on ``audit_search``
        # (engine.audit_search), not here
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    instance_id: Mapped[int | None] = mapped_column(BigInteger)  # no FK: survives instance deletion
    process_id: Mapped[str | None] = mapped_column(String(200))
    process_version_id: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(200))
    cause: Mapped[str] = mapped_column(String(20))  # user | timer | system | plugin | migration
    action: Mapped[str] = mapped_column(String(50))
    task_id: Mapped[str | None] = mapped_column(String(36))
    task_name: Mapped[str | None] = mapped_column(String(200))
    task_title: Mapped[str | None] = mapped_column(String(400))
    lane: Mapped[str | None] = mapped_column(String(200))
    form_version: Mapped[str | None] = mapped_column(String(64))
    data_diff: Mapped[dict | None] = mapped_column(JSON)
    details: Mapped[dict | None] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditSearchEntry(Base):
    """The searchable columns of an audit row, indexed for auditor search (``engine.audit_search``).

    Filled from ``audit_log`` in batches rather than row by row in every step: four indexes
    shaped ``(filter, at, seq)`` take a page write each per distinct value a step appends,
    which a batch pays once. A derived copy: rebuilt from ``audit_log`` at will.
    """

    __tablename__ = "audit_search"
    __table_args__ = (
        Index("ix_audit_search_actor_at", "actor", "at", "seq"),
        Index("ix_audit_search_process_at", "process_id", "at", "seq"),
        Index("ix_audit_search_action_at", "action", "at", "seq"),
        Index("ix_audit_search_version_at", "process_version_id", "at", "seq"),
        Index("ix_audit_search_at", "at", "seq"),  # no filter, dates or cause alone (migration 0010)
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    process_id: Mapped[str | None] = mapped_column(String(200))
    process_version_id: Mapped[int | None] = mapped_column(BigInteger)


class AuditHead(Base):
    """Single row holding the chain head, locked while a transaction appends audit rows."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Timer(Base):
    """A waiting timer of an instance, mirrored so the worker finds due ones by index."""

    __tablename__ = "timers"
    __table_args__ = (
        Index(
            "ix_timers_waiting_due",
            "due_at",
            sqlite_where=text("status = 'waiting'"),
            postgresql_where=text("status = 'waiting'"),
        ),
        UniqueConstraint("instance_id", "task_id", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    task_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str | None] = mapped_column(String(400))
    kind: Mapped[str] = mapped_column(String(30), default="bpmn")
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20), default="waiting")  # waiting | fired | cancelled
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OutboxMessage(Base):
    """A side effect (notification, webhook...) written in the step's transaction and
    delivered later, at least once, by the delivery worker."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    instance_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    topic: Mapped[str] = mapped_column(String(100))  # e.g. notification template name
    channel: Mapped[str | None] = mapped_column(String(100))  # None = every channel that wants it
    recipient: Mapped[str | None] = mapped_column(String(300))
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | sent | incident
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Incident(Base):
    """Something an operator must look at: a failed delivery, a plugin that raised, a failed instance."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(50))  # delivery | plugin | instance
    source: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    instance_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    outbox_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(String(200))


class User(Base):
    """A person who signs in or is assigned work; ``supervisor`` builds the org chart."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(30))  # agent | supervisor | process_owner | auditor | admin
    password_hash: Mapped[str | None] = mapped_column(String(300))
    supervisor: Mapped[str | None] = mapped_column(String(150))
    locale: Mapped[str | None] = mapped_column(String(10))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GroupMembership(Base):
    """User ↔ group; a group key equals a BPMN lane name unless a plugin maps it."""

    __tablename__ = "group_members"

    username: Mapped[str] = mapped_column(ForeignKey("users.username"), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
