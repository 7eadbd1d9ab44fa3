"""glmbot on Ray Serve: `glmbot serve --ray`, the same OpenAI-compatible API from engine replicas.

    pip install 'glmbot[ray]'
    from glmbot.integrations.ray_serve import build_application, deploy

    remote_engine.py  the ingress's engine: route, send to a replica by domain, stream its answer back
    replica.py        GlmbotReplica: one engine on one base; adapters are Ray's multiplexed models
    application.py    GlmbotIngress (the app of `glmbot serve`), [ray] -> deployment options, deploy()

How it maps to GPUs and machines: docs/SCALING.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_application", "deploy"]


def __getattr__(name: str) -> Any:  # ray is imported only when used
    if name in __all__:
        from glmbot.integrations.ray_serve import application

        return getattr(application, name)
    raise AttributeError(name)
