"""The Ray Serve application of glmbot: an HTTP ingress that routes, and engine replicas.

    app = build_application(settings, api_keys=keys)      # a ray.serve.Application
    serve.run(app, name=settings.ray.app_name, route_prefix="/")

The ingress (GlmbotIngress, no model) serves glmbot.http.create_app, the app of `glmbot serve`,
over a RemoteEngine, plus GET /v1/replicas (each replica's adapters, requests and engine stats).
The replicas (GlmbotReplica) take their resources, count or autoscaling bounds and multiplexing
size from [ray] in glmbot.toml.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ray import serve

from glmbot.config import Settings
from glmbot.errors import ConfigError
from glmbot.integrations.ray_serve.replica import GlmbotReplica

INGRESS_MAX_ONGOING = 4096  # the ingress only waits on streams; the replicas bound the real work


class GlmbotIngress:
    """Routes with glmbot's router and serves the OpenAI-compatible API from the replicas' streams."""

    async def __init__(self, replicas: Any, settings: Settings, api_keys: Sequence[str] = ()):
        from glmbot.integrations.ray_serve.remote_engine import RemoteEngine
        from glmbot.model.family import family_of
        from glmbot.model.loading import load_base_config, load_tokenizer, resolve_base
        from glmbot.plugins import get_manager
        from glmbot.registry import Registry
        from glmbot.serving.routing_setup import build_router

        self.settings, self.api_keys = settings, tuple(api_keys)
        self.registry = Registry.from_settings(settings)
        router = build_router(settings, self.registry, get_manager(settings))
        base = settings.model.base_model
        config = load_base_config(base)  # no weights here: the family's tokenizer, for prompts and lengths
        tokenizer = load_tokenizer(resolve_base(base), family_of(config))
        max_len = min(settings.generation.max_length, config.seq_length)  # as each replica's
        self.engine = RemoteEngine(replicas, router=router, settings=settings, registry=self.registry,
                                   tokenizer=tokenizer, max_len=max_len)

    def __serve_build_asgi_app__(self) -> Any:
        from fastapi import Depends
        from fastapi.responses import JSONResponse

        from glmbot.http import create_app
        from glmbot.http.auth import key_guard

        app = create_app(self.engine, settings=self.settings, registry=self.registry, api_keys=self.api_keys)

        async def replicas() -> JSONResponse:
            """GET /v1/replicas: what each live replica holds and has served."""
            data = [{**r, "engine": dataclasses.asdict(r["engine"])} for r in await self.engine.replica_stats()]
            return JSONResponse({"object": "list", "data": sorted(data, key=lambda r: r["replica"])})

        guard = Depends(key_guard(app.state.api_keys, app.state.service.metrics))
        app.add_api_route("/v1/replicas", replicas, methods=["GET"], dependencies=[guard])
        return app

    def __del__(self) -> None:
        self.engine.close()
        self.registry.close()


def replica_options(settings: Settings, cluster_gpus: float) -> dict[str, Any]:
    """serve.deployment options of the engine replicas, from [ray] (and [model] device for GPUs)."""
    ray = settings.ray
    device = settings.model.device
    gpus = ray.num_gpus
    if gpus == "auto":
        gpus = 1.0 if cluster_gpus > 0 and device != "cpu" else 0.0
    if gpus > 0 and device == "cpu":
        raise ConfigError(f"{settings.source}: [ray] num_gpus = {gpus} but [model] device = 'cpu': set num_gpus = 0 "
                          "(or 'auto'), or device = 'auto'")
    if gpus == 0 and device.startswith("cuda"):
        raise ConfigError(f"{settings.source}: [model] device = {device!r} but the replicas get no GPU "
                          f"([ray] num_gpus = {ray.num_gpus!r}, the cluster has {cluster_gpus:g}): set num_gpus = 1, "
                          "or device = 'auto'")
    actor = {"num_cpus": ray.num_cpus, "num_gpus": gpus}
    if ray.memory_gib:
        actor["memory"] = int(ray.memory_gib * (1 << 30))
    options: dict[str, Any] = {
        "name": "GlmbotReplica", "ray_actor_options": actor,
        "max_ongoing_requests": ray.max_ongoing_requests or settings.serving.max_batch_size,
        "graceful_shutdown_timeout_s": 20.0}
    if ray.autoscaling:
        options["autoscaling_config"] = {"min_replicas": ray.min_replicas, "max_replicas": ray.max_replicas,
                                         "target_ongoing_requests": ray.target_ongoing_requests}
    else:
        options["num_replicas"] = ray.replicas
    return options


def portable(settings: Settings) -> Settings:
    """Settings that mean the same in another process or on another node: the registry URL resolved
    ($GLMBOT_DB_URL included) and paths made absolute."""
    registry = dataclasses.replace(settings.registry, db_url=settings.db_url, adapters_dir=str(settings.adapters_dir))
    plugins = dataclasses.replace(settings.plugins, paths=[str(settings.path(p)) for p in settings.plugins.paths])
    return dataclasses.replace(settings, registry=registry, plugins=plugins)


def build_application(settings: Settings, api_keys: Sequence[str] = (), cluster_gpus: float = 0.0) -> Any:
    """The glmbot application: GlmbotIngress bound to a deployment of GlmbotReplica."""
    settings = portable(settings)
    replica = serve.deployment(GlmbotReplica, **replica_options(settings, cluster_gpus))
    ingress = serve.deployment(serve.ingress()(GlmbotIngress), name="GlmbotIngress",
                               num_replicas=settings.ray.ingress_replicas, max_ongoing_requests=INGRESS_MAX_ONGOING,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(replica.bind(settings), settings, tuple(api_keys))


def deploy(settings: Settings, host: str, port: int, api_keys: Sequence[str] = ()) -> str:
    """Connect to Ray as [ray] address says ('' = a new Ray on this machine, even where another one
    runs), start Serve's HTTP proxy on host:port and run the application; returns its base URL. Ray
    already initialised by the caller is used as it is."""
    import ray

    if settings.ray.num_gpus != "auto":  # explicit GPUs that contradict [model] device: refused before Ray starts
        replica_options(settings, 0.0)
    if not ray.is_initialized():
        ray.init(address=settings.ray.address or "local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    app = build_application(settings, api_keys, ray.cluster_resources().get("GPU", 0.0))
    serve.run(app, name=settings.ray.app_name, route_prefix="/", blocking=False)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
