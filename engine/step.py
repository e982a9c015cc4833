"""The context of one step (one transaction) and the engine's own host functions.

Host functions run inside scripts, in the middle of a step; they reach the step's
database session, clock and outbox through ``current_step()``. Side effects are never
performed here: ``notify`` only records an outbox row that commits with the step.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from engine.audit import AuditEvent
from engine.serialization import to_jsonable

_current: contextvars.ContextVar[Step | None] = contextvars.ContextVar("careflow_step", default=None)


@dataclass
class PendingMessage:
    """An outbox row to be written with the step."""

    topic: str
    recipient: str | None
    payload: dict
    channel: str | None = None
    key: str | None = None


@dataclass
class Step:
    """Everything one step accumulates before it commits."""

    session: Session
    now: datetime
    actor: str
    cause: str
    instance_id: int | None = None
    process_id: str | None = None
    process_version_id: int | None = None
    events: list[AuditEvent] = field(default_factory=list)
    messages: list[PendingMessage] = field(default_factory=list)
    business_key: str | None = None
    current_task_id: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def audit(self, action: str, **kwargs: Any) -> AuditEvent:
        """Record an audit event for this step (written at commit)."""
        kwargs.setdefault("actor", self.actor)
        kwargs.setdefault("cause", self.cause)
        kwargs.setdefault("instance_id", self.instance_id)
        kwargs.setdefault("process_id", self.process_id)
        kwargs.setdefault("process_version_id", self.process_version_id)
        ev = AuditEvent(action=action, at=self.now, **kwargs)
        self.events.append(ev)
        return ev


def current_step() -> Step:
    """The step running in this context; host functions call this."""
    step = _current.get()
    if step is None:
        raise RuntimeError("this host function can only run inside a workflow step")
    return step


def activate(step: Step) -> contextvars.Token:
    """Make ``step`` the current step (returns a token for ``deactivate``)."""
    return _current.set(step)


def deactivate(token: contextvars.Token) -> None:
    """Restore the previous current step."""
    _current.reset(token)


def notify(template: str, to: str | None = None, channel: str | None = None, **data: Any) -> None:
    """Queue a notification: an outbox row delivered after the step commits.

    ``template`` names the message (e.g. ``ticket_opened``); ``to`` is ``customer``,
    ``supervisor``, a group or a username; ``data`` fills the template.
    """
    step = current_step()
    n = len(step.messages)
    key = f"{step.instance_id}:{step.current_task_id}:{template}:{to}:{n}"
    step.messages.append(PendingMessage(topic=template, recipient=to, payload=to_jsonable(data),
                                        channel=channel, key=key))


def now_iso() -> str:
    """The step's current time as an ISO 8601 UTC string."""
    return current_step().now.isoformat()


def set_business_key(key: str) -> None:
    """Give the instance a business key (e.g. a ticket number) to find it by."""
    current_step().business_key = str(key)


ENGINE_FUNCTIONS = {"notify": notify, "now_iso": now_iso, "set_business_key": set_business_key}
