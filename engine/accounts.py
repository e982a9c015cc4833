"""People who sign in: users, groups, passwords, API tokens, sign-in sessions and the
failed-sign-in ledger that rate-limits guessing.

Everything is stored in the database so several web processes (gunicorn workers, more
machines) agree on it. Secrets are never stored in clear: passwords as argon2id hashes,
API tokens and session ids as SHA-256 digests (they are long random values, so a fast
digest is enough and lets us look them up by index).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import ForeignKey, Index, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.audit import append_events
from engine.errors import Conflict, NotFound, Problem, ValidationFailed
from engine.models import Base, BigId, GroupMembership, User, UTCDateTime
from engine.step import Step

if TYPE_CHECKING:
    from engine.runtime import Careflow

ROLES = ("agent", "supervisor", "process_owner", "auditor", "admin")
MIN_PASSWORD_LENGTH = 8
_hasher = PasswordHasher()
# Verifying against this keeps the time of "no such user" equal to "wrong password".
_DUMMY_HASH = _hasher.hash("careflow-timing-equaliser")


class ApiToken(Base):
    """A bearer token an integration uses for the JSON API, acting as one user."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(ForeignKey("users.username"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoginFailure(Base):
    """One failed sign-in; counted per username+address and per address to rate-limit."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"), Index("ix_login_failures_ip_at", "ip", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebSession(Base):
    """A signed-in browser session; the cookie carries only a random id whose digest is the key."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("users.username"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ip: Mapped[str | None] = mapped_column(String(64))


@dataclass
class Account:
    """A user with their groups (what the web layer authorizes against)."""

    username: str
    role: str
    display_name: str | None = None
    email: str | None = None
    supervisor: str | None = None
    locale: str | None = None
    active: bool = True
    groups: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (the ``careflow users list --json`` fields)."""
        return {"username": self.username, "display_name": self.display_name, "role": self.role,
                "groups": list(self.groups), "supervisor": self.supervisor, "email": self.email,
                "locale": self.locale, "active": self.active}


def digest(secret: str) -> str:
    """SHA-256 hex digest of a random secret (token or session id)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _hasher.hash(password)


def check_password_rules(password: str) -> None:
    """Raise ``ValidationFailed`` when a new password is too weak to accept."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed([Problem(f"must have at least {MIN_PASSWORD_LENGTH} characters", field="password")])


def _account(session: Session, user: User) -> Account:
    groups = session.scalars(select(GroupMembership.group_name).where(GroupMembership.username == user.username)
                             .order_by(GroupMembership.group_name)).all()
    return Account(username=user.username, role=user.role, display_name=user.display_name, email=user.email,
                   supervisor=user.supervisor, locale=user.locale, active=user.active, groups=list(groups))


def add_user(cf: Careflow, username: str, *, role: str, password: str | None, groups: Iterable[str] = (),
             supervisor: str | None = None, email: str | None = None, display_name: str | None = None,
             locale: str | None = None, actor: str = "system") -> Account:
    """Create a user (audited). Raises ``ValidationFailed`` for bad input, ``Conflict`` if the name is taken."""
    problems = []
    username = (username or "").strip()
    if not username or len(username) > 150 or any(c.isspace() for c in username):
        problems.append(Problem("must be 1-150 characters without spaces", field="username"))
    if role not in ROLES:
        problems.append(Problem(f"must be one of {', '.join(ROLES)}", field="role"))
    if password is not None:
        try:
            check_password_rules(password)
        except ValidationFailed as err:
            problems += err.problems
    if locale not in (None, "zh", "en"):
        problems.append(Problem("must be zh or en", field="locale"))
    group_list = sorted({g.strip() for g in groups if g and g.strip()})
    with cf.Session() as session, session.begin():
        if supervisor and session.scalar(select(User.id).where(User.username == supervisor)) is None:
            problems.append(Problem(f"no user '{supervisor}' (add the supervisor first)", field="supervisor"))
        if problems:
            raise ValidationFailed(problems)
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise Conflict(f"user '{username}' already exists")
        now = cf.now()
        user = User(username=username, role=role, password_hash=hash_password(password) if password else None,
                    supervisor=supervisor or None, email=email or None, display_name=display_name or None,
                    locale=locale, active=True, created_at=now)
        session.add(user)
        session.flush()
        for g in group_list:
            session.add(GroupMembership(username=username, group_name=g))
        step = Step(session, now, actor=actor, cause="user" if actor != "system" else "system")
        step.audit("user_added", details={"username": username, "role": role, "groups": group_list,
                                          "supervisor": supervisor})
        append_events(session, step.events)
        session.flush()
        return _account(session, user)


def set_password(cf: Careflow, username: str, password: str, *, actor: str = "system") -> None:
    """Replace a user's password (audited, without the password)."""
    check_password_rules(password)
    with cf.Session() as session, session.begin():
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user '{username}'")
        user.password_hash = hash_password(password)
        session.execute(delete(WebSession).where(WebSession.username == username))
        step = Step(session, cf.now(), actor=actor, cause="user" if actor != "system" else "system")
        step.audit("password_changed", details={"username": username})
        append_events(session, step.events)


