"""One place that assembles a serving stack from glmbot.toml: base model, registry, router, plugins, engine."""

from __future__ import annotations

from typing import Any

import torch

from glmbot.config import Settings
from glmbot.serving.engine import Engine
from glmbot.serving.routing_setup import build_router


def build_engine(settings: Settings, model: Any, tokenizer: Any, registry: Any, plugins: Any = None,
                 **engine_kwargs) -> Engine:
    """An Engine over `model` serving the registry's active adapters, routed as configured.

    On CUDA the decode step is replayed from CUDA graphs (static shapes) unless the caller says
    otherwise in engine_kwargs, with each block's dense parts compiled first ([serving] compile).
    [serving] deterministic picks the CUDA decode attention kernel (CPU decode is always deterministic).
    """
    router = build_router(settings, registry, plugins)
    if model.device.type == "cuda":
        engine_kwargs.setdefault("cuda_graph", True)
        engine_kwargs.setdefault("static_shapes", True)
        # cuDNN's attention needs fp16/bf16 on an Ampere or newer GPU; elsewhere the grouped call
        # would fall back to the math kernel, slower than the folded form.
        half = model.dtype in (torch.float16, torch.bfloat16)
        cudnn_ok = half and torch.cuda.get_device_capability(model.device) >= (8, 0)
        model.set_deterministic_decode(settings.serving.deterministic or not cudnn_ok)
        if settings.serving.compile:
            model.compile_dense()
    return Engine(model, tokenizer, registry=registry, router=router, settings=settings, plugins=plugins,
                  **engine_kwargs)
