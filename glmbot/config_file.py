"""Edits of glmbot.toml that keep the user's comments and layout (tomlkit), written atomically.

The edited document is parsed and checked like any glmbot.toml before it replaces the file, so an
edit never leaves a config that the next command would refuse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomlkit

from glmbot.config import CONFIG_FILENAME, Settings, settings_from_dict
from glmbot.errors import ConfigError
from glmbot.fileio import atomic_write_text

NEW_FILE_HEADER = ("# glmbot configuration (glmbot.toml). Every key is optional; see `glmbot info`.\n"
                   "# Paths are relative to this file.\n"
                   "# A question no domain holds goes to the plain base model, which may make up details; to give\n"
                   "# a fixed answer instead, uncomment:\n"
                   "# [routing]\n"
                   "# fallback_reply = \"抱歉，这个问题我还答不上来，请联系工作人员。\"\n")


def config_file_for(settings: Settings) -> Path:
    """The glmbot.toml that `settings` came from, or a new one in the working folder when none was found."""
    source = Path(settings.source)
    if source.is_file():
        return source
    new = Path.cwd() / CONFIG_FILENAME
    if new.exists():
        raise ConfigError(f"{new} exists but was not the config in use ({settings.source}); pass --config {new}")
    return new


def add_domain_table(path: Path, name: str, values: dict[str, Any]) -> None:
    """Append a [domains.NAME] table holding the non-empty `values` to the glmbot.toml at `path` (created if missing).

    Refuses a domain the file already has; everything else in the file is kept as it was.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else NEW_FILE_HEADER
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    domains = doc.get("domains")
    if domains is None:
        domains = tomlkit.table(is_super_table=True)
        doc["domains"] = domains
    elif name in domains:
        raise ConfigError(f"{path} already has [domains.{name}]; change it with: glmbot domains set {name} --data "
                          "FILE.jsonl (or another option), or pick another name")
    table = tomlkit.table()
    for key, value in values.items():
        if value not in (None, "", [], {}):
            table[key] = value
    domains[name] = table
    new_text = tomlkit.dumps(doc)
    settings_from_dict(tomlkit.parse(new_text).unwrap(), root=path.parent, source=str(path))  # raises on a bad value
    new = not path.exists()
    atomic_write_text(path, new_text)  # an existing file keeps its mode there
    if new:
        os.chmod(path, 0o644)  # not the temp file's 0600


def without_domain_table(path: Path, name: str) -> str | None:
    """The text of the glmbot.toml at `path` without its [domains.NAME] table, every other line kept
    and the result checked (e.g. routing.fallback naming it); None when it has no such table.
    Nothing is written: `write_config_text` does that, once the rest of the change has succeeded."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    domains = doc.get("domains")
    if domains is None or name not in domains:
        return None
    del domains[name]
    new_text = tomlkit.dumps(doc).rstrip("\n") + "\n"  # the blank line `domains add` put before a last table
    settings_from_dict(tomlkit.parse(new_text).unwrap(), root=path.parent, source=str(path))
    return new_text


def write_config_text(path: Path, text: str) -> None:
    """Replace the glmbot.toml at `path` atomically, keeping its permissions (atomic_write_text does)."""
    atomic_write_text(path, text)


def update_domain_table(path: Path, name: str, values: dict[str, Any]) -> None:
    """Set keys of the existing [domains.NAME] table in the glmbot.toml at `path` (None: leave the
    key as it is; "" or []: remove it), keeping every other line as it was; checked, then written
    atomically."""
    path = Path(path)
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; create the domain with: glmbot domains add {name}") from None
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    domains = doc.get("domains")
    if domains is None or name not in domains:
        raise ConfigError(f"{path} has no [domains.{name}]; create it with: glmbot domains add {name} --data FILE.jsonl")
    table = domains[name]
    for key, value in values.items():
        if value is None:
            continue
        if value in ("", []):
            table.pop(key, None)
        else:
            table[key] = value
    new_text = tomlkit.dumps(doc)
    settings_from_dict(tomlkit.parse(new_text).unwrap(), root=path.parent, source=str(path))  # raises on a bad value
    write_config_text(path, new_text)
