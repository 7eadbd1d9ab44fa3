"""`glmbot logs list|show|export`: the conversation log kept in the registry database."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.common import JsonOpt

EXAMPLES = """Examples:

\b
  glmbot logs list
  glmbot logs show ID
  glmbot logs export --out turns.jsonl
"""

app = typer.Typer(cls=common.HelpGroup, epilog=EXAMPLES, no_args_is_help=True,
                  help="Logged conversations (chat, LangChain, HTTP).")


def iso_fields(record) -> dict:  # noqa: ANN001 - a registry dataclass record
    """A record as a dict with its datetimes as ISO 8601 strings (the export's JSON lines do the same)."""
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in dataclasses.asdict(record).items()}


@app.command("list")
def list_logs(limit: Annotated[int, typer.Option(min=1, help="newest N conversations")] = 20,
              as_json: JsonOpt = False) -> None:
    """The newest conversations with their source and turn count.

    Examples:

    \b
      glmbot logs list
      glmbot logs list --limit 100 --json
    """
    rows = common.get_registry().list_conversations(limit)
    if as_json:
        common.print_json([iso_fields(c) for c in rows])
        return
    if not rows:
        common.console.print("No conversations logged yet (glmbot chat logs each turn).")
        return
    table = Table(title="Conversations")
    for col in ("id", "source", "turns", "started", "first question"):
        table.add_column(col, overflow="fold")
    for c in rows:
        table.add_row(c.id, c.source, str(c.turns), c.started_at.strftime("%Y-%m-%d %H:%M"), c.title)
    common.console.print(table)


@app.command("show")
def show(conversation_id: Annotated[str, typer.Argument(metavar="ID", help="a conversation id from glmbot logs list",
                                                        show_default=False)],
         as_json: JsonOpt = False) -> None:
    """Every turn of a conversation with the adapter that answered it.

    Examples:

    \b
      glmbot logs show 3f2a9c0e
      glmbot logs show 3f2a9c0e --json
    """
    turns = common.get_registry().conversation_turns(conversation_id)
    if as_json:
        common.print_json([iso_fields(t) for t in turns])
        return
    for i, t in enumerate(turns, start=1):
        common.console.print(f"[bold]{i}. 问[/] {t.query}", highlight=False)
        common.console.print(f"   [bold]答[/] {t.answer}", highlight=False)
        common.console.print(f"   [dim]{t.adapter or 'base model'} · {t.route_reason} · {t.prompt_tokens}+"
                             f"{t.completion_tokens} tokens · {t.latency_s:.2f}s · {t.finish_reason}[/]")


@app.command("export")
def export(out: Annotated[Optional[Path], typer.Option("--out", "-o", metavar="FILE",
                                                       help="JSONL file (default: stdout)")] = None,
           conversation: Annotated[Optional[str], typer.Option(metavar="ID", help="only this conversation")] = None,
           ) -> None:
    """Write logged turns as JSON lines, one turn a line.

    Examples:

    \b
      glmbot logs export > turns.jsonl
      glmbot logs export --conversation 3f2a9c0e --out one.jsonl
    """
    registry = common.get_registry()
    if out is None:
        registry.export_conversations(sys.stdout, conversation)
        return
    import io

    from glmbot.fileio import atomic_write_text

    buffer = io.StringIO()
    n = registry.export_conversations(buffer, conversation)
    atomic_write_text(out, buffer.getvalue())
    common.err_console.print(f"wrote {n} turns to {out}")
