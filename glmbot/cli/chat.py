"""`glmbot chat`: talk to the routed adapters in the terminal (or answer piped questions)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from glmbot.cli import common
from glmbot.errors import UnknownDomainError

Opt = typer.Option


def chat(
    domain: Annotated[Optional[str], Opt("--domain", "-d", help="answer with this domain ('base': plain model)")] = None,
    adapter: Annotated[Optional[str], Opt(help="a specific adapter, e.g. support@v3")] = None,
    temperature: Annotated[Optional[float], Opt(help="0 = greedy; default [generation] temperature")] = None,
    max_new_tokens: Annotated[Optional[int], Opt(help="tokens per answer at most")] = None,
    system: Annotated[str, Opt(help="a system instruction put before each question")] = "",
    no_log: Annotated[bool, Opt("--no-log", help="do not store this conversation in the registry")] = False,
) -> None:
    """Chat with glmbot; piped input (echo 问题 | glmbot chat) prints only the answers."""
    from glmbot.chat import ChatClient, ChatOptions, ChatSession
    from glmbot.serving.turn_log import TurnLogger

    settings, registry = common.get_settings(), common.get_registry()
    known = lambda: sorted({a.domain for a in registry.list_adapters(status="active")})  # noqa: E731
    if domain is not None and domain != "base" and domain not in known():
        raise UnknownDomainError(f"unknown domain {domain!r}; domains with an active adapter: "
                                 f"{', '.join(['base', *known()])}")
    interactive = sys.stdin.isatty()
    engine = common.get_engine()
    warn = lambda message: common.err_console.print(f"[yellow]warning:[/] {message}")  # noqa: E731
    logger = None if no_log else TurnLogger(registry, "cli", on_disabled=warn)
    options = ChatOptions(domain, adapter, temperature, max_new_tokens, system, settings.train.max_source_length)
    session = ChatSession(engine, options, logger)
    mode = f"domain {domain}" if domain else f"adapter {adapter}" if adapter else "automatic routing"
    header = (f"[bold]glmbot chat[/] · base {settings.model.base_model} · {mode} · "
              f"domains: {', '.join(known()) or 'none yet (glmbot train --domain NAME)'}")
    client = ChatClient(session, common.console, common.err_console, interactive=interactive, known_domains=known,
                        tokenizer=engine.tokenizer, header=header)
    try:
        client.run(_reader(interactive))
    finally:
        engine.close()


def _reader(interactive: bool):
    if interactive:
        return lambda: common.console.input("[bold cyan]你[/] > ")

    def read() -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    return read
