"""`glmbot logs list|show|export`: the conversation log kept in the registry database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from glmbot.cli import common

app = typer.Typer(help="Logged conversations (chat, LangChain, HTTP).", no_args_is_help=True)


@app.command("list")
def list_logs(limit: Annotated[int, typer.Option(help="newest N conversations")] = 20) -> None:
    """The newest conversations with their source and turn count."""
    rows = common.get_registry().list_conversations(limit)
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
def show(conversation_id: str) -> None:
    """Every turn of a conversation with the adapter that answered it."""
    for i, t in enumerate(common.get_registry().conversation_turns(conversation_id), start=1):
        common.console.print(f"[bold]{i}. 问[/] {t.query}", highlight=False)
        common.console.print(f"   [bold]答[/] {t.answer}", highlight=False)
        common.console.print(f"   [dim]{t.adapter or 'base model'} · {t.route_reason} · {t.prompt_tokens}+"
                             f"{t.completion_tokens} tokens · {t.latency_s:.2f}s · {t.finish_reason}[/]")


@app.command("export")
def export(out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSONL file (default: stdout)")] = None,
           conversation: Annotated[Optional[str], typer.Option(help="only this conversation")] = None) -> None:
    """Write logged turns as JSON lines."""
    registry = common.get_registry()
    if out is None:
        registry.export_conversations(sys.stdout, conversation)
        return
    from glmbot.fileio import atomic_write_text
    import io

    buffer = io.StringIO()
    n = registry.export_conversations(buffer, conversation)
    atomic_write_text(out, buffer.getvalue())
    common.err_console.print(f"wrote {n} turns to {out}")
