"""Building the plugin manager: hookspecs, the shipped plugins, installed plugins.

Modelled on datasette's ``plugins.py``: the shipped behaviour is a list of plugins
registered first (all ``trylast``), then third-party plugins load from the entry-point
group ``careflow``. ``CAREFLOW_PLUGINS`` restricts which of those load (a comma list of
entry-point or distribution names; empty: none), ``CAREFLOW_TRACE_HOOKS=1`` logs every
hook call with its arguments and result. Non-shipped implementations are isolated
(see ``plugins.isolation``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import pluggy

from plugins import hookspecs
from plugins.config import PluginSettings
from plugins.isolation import isolate

log = logging.getLogger("careflow.plugins")
trace_log = logging.getLogger("careflow.hooks")

ENTRY_POINT_GROUP = "careflow"

# (registered name, module) of the shipped module plugins; the tier scheme is picked by
# configuration; plugins that need configuration or the manager are objects (see below).
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("careflow.sla", "plugins.defaults.sla"),
    ("careflow.escalation", "plugins.defaults.escalation"),
    ("careflow.recipients", "plugins.defaults.recipients"),
    ("careflow.templates", "plugins.defaults.templates"),
)
TIER_PLUGINS: dict[str, tuple[str, str]] = {
    "spend": ("careflow.tiers.spend", "plugins.defaults.spend_tiers"),
    "abc": ("careflow.tiers.abc", "plugins.defaults.abc_tiers"),
}


class CareflowPluginManager(pluggy.PluginManager):
    """A pluggy ``PluginManager`` that isolates non-shipped plugins and remembers where
    each plugin came from (for ``careflow plugins``)."""

    def __init__(self, settings: PluginSettings | None = None) -> None:
        super().__init__("careflow")
        self.careflow_settings = settings or PluginSettings()
        self.builtin_names: set[str] = set()
        self.origins: dict[str, dict[str, Any]] = {}  # plugin name -> {"package", "version"}
        self.load_failures: list[dict[str, Any]] = []  # entry points that could not be loaded
        self.missing: list[str] = []  # names in CAREFLOW_PLUGINS that are not installed

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register a plugin; unless it is a shipped one its hook implementations are isolated."""
        registered = super().register(plugin, name)
        if registered is not None and registered not in self.builtin_names:
            for caller in self.get_hookcallers(plugin) or []:
                firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        isolate(caller.name, impl, firstresult)
        return registered

    def get_canonical_name(self, plugin: Any) -> str:
        """A readable name for a plugin registered without one: its module or class name."""
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__module__}.{type(plugin).__qualname__}"
        return name if not self.has_plugin(name) else f"{name}@{id(plugin):x}"

    def register_builtin(self, plugin: Any, name: str) -> None:
        """Register a shipped plugin (its implementations are trusted and not wrapped)."""
        self.builtin_names.add(name)
        self.register(plugin, name=name)
        self.origins[name] = {"package": "careflow", "version": _careflow_version()}


def _careflow_version() -> str:
    try:
        return importlib.metadata.version("careflow")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def get_plugin_manager(load_entry_points: bool = True,
                       environ: Mapping[str, str] | None = None) -> CareflowPluginManager:
    """A plugin manager with the specs, the shipped plugins and the installed plugins.

    ``environ`` replaces the process environment as the source of configuration.
    Raises ``plugins.config.ConfigError`` for a configuration value it cannot use.
    """
    settings = PluginSettings.from_env(environ)
    pm = CareflowPluginManager(settings)
    pm.add_hookspecs(hookspecs)
    for name, module in (*DEFAULT_PLUGINS, TIER_PLUGINS[settings.tier_scheme]):
        pm.register_builtin(importlib.import_module(module), name)
    from plugins.channels import ChannelsPlugin
    from plugins.defaults.assignment import AssignmentPlugin
    from plugins.defaults.functions import HostFunctions
    from plugins.ticket_functions import TicketFunctions

    pm.register_builtin(AssignmentPlugin(settings), "careflow.assignment")
    pm.register_builtin(HostFunctions(pm), "careflow.functions")
    pm.register_builtin(TicketFunctions(pm), "careflow.tickets")
    pm.register_builtin(ChannelsPlugin(settings), "careflow.channels")
    pm.register_builtin(importlib.import_module("plugins.crm_functions").CrmFunctions(pm), "careflow.crm")
    if load_entry_points:
        load_entry_point_plugins(pm, settings.allowed)
    if settings.trace:
        enable_hook_tracing(pm)
    return pm


