"""Plugin isolation: a plugin that raises, returns nonsense or hangs never breaks a step,
never blocks other plugins, and shows up as an incident with its traceback.

- Every hook implementation of a non-shipped plugin is wrapped when it is registered
  (``CareflowPluginManager.register``): an exception, or a result of the wrong type,
  is reported and the implementation counts as having returned None — pluggy then asks
  the next implementation (first-result hooks: in the end the shipped default) or
  leaves its contribution out (collected hooks). Calls still go through pluggy, so
  hook tracing sees them.
- Where the report goes: inside a step (``engine.step.current_step()``), an ``Incident``
  row is added to the step's session, so it commits with the step. A separate
  transaction would wait for the step's own write lock on SQLite (``BEGIN IMMEDIATE``)
  and record an incident for a step that may still roll back. Outside a step, inside
  ``incidents_to(engine)`` (the delivery worker, audit observers), the incident is
  recorded in its own transaction. Anywhere else it is logged at ERROR level.
- Hanging: only where no transaction waits on the plugin is a call given a deadline —
  audit observers (``dispatch_audit_events``) and channel deliveries (``engine.outbox``)
  run in worker threads that are abandoned after their timeout. Hooks called inside a
  step (assignment, tiers, SLA policy, host functions) run in the step's thread and
  must return promptly; see docs/plugins.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("careflow.plugins")

_sink: contextvars.ContextVar[Callable[..., None] | None] = contextvars.ContextVar(
    "careflow_incident_sink", default=None)

_instance_hint: contextvars.ContextVar[int | None] = contextvars.ContextVar("careflow_incident_instance", default=None)

# What each hook's implementations must return (None is always allowed).
RESULT_TYPES: dict[str, type | tuple[type, ...]] = {
    "careflow_script_functions": dict,
    "careflow_assign_task": dict,
    "careflow_customer_tier": str,
    "careflow_sla_policy": dict,
    "careflow_escalation_ladder": list,
    "careflow_notification_channels": list,
    "careflow_resolve_recipient": list,
    "careflow_message_templates": dict,
}


@contextlib.contextmanager
def about_instance(instance_id: int | None) -> Iterator[None]:
    """Within the block, plugin failures are attributed to ``instance_id`` (when not in a step)."""
    token = _instance_hint.set(instance_id)
    try:
        yield
    finally:
        _instance_hint.reset(token)


@contextlib.contextmanager
def incidents_to(careflow: Any) -> Iterator[None]:
    """Within the block, plugin failures outside a step become incidents of ``careflow``.

    Use it around hook calls made outside a step and outside any open transaction
    (each incident is written in its own transaction).
    """

    def sink(source: str, message: str, tb: str, instance_id: int | None = None) -> None:
        careflow.record_incident("plugin", source, message, instance_id=instance_id, tb=tb)

    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


def report_failure(plugin_name: str, message: str, tb: str, *, instance_id: int | None = None) -> None:
    """Record a plugin failure: in the current step, else through ``incidents_to``, else the log."""
    from engine.step import current_step

    log.warning("%s\n%s", message, tb.rstrip())
    try:
        step = current_step()
    except RuntimeError:
        step = None
    if step is not None:
        from engine.models import Incident

        step.session.add(Incident(kind="plugin", source=plugin_name, message=message, traceback=tb,
                                  instance_id=instance_id or step.instance_id, created_at=step.now))
        return
    instance_id = instance_id or _instance_hint.get()
    sink = _sink.get()
    if sink is None:
        log.error("plugin failure not recorded as an incident (no step and no incidents_to() here): %s", message)
        return
    try:
        sink(plugin_name, message, tb, instance_id)
    except Exception:  # recording must never turn a contained failure into a crash
        log.exception("could not record an incident for plugin %s", plugin_name)


def isolate(hook_name: str, impl: Any, firstresult: bool) -> None:
    """Wrap one hook implementation so that its failures are contained (see module docstring)."""
    original = impl.function
    if getattr(original, "_careflow_isolated", False) or impl.wrapper or impl.hookwrapper:
        return
    expected = RESULT_TYPES.get(hook_name)
    plugin_name = impl.plugin_name
    fallback = "the next implementation was asked" if firstresult else "its contribution was left out"

    @functools.wraps(original)
    def isolated(*args: Any, **kwargs: Any) -> Any:
        try:
            result = original(*args, **kwargs)
        except Exception as err:
            report_failure(plugin_name, f"{hook_name} of plugin '{plugin_name}' raised "
                                        f"{type(err).__name__}: {err} ({fallback})", traceback.format_exc())
            return None
        if result is not None and expected is not None and not isinstance(result, expected):
            names = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
            report_failure(plugin_name, f"{hook_name} of plugin '{plugin_name}' returned "
                                        f"{type(result).__name__} {result!r:.200}, expected {names} ({fallback})",
                           "".join(traceback.format_stack(limit=6)))
            return None
        return result

    isolated._careflow_isolated = True  # type: ignore[attr-defined]
    impl.function = isolated


# ------------------------------------------------------------------------ audit observers


@dataclass
class _Busy:
    since: float
    first_seq: int | None
    skipped: list[int] = field(default_factory=list)


@dataclass
class _ObserverState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: dict[str, _Busy] = field(default_factory=dict)  # plugin name -> stuck call


def _observer_state(pm: Any) -> _ObserverState:
    state = getattr(pm, "_careflow_observer_state", None)
    if state is None:
        state = _ObserverState()
        pm._careflow_observer_state = state
    return state


def observer_timeout(pm: Any) -> float:
    """Seconds an audit observer may take for one step's events (``CAREFLOW_PLUGIN_TIMEOUT``)."""
    settings = getattr(pm, "careflow_settings", None)
    if settings is None:
        from plugins.config import PluginSettings

        settings = PluginSettings.from_env()
    return settings.observer_timeout_s


