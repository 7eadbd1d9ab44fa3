"""ChatGLM2 model, tokenizer, P-Tuning v2 prefixes and base-model loading."""

from glmbot.model.configuration import ChatGLMConfig
from glmbot.model.fingerprint import base_fingerprint
from glmbot.model.loading import load_base, load_base_config, resolve_base
from glmbot.model.modeling import ChatGLMForConditionalGeneration, count_parameters
from glmbot.model.prefix import PrefixEncoder, PrefixKV
from glmbot.model.prefix_io import load_prefix_checkpoint, prefix_encoder_from_state
from glmbot.model.tokenizer import ChatGLMTokenizer, build_prompt

__all__ = [
    "ChatGLMConfig",
    "ChatGLMForConditionalGeneration",
    "ChatGLMTokenizer",
    "PrefixEncoder",
    "PrefixKV",
    "base_fingerprint",
    "build_prompt",
    "count_parameters",
    "load_base",
    "load_base_config",
    "load_prefix_checkpoint",
    "prefix_encoder_from_state",
    "resolve_base",
]
