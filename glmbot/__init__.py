"""glmbot: many P-Tuning v2 prefixes of ChatGLM2-6B served from one shared base model.

Names are imported on first use, so `import glmbot` (and every CLI command that needs no model)
does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Settings": "glmbot.config",
    "load_settings": "glmbot.config",
    "GlmbotError": "glmbot.errors",
    "ChatGLMConfig": "glmbot.model",
    "ChatGLMForConditionalGeneration": "glmbot.model",
    "ChatGLMTokenizer": "glmbot.model",
    "PrefixEncoder": "glmbot.model",
    "PrefixKV": "glmbot.model",
    "build_prompt": "glmbot.model",
    "load_base": "glmbot.model",
    "Registry": "glmbot.registry",
    "Router": "glmbot.serving.router",
    "RouteDecision": "glmbot.serving.router",
    "engine_from_config": "glmbot.stack",
    "shared_engine": "glmbot.stack",
    "CoverageReport": "glmbot.training.coverage",
    "tokenizer_coverage": "glmbot.training.coverage",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glmbot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