def dispatch_audit_events(careflow: Any, events: list[dict]) -> None:
    """Tell every audit observer about a committed step's events, each in its own thread.

    An observer sees the events in order. The caller waits at most the observer timeout
    in total; an observer still running then is reported once and skipped for later
    events until it returns (it is reported again then, with the sequence numbers it
    missed). An exception is an incident and never reaches the step or other observers.
    """
    pm = careflow.pm
    impls = [i for i in pm.hook.careflow_audit_event.get_hookimpls() if not (i.wrapper or i.hookwrapper)]
    if not impls or not events:
        return
    state = _observer_state(pm)
    timeout = observer_timeout(pm)
    seqs = [e.get("seq") for e in events]
    runs: list[tuple[str, threading.Thread, dict]] = []
    with incidents_to(careflow):
        for impl in impls:
            name = impl.plugin_name
            with state.lock:
                busy = state.busy.get(name)
                if busy is not None:
                    busy.skipped.extend(s for s in seqs if s is not None)
                    continue
            others = [i.plugin for i in impls if i is not impl]
            caller = pm.subset_hook_caller("careflow_audit_event", remove_plugins=others)
            status = {"done": False, "current": None}
            ctx = contextvars.copy_context()
            thread = threading.Thread(target=ctx.run, args=(_observe, state, name, caller, events, status),
                                      name=f"careflow-observer-{name}", daemon=True)
            thread.start()
            runs.append((name, thread, status))
        deadline = time.monotonic() + timeout
        for name, thread, status in runs:
            thread.join(max(0.0, deadline - time.monotonic()))
            with state.lock:
                if status["done"]:
                    continue
                current = status["current"]
                state.busy[name] = _Busy(since=time.monotonic(), first_seq=current)
            report_failure(name, f"careflow_audit_event of plugin '{name}' did not return within {timeout:g} s "
                                 f"(audit event seq {current}); it gets no further events until it returns",
                           "".join(traceback.format_stack(limit=4)),
                           instance_id=next((e.get("instance_id") for e in events if e.get("seq") == current), None))


def _observe(state: _ObserverState, name: str, caller: Any, events: list[dict], status: dict) -> None:
    for event in events:
        status["current"] = event.get("seq")
        try:
            with about_instance(event.get("instance_id")):
                caller(event=event)
        except Exception as err:  # shipped (unwrapped) observers: same treatment as plugins
            report_failure(name, f"careflow_audit_event of plugin '{name}' raised {type(err).__name__}: {err} "
                                 f"(audit event seq {event.get('seq')})", traceback.format_exc(),
                           instance_id=event.get("instance_id"))
    with state.lock:
        status["done"] = True
        busy = state.busy.pop(name, None)
    if busy is not None:
        waited = time.monotonic() - busy.since
        missed = ", ".join(str(s) for s in busy.skipped) or "none"
        report_failure(name, f"careflow_audit_event of plugin '{name}' returned {waited:.1f} s after its timeout; "
                             f"audit events it did not see: seq {missed}", "")
