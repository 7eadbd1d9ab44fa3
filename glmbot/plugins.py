"""Plugin discovery and safe hook calls.

Plugins come from the `glmbot` entry-point group and from the folders in `[plugins] paths`
(the repo's plugins/ by default); built-in plugins load exactly like third-party ones.
GLMBOT_LOAD_PLUGINS=name1,name2 limits which load (empty: none); GLMBOT_ENTRY_POINTS=0 skips
installed entry points (the test suite does). A plugin that fails to import
or raises inside a hook is recorded with its error and skipped: glmbot keeps working without it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from glmbot import hookspecs

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "glmbot"
LOAD_ENV = "GLMBOT_LOAD_PLUGINS"
ENTRY_POINTS_ENV = "GLMBOT_ENTRY_POINTS"  # "0": skip installed entry points (the test suite sets it)


@dataclass
class PluginRecord:
    name: str
    source: str  # "entry point <dist>", a file path, or "registered"
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # import failure or the last hook failure

    @property
    def ok(self) -> bool:
        return self.error is None


class PluginManager:
    """A pluggy manager that remembers where each plugin came from and what failed."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("glmbot")
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.settings = None  # glmbot.config.Settings the plugins were loaded for
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------
    def register(self, plugin: Any, name: str, source: str = "registered") -> None:
        self.pm.register(plugin, name=name)
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.records[name] = PluginRecord(name, source, hooks)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.records.pop(name, None)

    def _fail(self, name: str, source: str, exc: BaseException) -> None:
        log.warning("plugin %s (%s) failed to load: %s: %s", name, source, type(exc).__name__, exc)
        self.records[name] = PluginRecord(name, source, [], f"{type(exc).__name__}: {exc}")

    def load_path(self, folder: Path, allowed: set[str] | None) -> None:
        """Import every module (file.py or package/) of `folder` as a plugin."""
        if not folder.is_dir():
            return
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            if entry.suffix == ".py":
                file, name = entry, entry.stem
            elif (entry / "__init__.py").is_file():
                file, name = entry / "__init__.py", entry.name
            else:
                continue
            if (allowed is not None and name not in allowed) or self.pm.has_plugin(name):
                continue
            try:
                spec = importlib.util.spec_from_file_location(f"glmbot_plugins.{name}", file)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                self.register(module, name, str(file))
            except Exception as exc:  # noqa: BLE001 - any import error disables only this plugin
                self._fail(name, str(file), exc)

    def load_entry_points(self, allowed: set[str] | None) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if (allowed is not None and ep.name not in allowed) or self.pm.has_plugin(ep.name):
                continue
            source = f"entry point {ep.value}"
            try:
                self.register(ep.load(), ep.name, source)
            except Exception as exc:  # noqa: BLE001
                self._fail(ep.name, source, exc)

    # -- calling ---------------------------------------------------------------------------------
    def call(self, hook: str, **kwargs) -> list[Any]:
        """Call every implementation of `hook`; a failing plugin is logged, recorded and skipped.

        Results are in pluggy's order (last registered first), None results dropped.
        """
        results = []
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - a plugin must not take glmbot down
                self.hook_failed(impl.plugin_name, hook, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def collect(self, hook: str) -> list[tuple[str, Any]]:
        """What plugins register through a `register_x(register)` hook: (plugin name, thing), in load order.

        Each plugin gets its own register callback, so a later error about a thing can name its plugin.
        """
        found: list[tuple[str, Any]] = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():  # pluggy lists them first loaded first
            register = lambda thing, name=impl.plugin_name: found.append((name, thing))  # noqa: E731
            try:
                impl.function(**{k: register for k in impl.argnames})
            except Exception as exc:  # noqa: BLE001
                self.hook_failed(impl.plugin_name, hook, exc)
        return found

    def hook_failed(self, name: str, hook: str, exc: Exception) -> None:
        """Log and record that plugin `name` failed in `hook` (`glmbot plugins list` shows it)."""
        log.warning("plugin %s failed in %s: %s: %s", name, hook, type(exc).__name__, exc)
        with self._lock:
            record = self.records.get(name)
            if record is not None:
                record.error = f"{hook}: {type(exc).__name__}: {exc}"

    def has_impls(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def implementers(self, hook: str) -> list[str]:
        """Names of the plugins that implement `hook`, in load order."""
        return [impl.plugin_name for impl in getattr(self.pm.hook, hook).get_hookimpls()]

    def chain(self, hook: str, value_arg: str, **kwargs) -> Any:
        """Pass `kwargs[value_arg]` through every implementation in turn; a str result replaces it.

        For rewriting hooks (after_generate): each plugin sees the previous plugin's output.
        """
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:  # noqa: BLE001
                self.hook_failed(impl.plugin_name, hook, exc)
                continue
            if isinstance(result, str):
                kwargs[value_arg] = result
        return kwargs[value_arg]


def allowed_plugins(settings=None) -> set[str] | None:  # noqa: ANN001 - Settings
    """GLMBOT_LOAD_PLUGINS if set, else [plugins] enabled if not empty, else None (all)."""
    value = os.environ.get(LOAD_ENV)
    if value is not None:
        return {v.strip() for v in value.split(",") if v.strip()}
    enabled = settings.plugins.enabled if settings is not None else []
    return set(enabled) or None


def current_settings():
    """The Settings the plugins were loaded with (defaults when loaded without any)."""
    from glmbot.config import Settings

    settings = _manager.settings if _manager is not None else None
    return settings if settings is not None else Settings()


def plugin_options(name: str) -> dict:
    """A plugin's own settings: the [plugins.options.NAME] table of glmbot.toml."""
    return dict(current_settings().plugins.options.get(name, {}))


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_manager(settings=None, entry_points: bool | None = None) -> PluginManager:  # noqa: ANN001 - Settings
    """The process's plugin manager, loaded once from entry points and the configured folders."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = PluginManager()
            _manager.settings = settings
            allowed = allowed_plugins(settings)
            if settings is not None:
                for folder in settings.plugins.paths:
                    _manager.load_path(settings.path(folder), allowed)
            if entry_points if entry_points is not None else os.environ.get(ENTRY_POINTS_ENV) != "0":
                _manager.load_entry_points(allowed)
        return _manager


def reset_manager() -> None:
    """Forget the loaded plugins (tests, or after changing the configuration)."""
    global _manager
    with _manager_lock:
        _manager = None
