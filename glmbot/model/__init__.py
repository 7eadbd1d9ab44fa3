"""GLM-family models (ChatGLM2/3, GLM-4), tokenizers, P-Tuning v2 prefixes and base-model loading.

Names are imported on first use: code that needs only the prefix file format or a fingerprint
(the registry, the CLI's registry commands) does not pay for importing transformers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ChatGLMConfig": "glmbot.model.configuration",
    "base_fingerprint": "glmbot.model.fingerprint",
    "load_base": "glmbot.model.loading",
    "load_base_config": "glmbot.model.loading",
    "resolve_base": "glmbot.model.loading",
    "ChatGLMForConditionalGeneration": "glmbot.model.modeling",
    "count_parameters": "glmbot.model.modeling",
    "PrefixEncoder": "glmbot.model.prefix",
    "PrefixKV": "glmbot.model.prefix",
    "load_prefix_checkpoint": "glmbot.model.prefix_io",
    "prefix_encoder_from_state": "glmbot.model.prefix_io",
    "ChatGLMTokenizer": "glmbot.model.tokenizer",
    "ChatGLM3Tokenizer": "glmbot.model.tokenizer",
    "GLM4Tokenizer": "glmbot.model.tokenizer_glm4",
    "GlmFamily": "glmbot.model.family",
    "detect_family": "glmbot.model.family",
    "family_of": "glmbot.model.family",
    "load_tokenizer": "glmbot.model.loading",
    "build_prompt": "glmbot.model.tokenizer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glmbot.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
