"""audit: personal data outside the chain (audit_pii), verification results, search indexes,
and triggers that make the audit tables append-only

Revision ID: 0007
Revises: 0001

The triggers refuse UPDATE, DELETE and TRUNCATE of ``audit_log`` for every role, the
table owner included (the application connects as the owner in tests, and a refusal
that depends on who asks is easy to lose). ``audit_pii`` accepts one kind of UPDATE only:
erasing a value (value/secret/norm cleared, ``erased_at`` set). ``audit_head`` only moves
forward. SQLite gets the same triggers.

Retention (audit rows are kept at least 6 months; nothing in Careflow deletes them, and
no foreign key lets a deletion cascade into them). A DBA pruning older rows does it in a
maintenance window, as the tables' owner (not the application's role), on PostgreSQL::

    -- 1. record the anchor: the last row to be pruned (verification restarts after it)
    SELECT seq, hash FROM audit_log WHERE at < now() - interval '6 months' ORDER BY seq DESC LIMIT 1;
    BEGIN;
    ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
    ALTER TABLE audit_pii DISABLE TRIGGER audit_pii_erase_only;
    DELETE FROM audit_pii WHERE seq <= :anchor_seq;
    DELETE FROM audit_log WHERE seq <= :anchor_seq;
    ALTER TABLE audit_pii ENABLE TRIGGER audit_pii_erase_only;
    ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;
    COMMIT;

then verifies with ``careflow audit verify --anchor SEQ:HASH``. On SQLite: ``DROP TRIGGER``
the ``audit_log_no_delete`` / ``audit_pii_no_delete`` triggers, delete, and re-create them
(``alembic downgrade``/``upgrade`` of this revision does not touch the rows). Keep the
application's own role without ownership of these tables in production (GRANT SELECT,
INSERT on audit_log/audit_pii, SELECT, UPDATE on audit_head) so it can never disable them.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SEARCH_INDEXES = {
    "ix_audit_actor_at": ["actor", "at", "seq"],
    "ix_audit_process_at": ["process_id", "at", "seq"],
    "ix_audit_action_at": ["action", "at", "seq"],
    "ix_audit_version_at": ["process_version_id", "at", "seq"],
}

_ERASURE = ("OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL AND NEW.secret IS NULL AND NEW.norm IS NULL "
            "AND NEW.id = OLD.id AND NEW.seq = OLD.seq AND NEW.path = OLD.path AND NEW.kind = OLD.kind "
            "AND NEW.ref = OLD.ref")

PG_UP = [
    """CREATE FUNCTION careflow_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'careflow: % on % refused: the audit trail is append-only', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege',
          HINT = 'retention pruning is a DBA procedure: see engine/migrations/versions/0007_audit.py';
END $$""",
    f"""CREATE FUNCTION careflow_audit_pii_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND {_ERASURE} THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'careflow: % on audit_pii refused: personal data in the audit trail can only be erased', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$""",
    """CREATE FUNCTION careflow_audit_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.seq > OLD.seq THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'careflow: % on audit_head refused: the chain head only moves forward', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$""",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION careflow_audit_append_only()",
    "CREATE TRIGGER audit_pii_erase_only BEFORE UPDATE OR DELETE ON audit_pii "
    "FOR EACH ROW EXECUTE FUNCTION careflow_audit_pii_guard()",
    "CREATE TRIGGER audit_pii_no_truncate BEFORE TRUNCATE ON audit_pii "
    "FOR EACH STATEMENT EXECUTE FUNCTION careflow_audit_append_only()",
    "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_head "
    "FOR EACH ROW EXECUTE FUNCTION careflow_audit_head_guard()",
    "CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head "
    "FOR EACH STATEMENT EXECUTE FUNCTION careflow_audit_append_only()",
]
PG_DOWN = [
    "DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_head",
    "DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_head",
    "DROP TRIGGER IF EXISTS audit_pii_no_truncate ON audit_pii",
    "DROP TRIGGER IF EXISTS audit_pii_erase_only ON audit_pii",
    "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
    "DROP FUNCTION IF EXISTS careflow_audit_head_guard()",
    "DROP FUNCTION IF EXISTS careflow_audit_pii_guard()",
    "DROP FUNCTION IF EXISTS careflow_audit_append_only()",
]


def _sqlite_refuse(name: str, when: str, table: str, why: str, condition: str | None = None) -> str:
    where = f" WHEN NOT ({condition})" if condition else ""
    return (f"CREATE TRIGGER {name} BEFORE {when} ON {table}{where} BEGIN "
            f"SELECT RAISE(ABORT, 'careflow: {when} on {table} refused: {why}'); END")


SQLITE_UP = [
    _sqlite_refuse("audit_log_no_update", "UPDATE", "audit_log", "the audit trail is append-only"),
    _sqlite_refuse("audit_log_no_delete", "DELETE", "audit_log", "the audit trail is append-only"),
    _sqlite_refuse("audit_pii_no_delete", "DELETE", "audit_pii", "personal data can only be erased"),
    _sqlite_refuse("audit_pii_erase_only", "UPDATE", "audit_pii", "personal data can only be erased", _ERASURE),
    _sqlite_refuse("audit_head_no_delete", "DELETE", "audit_head", "the chain head only moves forward"),
    _sqlite_refuse("audit_head_forward_only", "UPDATE", "audit_head", "the chain head only moves forward",
                   "NEW.id = OLD.id AND NEW.seq > OLD.seq"),
]
SQLITE_DOWN = [f"DROP TRIGGER IF EXISTS {name}" for name in (
    "audit_head_forward_only", "audit_head_no_delete", "audit_pii_erase_only", "audit_pii_no_delete",
    "audit_log_no_delete", "audit_log_no_update")]


def upgrade() -> None:
    op.create_table(
        "audit_pii",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.String(length=64), nullable=True),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("norm", sa.String(length=200), nullable=True),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("erased_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seq", "path", name="uq_audit_pii_seq_path"),
    )
    op.create_index("ix_audit_pii_norm", "audit_pii", ["norm"])
    op.create_index("ix_audit_pii_kind", "audit_pii", ["kind"])
    op.create_table(
        "audit_verifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=200), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("from_seq", sa.BigInteger(), nullable=False),
        sa.Column("rows_checked", sa.BigInteger(), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=True),
        sa.Column("head_hash", sa.String(length=64), nullable=True),
        sa.Column("first_bad_seq", sa.BigInteger(), nullable=True),
        sa.Column("problem", sa.String(length=20), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("elapsed_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for name, columns in SEARCH_INDEXES.items():
        op.create_index(name, "audit_log", columns)
    statements = PG_UP if op.get_bind().dialect.name == "postgresql" else SQLITE_UP
    for sql in statements:
        op.execute(sql)


def downgrade() -> None:
    statements = PG_DOWN if op.get_bind().dialect.name == "postgresql" else SQLITE_DOWN
    for sql in statements:
        op.execute(sql)
    for name in SEARCH_INDEXES:
        op.drop_index(name, table_name="audit_log")
    op.drop_table("audit_verifications")
    op.drop_index("ix_audit_pii_kind", table_name="audit_pii")
    op.drop_index("ix_audit_pii_norm", table_name="audit_pii")
    op.drop_table("audit_pii")
