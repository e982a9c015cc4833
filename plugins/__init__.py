"""Careflow's plugin system (pluggy): hook specifications, the plugin manager and the
default plugins. See ``docs/plugins.md`` for every hook."""
