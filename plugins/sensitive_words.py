"""Masks sensitive words in every answer (after_generate).

The words come from glmbot.toml: `[plugins] sensitive_words = ["词1", "词2"]`; each occurrence
becomes as many '*' as it has characters. With no words configured the plugin does nothing.
"""

from __future__ import annotations

from glmbot.hookspecs import hookimpl
from glmbot.plugins import current_settings


def mask(text: str, words: list[str]) -> str:
    # Longest first, so a word that contains a shorter one is masked whole.
    for word in sorted({w for w in words if w}, key=len, reverse=True):
        text = text.replace(word, "*" * len(word))
    return text


@hookimpl
def after_generate(request, response):
    words = current_settings().plugins.sensitive_words
    return mask(response, words) if words else None
