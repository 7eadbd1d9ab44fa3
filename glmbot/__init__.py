"""glmbot: many P-Tuning v2 prefixes of ChatGLM2-6B served from one shared base model."""

from glmbot.config import Settings, load_settings
from glmbot.errors import GlmbotError
from glmbot.model import (
    ChatGLMConfig,
    ChatGLMForConditionalGeneration,
    ChatGLMTokenizer,
    PrefixEncoder,
    PrefixKV,
    build_prompt,
    load_base,
)

__version__ = "0.1.0"

__all__ = [
    "ChatGLMConfig",
    "ChatGLMForConditionalGeneration",
    "ChatGLMTokenizer",
    "GlmbotError",
    "PrefixEncoder",
    "PrefixKV",
    "Settings",
    "__version__",
    "build_prompt",
    "load_base",
    "load_settings",
]
