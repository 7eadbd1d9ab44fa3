"""`glmbot serve --ray`: the same HTTP API from engine replicas on Ray Serve ([ray] in glmbot.toml)."""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence

from glmbot.cli import common
from glmbot.config import Settings
from glmbot.errors import ConfigError


def serve_on_ray(settings: Settings, host: str, port: int, api_keys: Sequence[str]) -> None:
    """Deploy the glmbot application on the Ray cluster of [ray] address and wait for Ctrl-C."""
    try:
        import ray
        from ray import serve

        from glmbot.integrations.ray_serve import deploy
    except ImportError as exc:
        raise ConfigError(f"glmbot serve --ray needs Ray Serve ({exc.name} is not installed): "
                          "pip install 'glmbot[ray]'") from None
    r = settings.ray
    if settings.db_url.startswith("sqlite") and r.address not in ("", "local"):
        common.err_console.print(f"[yellow]warning:[/] the registry is SQLite ({settings.db_url}): replicas on other "
                                 "machines cannot share it; set [registry] db_url to PostgreSQL (docs/SCALING.md)")
    replicas = f"{r.min_replicas}-{r.max_replicas} replicas (autoscaling)" if r.autoscaling else f"{r.replicas} replicas"
    common.console.print(f"[bold]glmbot serve --ray[/] · base {settings.model.base_model} · {replicas} · "
                         f"Ray {r.address or 'started on this machine'} · starting (each replica loads the base)…",
                         highlight=False)
    url = deploy(settings, host, port, api_keys)
    common.console.print(f"OpenAI base_url: [bold]{url}/v1[/] · per-replica stats: {url}/v1/replicas · "
                         f"{f'{len(api_keys)} API key(s) required' if api_keys else 'no API key (loopback only)'}",
                         highlight=False)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: the same clean shutdown as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(r.app_name)
        if not r.address:  # the Ray this command started
            serve.shutdown()
            ray.shutdown()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
