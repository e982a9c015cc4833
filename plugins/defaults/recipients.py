"""Default recipient resolution: who ``notify(..., to=...)`` means, as addresses.

- ``customer``: the contact in the payload (``contact`` / ``customer`` dicts, or top-level
  ``email`` / ``phone``), else the instance's data (``contact`` / ``customer``, also one
  level down, e.g. ``intake.contact``); the contact person before the company.
- ``owner``: the payload's ``owner`` / ``assignee``, else whoever completed the instance's
  latest task.
- ``supervisor``: the owner's supervisor (``users.supervisor``), else the members of the
  ``supervisor`` group, else every user with the supervisor role.
- ``manager``: the supervisor's supervisor, else the ``manager`` group, else as ``supervisor``.
- an e-mail address: itself; a username: that user; a group: its active members.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plugins.hookspecs import hookimpl

KEYWORDS = ("customer", "owner", "supervisor", "manager")


@hookimpl(trylast=True)
def careflow_resolve_recipient(careflow: Any, recipient: str | None, message: dict) -> list[dict] | None:
    """Default: customers from the message or instance data, people and groups from the users table."""
    if not recipient:
        return []
    name = recipient.strip()
    payload = message.get("payload") if isinstance(message.get("payload"), dict) else {}
    if name == "customer":
        found = customer_contacts(payload)
        if not found and careflow is not None and message.get("instance_id"):
            found = customer_contacts(_instance_data(careflow, message["instance_id"]))
        return found
    if "@" in name and " " not in name:
        return [{"name": name, "email": name}]
    if careflow is None:
        return []
    with careflow.Session() as session:
        return _people(session, name, payload, message.get("instance_id"))


def customer_contacts(data: dict) -> list[dict]:
    """The customer's contact in ``data`` (see module docstring); [] when there is none."""
    if not isinstance(data, dict):
        return []
    candidates: list[Any] = [data.get("contact"), data.get("customer"), data]
    for value in data.values():
        if isinstance(value, dict):
            candidates += [value.get("contact"), value.get("customer")]
    for c in candidates:
        if isinstance(c, dict) and (c.get("email") or c.get("phone")):
            name = c.get("name") or c.get("contact_person") or c.get("customer_name") or data.get("customer_name")
            return [{"kind": "customer", "name": name, "email": c.get("email") or None,
                     "phone": c.get("phone") or None, "locale": c.get("locale") or None}]
    return []


def _instance_data(careflow: Any, instance_id: int) -> dict:
    try:
        return careflow.show(int(instance_id)).get("data") or {}
    except Exception:  # the instance may be gone; then nobody can be reached through it
        return {}


def _people(session: Session, name: str, payload: dict, instance_id: int | None) -> list[dict]:
    from engine.models import User

    if name in ("owner", "supervisor", "manager"):
        owner = _owner(session, payload, instance_id)
        if name == "owner":
            return _users(session, [owner] if owner else [])
        sup = _supervisor_of(session, owner)
        if name == "supervisor":
            return _users(session, [sup]) if sup else _fallback_supervisors(session)
        manager = _supervisor_of(session, sup)
        if manager:
            return _users(session, [manager])
        return _group(session, "manager") or _fallback_supervisors(session)
    user = session.scalar(select(User).where(User.username == name))
    if user is not None:
        return [_address(user)] if user.active else []
    return _group(session, name)


def _owner(session: Session, payload: dict, instance_id: int | None) -> str | None:
    from engine.models import HumanTask

    owner = payload.get("owner") or payload.get("assignee")
    if owner or instance_id is None:
        return owner
    return session.scalar(select(HumanTask.completed_by).where(HumanTask.instance_id == instance_id,
                                                               HumanTask.completed_by.is_not(None))
                          .order_by(HumanTask.completed_at.desc()).limit(1))


def _supervisor_of(session: Session, username: str | None) -> str | None:
    from engine.models import User

    if not username:
        return None
    return session.scalar(select(User.supervisor).where(User.username == username))


def _fallback_supervisors(session: Session) -> list[dict]:
    from engine.models import User

    found = _group(session, "supervisor")
    if found:
        return found
    rows = session.scalars(select(User).where(User.role == "supervisor", User.active.is_(True))
                           .order_by(User.username))
    return [_address(u) for u in rows]


def _users(session: Session, usernames: list[str]) -> list[dict]:
    from engine.models import User

    if not usernames:
        return []
    rows = session.scalars(select(User).where(User.username.in_(usernames), User.active.is_(True)))
    return [_address(u) for u in rows]


def _group(session: Session, group: str) -> list[dict]:
    from engine.models import GroupMembership, User

    rows = session.scalars(select(User).join(GroupMembership, GroupMembership.username == User.username)
                           .where(GroupMembership.group_name == group, User.active.is_(True))
                           .order_by(User.username))
    return [_address(u) for u in rows]


def _address(user: Any) -> dict:
    return {"kind": "user", "username": user.username, "name": user.display_name or user.username,
            "email": user.email or None, "locale": user.locale or None}
