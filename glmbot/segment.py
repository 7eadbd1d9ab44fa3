"""Chinese word segmentation (jieba), shared by the metrics and the router."""

from __future__ import annotations

import functools
import logging
from types import ModuleType


@functools.cache
def jieba_module() -> ModuleType:
    """jieba, silenced and with its dictionary loaded once, on first use (it takes ~1 s)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs "Building prefix dict..." otherwise
    jieba.initialize()
    return jieba
