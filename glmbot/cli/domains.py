"""`glmbot domains ...`: the business domains adapters belong to, with their routing hints."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.adapters import age, format_metrics, human_size, status_text

app = typer.Typer(help="Business domains (support, after-sales, HR, ...): each gets its own adapters.",
                  no_args_is_help=True)


@app.command("list")
def list_domains() -> None:
    """List domains with their active version and routing hints."""
    domains = common.get_registry().list_domains()
    if not domains:
        common.console.print("No domains yet. Add one with: glmbot domains add NAME --description '...'")
        return
    table = Table(title="Domains", header_style="bold")
    for column in ("name", "description", "active", "adapters", "keywords", "patterns"):
        table.add_column(column, justify="right" if column == "adapters" else "left")
    for d in domains:
        table.add_row(d.name, d.description or "-", f"v{d.active_version}" if d.active_version else "-",
                      str(d.adapter_count), ", ".join(d.keywords) or "-", ", ".join(d.patterns) or "-")
    common.console.print(table)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="lowercase letters, digits, '-' or '_'", show_default=False)],
    description: Annotated[str, typer.Option("--description", "-d", help="what the domain covers")] = "",
    keyword: Annotated[list[str] | None, typer.Option("--keyword", "-k", help="routing keyword (repeatable)")] = None,
    pattern: Annotated[list[str] | None, typer.Option("--pattern", "-p", help="routing regex (repeatable)")] = None,
) -> None:
    """Create a domain."""
    d = common.get_registry().add_domain(name, description, keywords=keyword or (), patterns=pattern or ())
    common.console.print(f"Added domain [bold]{d.name}[/]. Train its first adapter with: glmbot train {d.name}")


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="the domain", show_default=False)]) -> None:
    """A domain's routing hints and all its adapter versions."""
    registry = common.get_registry()
    d = registry.get_domain(name)
    common.console.print(f"[bold]{d.name}[/]: {d.description or '(no description)'}")
    common.console.print(f"keywords: {', '.join(d.keywords) or '-'}    patterns: {', '.join(d.patterns) or '-'}")
    common.console.print(f"active: v{d.active_version}" if d.active_version else "active: none")
    adapters = registry.list_adapters(name)
    if not adapters:
        common.console.print(f"No adapters yet: glmbot train {name}")
        return
    table = Table("version", "status", "P", "metrics", "size", "age", "id", title=f"{name} adapters",
                  header_style="bold")
    for a in adapters:
        table.add_row(f"v{a.version}", status_text(a.status), str(a.pre_seq_len), format_metrics(a.metrics),
                      human_size(a.size_bytes), age(a.created_at), str(a.id))
    common.console.print(table)