def load_entry_point_plugins(pm: CareflowPluginManager, allowed: frozenset[str] | None = None) -> int:
    """Load plugins from the ``careflow`` entry-point group; returns how many loaded.

    ``allowed``: only entry points whose name (or distribution name) is in it; None: all.
    A plugin that fails to import or to validate is logged and listed by ``careflow
    plugins``; it never stops the others from loading.
    """
    if allowed is not None and not allowed:
        return 0
    loaded, seen = 0, set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or ep.name in seen:
                continue
            if allowed is not None and ep.name not in allowed and dist_name not in allowed:
                continue
            seen.add(ep.name)
            seen.add(dist_name)
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as err:  # a broken plugin must not stop Careflow or the other plugins
                log.error("plugin %s (%s %s) could not be loaded: %s", ep.name, dist_name, dist.version, err)
                pm.load_failures.append({"name": ep.name, "package": dist_name, "version": dist.version,
                                         "error": f"{type(err).__name__}: {err}",
                                         "traceback": traceback.format_exc()})
                continue
            pm.origins[ep.name] = {"package": dist_name, "version": dist.version}
            loaded += 1
    if allowed:
        pm.missing = sorted(n for n in allowed if n not in seen)
        for name in pm.missing:
            log.warning("CAREFLOW_PLUGINS names %r but no installed package provides that plugin", name)
    return loaded


def plugin_info(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Every registered plugin: name, package, version, shipped or not, hooks it implements."""
    origins = getattr(pm, "origins", {})
    builtins = getattr(pm, "builtin_names", set())
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue  # blocked
        origin = origins.get(name) or {}
        hooks = sorted(c.name for c in (pm.get_hookcallers(plugin) or []))
        out.append({"name": name, "package": origin.get("package"), "version": origin.get("version"),
                    "builtin": name in builtins, "hooks": hooks,
                    "unknown_hooks": _unknown_hooks(pm, plugin), "status": "loaded"})
    for failure in getattr(pm, "load_failures", []):
        out.append({"name": failure["name"], "package": failure["package"], "version": failure["version"],
                    "builtin": False, "hooks": [], "unknown_hooks": [], "status": "failed",
                    "error": failure["error"]})
    return out


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Hook implementations with no spec (usually a misspelt hook name: never called)."""
    return sorted(c.name for c in (pm.get_hookcallers(plugin) or []) if c.spec is None)


def enable_hook_tracing(pm: pluggy.PluginManager) -> None:
    """Log every hook call (arguments, result or exception) on the ``careflow.hooks`` logger."""
    if not trace_log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        trace_log.addHandler(handler)
    if trace_log.level == logging.NOTSET or trace_log.level > logging.INFO:
        trace_log.setLevel(logging.INFO)

    def before(hook_name: str, impls: list, kwargs: Mapping[str, Any]) -> None:
        plugins = ", ".join(i.plugin_name for i in reversed(impls))
        trace_log.info("call %s(%s) -> [%s]", hook_name, _short(dict(kwargs)), plugins)

    def after(outcome: Any, hook_name: str, impls: list, kwargs: Mapping[str, Any]) -> None:
        if outcome.exception is not None:
            trace_log.info("  %s raised %s: %s", hook_name, type(outcome.exception).__name__, outcome.exception)
        else:
            trace_log.info("  %s returned %s", hook_name, _short(outcome.get_result()))

    pm.add_hookcall_monitoring(before, after)


def _short(value: Any, limit: int = 500) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
