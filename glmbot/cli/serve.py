"""`glmbot serve`: the OpenAI-compatible HTTP API over the routed adapters (docs/HTTP_API.md)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional

import typer

from glmbot.cli import common

Opt = typer.Option


def serve(
    host: Annotated[Optional[str], Opt(metavar="ADDRESS", help="address to bind (default: server.host of glmbot.toml, "
                                                               "127.0.0.1); any non-loopback address needs an API key")
                    ] = None,
    port: Annotated[Optional[int], Opt(min=0, max=65535,
                                       help="TCP port (default: server.port of glmbot.toml, 8000)")] = None,
    api_key: Annotated[Optional[list[str]], Opt(
        "--api-key", metavar="KEY", help="a Bearer key clients must send (repeatable); prefer GLMBOT_API_KEYS=k1,k2, "
                          "which other users cannot read from the process list")] = None,
    no_log: Annotated[bool, Opt("--no-log", help="do not store the conversations in the registry")] = False,
    ray: Annotated[bool, Opt("--ray", help="serve from engine replicas on Ray Serve, as [ray] of glmbot.toml says "
                                           "(pip install 'glmbot[ray]'; docs/SCALING.md)")] = False,
    quantize: common.QuantizeOpt = None,
) -> None:
    """Serve the OpenAI-compatible HTTP API over the routed adapters.

    Endpoints: /v1/chat/completions, /v1/models, /health and /metrics
    (docs/HTTP_API.md); the chat and adapter pages under /ui (docs/WEB_UI.md).

    Examples:

    \b
      glmbot serve
      glmbot serve --port 8080 --no-log
      GLMBOT_API_KEYS=secret1 glmbot serve --host 0.0.0.0
      glmbot serve --ray          # [ray] replicas on a Ray cluster, same API
    """
    from glmbot.http import check_bind, check_port, create_app, resolve_api_keys, run_server

    common.use_quantization(quantize)
    settings = common.get_settings()
    host = settings.server.host if host is None else host
    port = settings.server.port if port is None else port
    keys = resolve_api_keys(settings, api_key or ())
    check_bind(host, keys)  # before minutes of model loading
    if no_log:
        settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, log_conversations=False))
    if ray:
        from glmbot.cli.serve_ray import serve_on_ray

        return serve_on_ray(settings, host, port, keys)
    check_port(host, port)
    registry = common.get_registry()
    engine = serving_engine(settings)
    app = create_app(engine, settings=settings, registry=registry, api_keys=keys, web_ui=True)
    models = [card["id"] for card in app.state.service.model_cards()]
    shown_host = f"[{host}]" if ":" in host else host
    common.console.print(
        f"[bold]glmbot serve[/] · base {settings.model.base_model} · models: {', '.join(models)}\n"
        f"OpenAI base_url: [bold]http://{shown_host}:{port or 'PORT'}/v1[/] · "
        f"web pages: [bold]http://{shown_host}:{port or 'PORT'}/ui[/] · "
        f"{f'{len(keys)} API key(s) required' if keys else 'no API key (loopback only)'} · "
        f"conversation log {'on' if settings.server.log_conversations else 'off'}", highlight=False)
    try:
        run_server(app, host, port)
    finally:
        engine.close()


def serving_engine(settings):
    """The engine `glmbot serve` answers from: in a process of its own where [serving] engine_process
    says so (default: on CUDA), else in this process."""
    from glmbot.serving.engine_process import ProcessEngine, wants_engine_process

    if wants_engine_process(settings):
        common.console.print("engine: in its own process ([serving] engine_process)", highlight=False, markup=False)
        return ProcessEngine.from_settings(settings)
    return common.get_engine()
