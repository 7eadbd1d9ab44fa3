"""One place that assembles a serving stack from glmbot.toml: base model, registry, router, plugins, engine."""

from __future__ import annotations

from typing import Any

import torch

from glmbot.config import Settings
from glmbot.serving.blas import choose_blas
from glmbot.serving.engine import Engine
from glmbot.serving.routing_setup import build_router


def build_engine(settings: Settings, model: Any, tokenizer: Any, registry: Any, plugins: Any = None,
                 **engine_kwargs) -> Engine:
    """An Engine over `model` serving the registry's active adapters, routed as configured, with
    the device's fast path (`fast_path_options`) unless the caller says otherwise in engine_kwargs."""
    router = build_router(settings, registry, plugins)
    engine_kwargs = fast_path_options(settings, model, engine_kwargs.get("max_batch_size")) | engine_kwargs
    return Engine(model, tokenizer, registry=registry, router=router, settings=settings, plugins=plugins,
                  **engine_kwargs)


def fast_path_options(settings: Settings, model: Any, rows: int | None = None) -> dict[str, Any]:
    """Prepare `model` for serving as `glmbot serve` does and return the Engine options for it.

    On CUDA the decode step is replayed from CUDA graphs (static shapes), with each block's dense
    parts compiled first ([serving] compile); [serving] deterministic picks the CUDA decode
    attention kernel (CPU decode is always deterministic), [serving] blas the BLAS library (timed
    at `rows` decode rows, default [serving] max_batch_size). Elsewhere: no options.
    """
    if model.device.type != "cuda":
        return {}
    choose_blas(model, rows or settings.serving.max_batch_size, settings.serving.blas,  # before any capture
                deterministic=settings.serving.deterministic)
    # cuDNN's attention needs fp16/bf16 on an Ampere or newer GPU; elsewhere the grouped call
    # would fall back to the math kernel, slower than the folded form.
    half = model.dtype in (torch.float16, torch.bfloat16)
    cudnn_ok = half and torch.cuda.get_device_capability(model.device) >= (8, 0)
    model.set_deterministic_decode(settings.serving.deterministic or not cudnn_ok)
    if settings.serving.compile:
        model.compile_dense()
    return {"cuda_graph": True, "static_shapes": True}
