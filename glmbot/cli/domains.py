"""`glmbot domains ...`: the business domains adapters belong to, with their data and routing hints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.adapters import age, format_metrics, human_size, status_text
from glmbot.errors import ConfigError, RegistryError

app = typer.Typer(cls=common.HelpGroup, no_args_is_help=True,
                  help="Business domains (support, after-sales, HR, ...): each gets its own adapters.")


@app.command("list")
def list_domains() -> None:
    """List the domains of glmbot.toml and the registry: versions, the active one, data and routing hints."""
    from glmbot.registry.catalog import domain_states

    states = domain_states(common.get_settings(), common.get_registry())
    if not states:
        common.console.print("No domains yet. Add one with: glmbot domains add NAME --data FILE.jsonl")
        hint = common.no_config_hint()
        if hint:
            common.console.print(f"[bold]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
        return
    table = Table(title="Domains", header_style="bold")
    for column in ("name", "description", "active", "versions", "data", "keywords", "patterns"):
        table.add_column(column)
    for d in states:
        table.add_row(d.name, escape(d.description or "-"), f"v{d.active_version}" if d.servable else "none",
                      d.versions_text(), escape(d.data or "-"), escape(", ".join(d.keywords) or "-"),
                      escape(", ".join(d.patterns) or "-"))
    common.console.print(table)
    for d in states:
        if not d.servable:
            common.console.print(f"{d.not_servable_reason()}", highlight=False)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="lowercase letters, digits, '-' or '_'", show_default=False)],
    data: Annotated[Optional[str], typer.Option(
        help="training data: JSONL, or CSV/TSV with a header row (stored in glmbot.toml)")] = None,
    dev_data: Annotated[Optional[str], typer.Option(help="dev JSONL for ROUGE/BLEU")] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", help="auto | chat | advertisegen (default auto: read from the columns)")] = None,
    keywords: Annotated[Optional[str], typer.Option("--keywords", help="routing keywords, comma-separated: "
                                                                       "年假,工资")] = None,
    description: Annotated[str, typer.Option("--description", "-d", help="what the domain covers")] = "",
    keyword: Annotated[Optional[list[str]], typer.Option("--keyword", "-k", help="routing keyword (repeatable)")] = None,
    pattern: Annotated[Optional[list[str]], typer.Option("--pattern", "-p", help="routing regex (repeatable)")] = None,
    prompt_column: Annotated[str, typer.Option(help="the question column, when it is neither prompt nor content")] = "",
    response_column: Annotated[str, typer.Option(help="the answer column, when it is neither response nor "
                                                      "summary")] = "",
    history_column: Annotated[str, typer.Option(help="the earlier rounds' column ([[question, answer], ...])")] = "",
) -> None:
    """Create a domain: a [domains.NAME] table in glmbot.toml (data, format, columns, keywords) and its registry entry.

    Examples:

    \b
      glmbot domains add hr --data hr.jsonl --keywords 年假,工资
      glmbot domains add faq --data faq.jsonl --prompt-column question --response-column answer
    """
    from glmbot.config_file import add_domain_table, config_file_for
    from glmbot.registry.refs import check_domain_name

    settings, registry = common.get_settings(), common.get_registry()
    check_domain_name(name)
    path = config_file_for(settings)
    columns = {"prompt_column": prompt_column, "response_column": response_column, "history_column": history_column}
    loaded = {which: _check_data(value, fmt, columns) for which, value in (("data", data), ("dev_data", dev_data))
              if value}
    words = [*(keyword or ()), *(w.strip() for w in re.split(r"[,，]", keywords or "") if w.strip())]
    add_domain_table(path, name, {
        "description": description, "data": _stored_path(data, path.parent), "dev_data": _stored_path(dev_data, path.parent),
        "format": fmt, **columns, "keywords": list(dict.fromkeys(words)), "patterns": list(pattern or ())})
    registry.ensure_domain(name, description)
    common.console.print(f"Added domain [bold]{name}[/] to {escape(str(path))} (\\[domains.{name}]).", highlight=False)
    if "data" in loaded:
        d = loaded["data"]
        common.console.print(f"data: {d.path} ({len(d.examples)} examples, {d.columns.describe()})", highlight=False,
                             markup=False)
        common.console.print(f"Train its first adapter with: glmbot train --domain {name} --promote")
    else:
        common.console.print(f"Train its first adapter with: glmbot train --domain {name} --data FILE.jsonl --promote")


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="the domain", show_default=False)],
    data: Annotated[Optional[str], typer.Option(help="training data: JSONL, or CSV/TSV with a header row")] = None,
    dev_data: Annotated[Optional[str], typer.Option(help="dev JSONL for ROUGE/BLEU ('' removes it)")] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", help="auto | chat | advertisegen (auto or '' = read from the columns)")] = None,
    keywords: Annotated[Optional[str], typer.Option("--keywords", help="routing keywords, comma-separated; "
                                                                       "replace the stored ones ('' removes them)")] = None,
    description: Annotated[Optional[str], typer.Option("--description", "-d", help="what the domain covers")] = None,
) -> None:
    """Change a domain's [domains.NAME] table in glmbot.toml: its data files, format, keywords or description.

    A new data file is read first, so a missing file or unknown columns change nothing.

    Examples:

    \b
      glmbot domains set hr --data hr_v2.jsonl
      glmbot domains set hr --dev-data hr_dev.jsonl --keywords 年假,工资,加班
    """
    from glmbot.config_file import config_file_for, update_domain_table

    if all(v is None for v in (data, dev_data, fmt, keywords, description)):
        raise ConfigError(f"nothing to change for {name!r}: give --data, --dev-data, --format, --keywords or "
                          "--description")
    if data is not None and not data.strip():
        raise ConfigError(f"--data '': a domain's training data cannot be removed; give a JSONL file (or remove the "
                          f"domain: glmbot domains rm {name})")
    settings = common.get_settings()
    if name not in settings.domains:
        common.require_domain(name)
        raise RegistryError(f"domain {name!r} is in the registry but not in {settings.source}; give it a table with: "
                            f"glmbot domains add {name} --data FILE.jsonl")
    current = settings.domains[name]
    columns = {"prompt_column": current.prompt_column, "response_column": current.response_column,
               "history_column": current.history_column}
    format_now = current.format if fmt is None else fmt
    loaded = {which: _check_data(value, format_now or None, columns)
              for which, value in (("data", data), ("dev_data", dev_data)) if value}
    path = config_file_for(settings)
    words = None if keywords is None else list(dict.fromkeys(
        w.strip() for w in re.split(r"[,，]", keywords) if w.strip()))
    update_domain_table(path, name, {
        "data": None if data is None else _stored_path(data, path.parent),
        "dev_data": None if dev_data is None else _stored_path(dev_data, path.parent),
        "format": fmt, "keywords": words, "description": description})
    common.console.print(f"Updated [bold]{name}[/] in {escape(str(path))} (\\[domains.{name}]).", highlight=False)
    for which, d in loaded.items():
        common.console.print(f"{which}: {d.path} ({len(d.examples)} examples, {d.columns.describe()})",
                             highlight=False, markup=False)
    if "data" in loaded:
        common.console.print(f"Train on it with: glmbot train --domain {name} --promote")


def _check_data(value: str, fmt: str | None, columns: dict[str, str]):  # -> glmbot.training.data.LoadedData
    """Read the file now, so a missing file or unknown columns fail here rather than at the first training."""
    from glmbot.training.data import AUTO, load_data

    return load_data(value, fmt or AUTO, columns["prompt_column"], columns["response_column"],
                     columns["history_column"] or None)


def _stored_path(value: str | None, config_dir: Path) -> str:
    """How glmbot.toml names a data file: builtin: and plugin names as given, a file relative to the config's folder
    when it lies under it, else absolute."""
    if not value:
        return ""
    path = Path(value).expanduser()
    if value.startswith("builtin:") or not path.is_file():
        return value
    path = path.resolve()
    try:
        return str(path.relative_to(config_dir.resolve()))
    except ValueError:
        return str(path)


@app.command("rm")
def remove(name: Annotated[str, typer.Argument(help="the domain", show_default=False)]) -> None:
    """Remove a domain that has no adapters: its [domains.NAME] table in glmbot.toml and its registry entry.

    Remove its adapters first (glmbot adapters rm NAME@vN); nothing is changed while it has any.

    Examples:

    \b
      glmbot domains rm hrr        # a misspelled domain added by mistake
    """
    from glmbot.config_file import config_file_for, without_domain_table, write_config_text

    settings, registry = common.get_settings(), common.get_registry()
    registered = name in {d.name for d in registry.list_domains()}
    if not registered and name not in settings.domains:
        common.require_domain(name)  # the unknown-domain error, with a near miss
    path = config_file_for(settings)
    # The new glmbot.toml is made and checked first, the registry entry goes next (it refuses a domain
    # with adapters or a training run), and the file is written last: a refusal changes nothing.
    new_text = without_domain_table(path, name) if name in settings.domains else None
    if registered:
        registry.remove_domain(name)
    removed_table = new_text is not None
    if removed_table:
        write_config_text(path, new_text)
    where = [f"{escape(str(path))} (\\[domains.{name}])" if removed_table else "", "the registry" if registered else ""]
    common.console.print(f"Removed domain [bold]{name}[/] from {' and '.join(w for w in where if w)}.", highlight=False)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="the domain", show_default=False)]) -> None:
    """A domain's data, routing hints and all its adapter versions."""
    from glmbot.errors import unknown_domain
    from glmbot.registry.catalog import domain_state, domain_states

    settings, registry = common.get_settings(), common.get_registry()
    d = domain_state(settings, registry, name)
    if not (d.configured or d.registered):
        raise unknown_domain(name, [s.name for s in domain_states(settings, registry)])
    out = common.console
    out.print(f"[bold]{d.name}[/]: {escape(d.description or '(no description)')}")
    out.print(f"data: {d.data or '-'}    keywords: {', '.join(d.keywords) or '-'}    "
              f"patterns: {', '.join(d.patterns) or '-'}", highlight=False, markup=False)
    out.print(f"active: v{d.active_version}" if d.servable else f"active: none ({d.not_servable_reason()})",
              highlight=False)
    adapters = registry.list_adapters(name) if d.registered else []
    if not adapters:
        return
    table = Table("version", "status", "P", "metrics", "size", "age", "id", title=f"{name} adapters",
                  header_style="bold")
    for a in adapters:
        table.add_row(f"v{a.version}", status_text(a.status), str(a.pre_seq_len), format_metrics(a.metrics),
                      human_size(a.size_bytes), age(a.created_at), str(a.id))
    out.print(table)