def set_active(cf: Careflow, username: str, active: bool, *, actor: str) -> None:
    """Activate or deactivate a user (deactivating ends their sessions and tokens stop working)."""
    with cf.Session() as session, session.begin():
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user '{username}'")
        user.active = active
        if not active:
            session.execute(delete(WebSession).where(WebSession.username == username))
        step = Step(session, cf.now(), actor=actor, cause="user")
        step.audit("user_activated" if active else "user_deactivated", details={"username": username})
        append_events(session, step.events)


def set_locale(cf: Careflow, username: str, locale: str | None) -> None:
    """Store a user's language (``zh``, ``en`` or None for the browser's)."""
    if locale not in (None, "zh", "en"):
        raise ValidationFailed([Problem("must be zh or en", field="locale")])
    with cf.Session() as session, session.begin():
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user '{username}'")
        user.locale = locale


def get_account(cf: Careflow, username: str) -> Account | None:
    """The user and their groups, or None."""
    with cf.Session() as session:
        user = session.scalar(select(User).where(User.username == username))
        return _account(session, user) if user else None


def list_accounts(cf: Careflow) -> list[Account]:
    """Every user, by username."""
    with cf.Session() as session:
        users = session.scalars(select(User).order_by(User.username)).all()
        members: dict[str, list[str]] = {}
        for m in session.scalars(select(GroupMembership).order_by(GroupMembership.group_name)):
            members.setdefault(m.username, []).append(m.group_name)
        return [Account(username=u.username, role=u.role, display_name=u.display_name, email=u.email,
                        supervisor=u.supervisor, locale=u.locale, active=u.active,
                        groups=members.get(u.username, [])) for u in users]


def reports_of(cf: Careflow, supervisor: str, depth: int = 5) -> list[str]:
    """Usernames reporting to ``supervisor``, directly or through up to ``depth`` levels."""
    found: list[str] = []
    frontier = [supervisor]
    with cf.Session() as session:
        for _ in range(depth):
            rows = session.scalars(select(User.username).where(User.supervisor.in_(frontier))).all()
            new = [r for r in rows if r not in found and r != supervisor]
            if not new:
                break
            found += new
            frontier = new
    return found


def group_members(cf: Careflow, group: str) -> list[str]:
    """Active usernames in a group."""
    with cf.Session() as session:
        return list(session.scalars(select(User.username).join(GroupMembership,
                                                               GroupMembership.username == User.username)
                                    .where(GroupMembership.group_name == group, User.active.is_(True))
                                    .order_by(User.username)))


def authenticate(cf: Careflow, username: str, password: str) -> Account | None:
    """The account when the password matches an active user, else None (constant-ish time)."""
    with cf.Session() as session:
        user = session.scalar(select(User).where(User.username == username))
        stored = user.password_hash if user is not None and user.active else None
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if stored is None:
            return None
        account = _account(session, user)
    if _hasher.check_needs_rehash(stored):
        with cf.Session() as session, session.begin():
            row = session.scalar(select(User).where(User.username == username))
            row.password_hash = hash_password(password)
    return account


