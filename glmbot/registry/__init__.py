"""The adapter registry: SQLModel tables, numbered migrations, verified files, and the `Registry` API.

Names are imported on first use, so naming a status does not import SQLAlchemy, and only the
operations on prefix tensors import torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Registry": "glmbot.registry.api",
    **dict.fromkeys(("ActivationInfo", "AdapterInfo", "DomainInfo", "EvaluationInfo", "FileProblem", "PushInfo",
                     "RunInfo", "VerifyResult"), "glmbot.registry.info"),
    **dict.fromkeys(("AdapterRef", "check_domain_name", "parse_ref"), "glmbot.registry.refs"),
    **dict.fromkeys(("ACTIVE", "ARCHIVED", "CANDIDATE", "STATUSES"), "glmbot.registry.states"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glmbot.registry' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
