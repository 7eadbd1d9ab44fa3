"""Masks sensitive words in every answer, as it streams (register_answer_filters).

The words come from glmbot.toml: `[plugins] sensitive_words = ["词1", "词2"]`; each occurrence
becomes as many '*' as it has characters, also when a word arrives split over several pieces of
a stream. Only the last (longest word - 1) characters are held back while an answer streams.
With no words configured the plugin registers no filter: answers stream exactly as without it.
"""

from __future__ import annotations

from glmbot.hookspecs import hookimpl
from glmbot.plugins import current_settings
from glmbot.serving.answer_filters import MaskWords


@hookimpl
def register_answer_filters(register):
    words = [w for w in current_settings().plugins.sensitive_words if w]
    if words:
        register(lambda request: MaskWords(words))