# -- rate limiting of sign-in ----------------------------------------------------------------

def recent_failures(cf: Careflow, key: str, ip: str, window: timedelta) -> tuple[int, int]:
    """Failed sign-ins within ``window``: (for this username+address, for this address)."""
    since = cf.now() - window
    with cf.Session() as session:
        by_key = session.scalar(select(func.count()).select_from(LoginFailure)
                                .where(LoginFailure.key == key, LoginFailure.at >= since)) or 0
        by_ip = session.scalar(select(func.count()).select_from(LoginFailure)
                               .where(LoginFailure.ip == ip, LoginFailure.at >= since)) or 0
    return by_key, by_ip


def record_failure(cf: Careflow, key: str, ip: str, keep: timedelta = timedelta(days=1)) -> None:
    """Remember a failed sign-in (and forget ones older than ``keep``)."""
    now = cf.now()
    with cf.Session() as session, session.begin():
        session.add(LoginFailure(key=key, ip=ip, at=now))
        session.execute(delete(LoginFailure).where(LoginFailure.at < now - keep))


def clear_failures(cf: Careflow, key: str) -> None:
    """Forget the failures of a username+address after a successful sign-in."""
    with cf.Session() as session, session.begin():
        session.execute(delete(LoginFailure).where(LoginFailure.key == key))


# -- sign-in sessions ------------------------------------------------------------------------

def open_session(cf: Careflow, username: str, ip: str | None) -> str:
    """Start a sign-in session; returns the random id for the cookie (stored only as a digest)."""
    sid = secrets.token_urlsafe(32)
    now = cf.now()
    with cf.Session() as session, session.begin():
        session.add(WebSession(id_hash=digest(sid), username=username, created_at=now, last_seen_at=now, ip=ip))
    return sid


def touch_session(cf: Careflow, sid: str, *, idle: timedelta, absolute: timedelta,
                  write_every: timedelta = timedelta(seconds=60)) -> str | None:
    """The username of a live session (and mark it seen), or None if unknown or expired (then deleted)."""
    now = cf.now()
    key = digest(sid)
    with cf.Session() as session:
        row = session.get(WebSession, key)
        if row is None:
            return None
        expired = now - row.last_seen_at > idle or now - row.created_at > absolute
        stale = now - row.last_seen_at >= write_every
        username = row.username
    if expired:
        close_session(cf, sid)
        return None
    if stale:
        with cf.Session() as session, session.begin():
            row = session.get(WebSession, key)
            if row is not None:
                row.last_seen_at = now
    return username


def close_session(cf: Careflow, sid: str) -> None:
    """End a sign-in session (sign-out): its id stops working everywhere."""
    with cf.Session() as session, session.begin():
        session.execute(delete(WebSession).where(WebSession.id_hash == digest(sid)))


# -- API tokens ------------------------------------------------------------------------------

TOKEN_PREFIX = "cft_"


def create_token(cf: Careflow, username: str, name: str | None = None, *, actor: str = "system") -> str:
    """Create an API token for ``username``; the clear token is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with cf.Session() as session, session.begin():
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user '{username}'")
        now = cf.now()
        session.add(ApiToken(username=username, name=name, token_hash=digest(token), prefix=token[:12],
                             created_at=now))
        step = Step(session, now, actor=actor, cause="user" if actor != "system" else "system")
        step.audit("api_token_created", details={"username": username, "name": name, "prefix": token[:12]})
        append_events(session, step.events)
    return token


def account_for_token(cf: Careflow, token: str) -> Account | None:
    """The active account an API token acts as, or None for an unknown or revoked token."""
    if not token or not token.startswith(TOKEN_PREFIX):
        return None
    with cf.Session() as session, session.begin():
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
        if row is None or row.revoked_at is not None:
            return None
        user = session.scalar(select(User).where(User.username == row.username))
        if user is None or not user.active:
            return None
        now = cf.now()
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now
        return _account(session, user)
