"""The hooks glmbot plugins implement (pluggy). Plugins use `from glmbot import hookimpl`-style:

    import glmbot.hookspecs as hs

    @hs.hookimpl
    def register_routers(register):
        register(my_router)

Every `register_x(register)` hook hands the plugin a callback; plugins never reach into internals.

Answers and streaming: `register_answer_filters` filters see the answer as it streams (they hold
back only what a later piece could still change), so streams stay streamed. `after_generate`
rewrites the whole answer: while any plugin implements it, every stream is held back and sent
whole at the end. Prefer answer filters; keep after_generate for rewrites that need the whole text.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("glmbot")
hookimpl = pluggy.HookimplMarker("glmbot")


@hookspec
def register_commands(cli):
    """Add Typer commands or sub-apps to the `glmbot` CLI app `cli`."""


@hookspec
def register_routers(register):
    """Register routers: register(fn) with fn(text, history) -> RouteDecision | None, asked before the rules."""


@hookspec
def register_datasets(register):
    """Register named data sets: register(name, loader) with loader() -> path of a JSONL file, for `train --data NAME`."""


@hookspec
def before_generate(request):
    """Called before a request is generated; may edit request.query, or return an answer string to skip the model."""


@hookspec
def register_answer_filters(register):
    """Register streaming answer filters: register(factory) with factory(request) -> AnswerFilter | None (glmbot.serving.answer_filters)."""


@hookspec
def after_generate(request, response):
    """Called with the finished answer text; return a replacement string to rewrite it, or None to keep it (buffers streams)."""


@hookspec
def on_adapter_registered(adapter):
    """Called after an adapter (glmbot.registry.AdapterInfo) was registered."""
