"""What every command shares: consoles, the loaded settings, registry and base model.

Each is created on first use and kept for the process, so a command that needs no model never
loads one.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from glmbot.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)

_config_path: Path | None = None

DomainOpt = Annotated[Optional[str], typer.Option("--domain", "-d", metavar="DOMAIN",
                                                  help="business domain, e.g. support")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables (fields: docs/CLI.md)")]
QUANTIZATIONS = ("none", "int8", "int4")


def _quantization(value: str) -> str:
    from glmbot.cli.values import BadOptionError

    if value not in QUANTIZATIONS:
        raise BadOptionError(f"--quantize {value!r} is not one of {', '.join(QUANTIZATIONS)}: e.g. --quantize int4")
    return value


QuantizeOpt = Annotated[Optional[str], typer.Option(
    "--quantize", parser=_quantization, metavar="none|int8|int4",
    help="quantize the base's linear layers on load (default: [model] quantization)", show_default=False)]


def use_quantization(value: str | None) -> None:
    """`--quantize`: overrides [model] quantization for this process (before the base loads)."""
    if value is not None and value != get_settings().model.quantization:
        get_settings().model.quantization = value
        load_base_model.cache_clear()
        get_engine.cache_clear()


def print_json(data: Any) -> None:
    """One JSON document on stdout, unwrapped and uncoloured, for scripts (`--json`)."""
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


class HelpGroup(TyperGroup):
    """A command group whose commands show the `Examples:` section of their docstring last.

    Click prints a command's docstring before its options; examples read best after them, as the
    epilog. Docstrings keep them in one place with the rest of the help.
    """

    def get_command(self, ctx, name: str):  # noqa: ANN001 - a click Context
        return examples_last(super().get_command(ctx, name))


def examples_last(command):  # noqa: ANN001, ANN201 - a click Command or None
    if command is not None and command.help and "\nExamples:" in command.help and not command.epilog:
        command.help, examples = command.help.split("\nExamples:", 1)
        command.epilog = "Examples:" + examples
    return command


def set_config_path(path: Path | None) -> None:
    global _config_path
    _config_path = path
    get_settings.cache_clear()
    get_registry.cache_clear()
    load_base_model.cache_clear()
    get_engine.cache_clear()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings(_config_path)


@lru_cache(maxsize=1)
def get_registry():
    from glmbot.registry import Registry

    return Registry.from_settings(get_settings())


def no_config_hint() -> str | None:
    """A line for errors and empty listings when no glmbot.toml was found: a newcomer in another
    folder otherwise read "unknown domain 'yoga'" about the domain they had just trained."""
    from glmbot.config import no_config_note
    from glmbot.errors import GlmbotError

    try:
        return no_config_note(get_settings())
    except GlmbotError:  # a glmbot.toml that cannot be read: its own error says so, not this hint
        return None


def require_domain(name: str) -> None:
    """The unknown-domain error, with a near miss among glmbot.toml's and the registry's domains (a
    fresh project's registry knows none of the configured ones yet), unless `name` is one of them."""
    from glmbot.errors import unknown_domain

    known = set(get_settings().domains) | {d.name for d in get_registry().list_domains()}
    if name not in known:
        raise unknown_domain(name, sorted(known))


@lru_cache(maxsize=1)
def load_base_model():
    """(model, tokenizer) of the configured base, on the configured device and dtype."""
    from glmbot.model import load_base

    m = get_settings().model
    return load_base(m.base_model, dtype=m.dtype, device=m.device, quantization=m.quantization)


@lru_cache(maxsize=1)
def get_engine(max_len: int | None = None):
    """The serving engine over the configured base, registry, router and plugins."""
    from glmbot.plugins import get_manager
    from glmbot.serving.factory import build_engine

    settings = get_settings()
    model, tok = load_base_model()
    return build_engine(settings, model, tok, get_registry(), get_manager(settings), max_len=max_len)
