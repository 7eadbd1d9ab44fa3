"""`glmbot chat`: talk to the routed adapters in the terminal (or answer piped questions)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from glmbot.cli import common
from glmbot.errors import unknown_domain

Opt = typer.Option


def chat(
    domain: Annotated[Optional[str], Opt("--domain", "-d", metavar="DOMAIN",
                                         help="answer with this domain ('base': plain model)")] = None,
    adapter: Annotated[Optional[str], Opt(metavar="REF", help="a specific adapter, e.g. support@v3")] = None,
    temperature: Annotated[Optional[float], Opt(min=0, help="0 = greedy; default [generation] temperature")] = None,
    max_new_tokens: Annotated[Optional[int], Opt(min=1, help="tokens per answer at most")] = None,
    system: Annotated[str, Opt(metavar="TEXT", help=(
        "a system instruction: a native system turn on ChatGLM3/GLM-4 bases; ChatGLM2 has no system role, "
        "so there it is put in front of each question"))] = "",
    no_log: Annotated[bool, Opt("--no-log", help="do not store this conversation in the registry")] = False,
    no_history: Annotated[bool, Opt("--no-history", help=(
        "ask every question on its own, as a new conversation (lines are otherwise one conversation, each "
        "answered behind the earlier ones)"))] = False,
    quantize: common.QuantizeOpt = None,
) -> None:
    """Chat in the terminal; piped questions print only the answers.

    Piped or typed, the lines are one conversation: a follow-up such as "那周六呢？" is answered behind
    the earlier rounds. To check a file of separate questions, add --no-history. In the terminal,
    /help lists the chat commands (switch domain, clear history, quit).

    Examples:

    \b
      glmbot chat
      glmbot chat --domain support --temperature 0
      echo "退货多久到账？" | glmbot chat
      glmbot chat --domain hr --no-history < questions.txt
      glmbot chat --adapter support@v2 --no-log
      glmbot chat --system "你是客服助手，请简短回答。"
    """
    from glmbot.chat import ChatClient, ChatOptions, ChatSession
    from glmbot.serving.turn_log import TurnLogger
    from glmbot.training.teach import Teacher

    common.use_quantization(quantize)
    settings, registry = common.get_settings(), common.get_registry()
    known = lambda: sorted({a.domain for a in registry.list_adapters(status="active")})  # noqa: E731
    if domain is not None and domain != "base" and domain not in known():
        _refuse_domain(settings, registry, domain, known())
    interactive = sys.stdin.isatty()
    engine = common.get_engine()
    warn = lambda message: common.err_console.print(f"[yellow]warning:[/] {message}")  # noqa: E731
    logger = None if no_log else TurnLogger(registry, "cli", on_disabled=warn)
    options = ChatOptions(domain, adapter, temperature, max_new_tokens, system, settings.train.max_source_length,
                          no_history)
    session = ChatSession(engine, options, logger)
    mode = f"domain {domain}" if domain else f"adapter {adapter}" if adapter else "automatic routing"
    header = (f"[bold]glmbot chat[/] · base {settings.model.base_model} · {mode} · "
              f"domains: {', '.join(known()) or 'none yet (glmbot train --domain NAME)'}")
    client = ChatClient(session, common.console, common.err_console, interactive=interactive, known_domains=known,
                        tokenizer=engine.tokenizer, header=header, active_adapters=lambda: _active_rows(registry),
                        why_not_servable=lambda name: _not_servable_reason(settings, registry, name),
                        teacher=Teacher(settings))
    try:
        client.run(_reader(interactive))
    finally:
        engine.close()


def _active_rows(registry) -> list[tuple[str, str, str, str]]:
    """What /adapters lists: each domain's active adapter, its metrics and how long ago it was trained."""
    from glmbot.cli.adapters import age, format_metrics

    return [(a.domain, a.ref, format_metrics(a.metrics), f"{age(a.created_at)} ago")
            for a in sorted(registry.list_adapters(status="active"), key=lambda a: a.domain)]


def _not_servable_reason(settings, registry, domain: str) -> str:
    """Why a domain glmbot knows cannot answer yet, with the command that fixes it; '' for an unknown name."""
    from glmbot.errors import RegistryError
    from glmbot.registry.catalog import domain_state

    try:
        state = domain_state(settings, registry, domain)
    except RegistryError:  # not a valid domain name
        return ""
    return state.not_servable_reason() if state.configured or state.registered else ""


def _refuse_domain(settings, registry, domain: str, servable: list[str]) -> None:
    """Why `domain` cannot answer: not ready yet (the command that fixes it), or unknown."""
    from glmbot.errors import GlmbotError

    reason = _not_servable_reason(settings, registry, domain)
    if reason:
        raise GlmbotError(reason)
    raise unknown_domain(domain, ["base", *servable], listed="domains with an active adapter")


def _reader(interactive: bool):
    if interactive:
        return lambda: common.console.input("[bold cyan]你[/] > ")

    def read() -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    return read
