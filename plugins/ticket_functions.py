"""Host functions of the after-sales ticket process: ``register_ticket``, ``update_ticket``,
``extend_deadline`` (see ``engine.tickets``).

Each runs inside the current step (``engine.step.current_step()``): it writes with the
step's session, at the step's time, as the step's actor, so its rows commit or roll back
with the step. Bound to the plugin manager so SLA budgets come from its
``careflow_sla_policy`` hook.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from plugins.hookspecs import hookimpl


@functools.cache
def _engine() -> tuple[Any, Callable[[], Any]]:
    """``engine.tickets`` and ``engine.step.current_step``, imported at the first call (not when plugins load)."""
    from engine import tickets
    from engine.step import current_step

    return tickets, current_step


class TicketFunctions:
    """The ticket host functions, bound to one plugin manager."""

    def __init__(self, pm: Any) -> None:
        self.pm = pm

    def register_ticket(self, intake: dict) -> dict:
        """Open a ticket for an intake: number, SLA clocks; returns the ticket with its deadlines (ISO)."""
        tickets, current_step = _engine()
        step = current_step()
        return tickets.register_ticket_in(step.session, intake, pm=self.pm, now=step.now, actor=step.actor,
                                          instance_id=step.instance_id)

    def update_ticket(self, number: str, **facts: Any) -> dict:
        """Record a ticket's status (``status``, ``round``, ``reason``) and facts; returns the ticket."""
        tickets, current_step = _engine()
        step = current_step()
        return tickets.update_ticket_in(step.session, number, pm=self.pm, now=step.now, actor=step.actor, **facts)

    def extend_deadline(self, number: str, clock: str, new_due: str, reason: str) -> dict:
        """Renegotiate a ticket deadline (``first_response`` or ``solution``) to ``new_due`` for ``reason``."""
        tickets, current_step = _engine()
        step = current_step()
        return tickets.extend_deadline_in(step.session, number, clock, new_due, reason, now=step.now,
                                          actor=step.actor)

    def request_ticket_revisit(self, number: str) -> int | None:
        """After a closed ticket, ask for a customer revisit (registry customers only); returns its id."""
        tickets, current_step = _engine()
        step = current_step()
        return tickets.request_ticket_revisit_in(step.session, number, now=step.now, actor=step.actor)

    @hookimpl(trylast=True)
    def careflow_script_functions(self) -> dict[str, Callable[..., Any]]:
        """``register_ticket``, ``update_ticket``, ``extend_deadline`` and ``request_ticket_revisit``."""
        return {"register_ticket": self.register_ticket, "update_ticket": self.update_ticket,
                "extend_deadline": self.extend_deadline, "request_ticket_revisit": self.request_ticket_revisit}
