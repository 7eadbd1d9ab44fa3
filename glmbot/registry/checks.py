"""Checks of the plain values callers hand the registry (metrics, hashes, routing hints, JSON dicts).

Each check raises a typed error naming the bad value and the fix; on success it returns the
value in the form the registry stores. The prefix tensors are checked in `registration.py`,
which alone needs torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

from glmbot.errors import RegistryError
from glmbot.registry.states import SOURCES

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_metrics(metrics: object, what: str = "metrics") -> dict[str, float]:
    """{name: finite number} -> {name: float}."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise RegistryError(f"{what} must be a dict of metric name -> number, got {metrics!r}")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"{what}: metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RegistryError(f"{what}: metric {name!r} = {value!r} is not a finite number")
        out[name] = float(value)
    return out


def check_sha256(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise RegistryError(f"{what} must be 64 lowercase hex digits (a sha256), got {value!r}")
    return value


def check_source(source: object) -> str:
    if source not in SOURCES:
        raise RegistryError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def check_sample_count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RegistryError(f"sample_count must be an integer >= 0, got {value!r}")
    return value


def check_strings(values: object, what: str) -> list[str]:
    """A list of non-empty strings (routing prompts, keywords)."""
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise RegistryError(f"{what} must be a list of strings, got {values!r}")
    out = list(values)
    bad = [v for v in out if not isinstance(v, str) or not v.strip()]
    if bad:
        raise RegistryError(f"{what} must be non-empty strings; bad entries: {bad[:3]!r}")
    return out


def check_patterns(patterns: object) -> list[str]:
    out = check_strings(patterns, "patterns")
    for pattern in out:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RegistryError(f"routing pattern {pattern!r} is not a valid regular expression ({exc}); "
                                "fix it, e.g. escape special characters with a backslash") from None
    return out


def check_json_dict(value: object, what: str) -> dict:
    """A dict that JSON can store (hyper-parameters, provenance)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RegistryError(f"{what} must be a dict, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must hold only JSON values (str, number, bool, list, dict): {exc}") from None
    return dict(value)
