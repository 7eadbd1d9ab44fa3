"""`glmbot plugins list`: every plugin, where it came from, its hooks, and whether it failed."""

from __future__ import annotations

import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.common import JsonOpt

EXAMPLES = """Examples:

\b
  glmbot plugins list
  glmbot plugins list --json
"""

app = typer.Typer(cls=common.HelpGroup, epilog=EXAMPLES, no_args_is_help=True,
                  help="Plugins (pluggy): entry points of group 'glmbot' and the [plugins] paths.")


@app.command("list")
def list_plugins(as_json: JsonOpt = False) -> None:
    """Show each plugin, its source, its hooks, and load or hook errors.

    Examples:

    \b
      glmbot plugins list
      GLMBOT_LOAD_PLUGINS=order_status glmbot plugins list --json
    """
    from glmbot.plugins import get_manager

    manager = get_manager(common.get_settings())
    if as_json:
        common.print_json([{"name": r.name, "ok": r.ok, "error": r.error, "hooks": r.hooks, "source": r.source}
                           for r in sorted(manager.records.values(), key=lambda r: r.name)])
        return
    if not manager.records:
        common.console.print("No plugins loaded (check \\[plugins] paths in glmbot.toml and GLMBOT_LOAD_PLUGINS).")
        return
    table = Table(title="Plugins")
    for col in ("name", "status", "hooks", "source"):
        table.add_column(col, overflow="fold")
    for rec in sorted(manager.records.values(), key=lambda r: r.name):
        status = "[green]ok[/]" if rec.ok else f"[red]failed[/]: {rec.error}"
        table.add_row(rec.name, status, ", ".join(rec.hooks) or "-", rec.source)
    common.console.print(table)
