"""Building the plugin manager: entry points, explicit plugins, QUEUECORE_PLUGINS, listing."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginLoadError

ENTRY_POINT_GROUP = "queuecore"
#: Comma-separated entry-point names to load; set but empty loads none.
PLUGINS_ENV_VAR = "QUEUECORE_PLUGINS"
#: The runner's own key in an item's ``errors``; no plugin may take it.
RESERVED_NAME = "queuecore"


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": list(self.hooks),
        }


class PluginSet:
    """A pluggy manager with queuecore's hookspecs and a record of where each plugin came from."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._origins: dict[str, tuple[str | None, str | None]] = {}

    def register(self, plugin: object, name: str, distribution: str | None = None, version: str | None = None) -> None:
        """Register ``plugin`` under ``name`` (its key in an item's results)."""
        if not isinstance(name, str) or not name.strip():
            raise PluginLoadError(f"a plugin name must be a non-empty string, not {name!r}")
        if name == RESERVED_NAME:
            raise PluginLoadError(f"the plugin name {RESERVED_NAME!r} is reserved for the runner's own errors")
        if name in self._origins:
            raise PluginLoadError(f"two plugins are named {name!r}: {self._describe(name)} and {distribution or plugin!r}")
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginLoadError(f"plugin {name!r}{_from(distribution)} is invalid: {_one_line(exc)}") from None
        self._origins[name] = (distribution, version)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._origins.pop(name, None)

    def check(self) -> None:
        """Fail on hook implementations that match no hookspec (a misspelled hook name)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) if exc.plugin is not None else "?"
            raise PluginLoadError(
                f"plugin {name!r}{_from(self._origins.get(name, (None,))[0])}: {_one_line(exc)}"
            ) from None

    def load_entry_points(self, selection: str | None = None) -> None:
        """Load the ``queuecore`` entry points, one at a time so a failure names its plugin.

        ``selection`` (default: the QUEUECORE_PLUGINS variable) is a
        comma-separated list of names to load; empty loads none.
        """
        if selection is None:
            selection = os.environ.get(PLUGINS_ENV_VAR)
        found = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if selection is None:
            wanted = sorted(found)
        else:
            wanted = [n.strip() for n in selection.split(",") if n.strip()]
            missing = [n for n in wanted if n not in found]
            if missing:
                raise PluginLoadError(
                    f"{PLUGINS_ENV_VAR} names plugins that are not installed: {', '.join(missing)} "
                    f"(installed: {', '.join(sorted(found)) or 'none'})"
                )
        for name in wanted:
            ep = found[name]
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                plugin = ep.load()
            except BaseException as exc:  # a plugin's import may raise anything, even SystemExit
                raise PluginLoadError(
                    f"plugin {name!r}{_from(dist)} failed to load: {type(exc).__name__}: {_one_line(exc)} "
                    f"(uninstall it, or leave it out with {PLUGINS_ENV_VAR}=...)"
                ) from None
            self.register(plugin, name, dist, version)

    def names(self) -> list[str]:
        return list(self._origins)

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, (dist, version) in self._origins.items():
            plugin = self.pm.get_plugin(name)
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            infos.append(PluginInfo(name, dist, version, hooks))
        return sorted(infos, key=lambda i: i.name)

    def _describe(self, name: str) -> str:
        dist = self._origins.get(name, (None,))[0]
        return dist or "an explicit plugin"


def build_plugin_set(plugins: Mapping[str, object] | None = None) -> PluginSet:
    """Explicit ``plugins`` (name -> object) if given, else the installed entry points."""
    plugin_set = PluginSet()
    if plugins is None:
        plugin_set.load_entry_points()
    else:
        for name, plugin in plugins.items():
            plugin_set.register(plugin, name)
    plugin_set.check()
    return plugin_set


def _from(distribution: str | None) -> str:
    return f" (distribution {distribution})" if distribution else ""


def _one_line(exc: BaseException) -> str:
    # pluggy's messages span lines; an operator's error is one line.
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
