"""Building the plugin manager: hookspecs, default plugins, entry-point plugins."""

from __future__ import annotations

import pluggy

from plugins import hookspecs


def get_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the specs, the default plugins and installed plugins."""
    pm = pluggy.PluginManager("careflow")
    pm.add_hookspecs(hookspecs)
    from plugins import defaults

    pm.register(defaults, name="careflow.defaults")
    if load_entry_points:
        pm.load_setuptools_entrypoints("careflow")
    return pm
