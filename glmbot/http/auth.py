"""API keys and binding: which keys a server wants, and where it may listen without any.

Keys come from [server] api_keys, $GLMBOT_API_KEYS and --api-key. A server bound beyond loopback
must have one; with any key set, every guarded route wants `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable, Sequence

from fastapi import Request

from glmbot.config import Settings
from glmbot.errors import ConfigError
from glmbot.http.errors import APIError
from glmbot.http.metrics import ServerMetrics

API_KEYS_ENV = "GLMBOT_API_KEYS"


def resolve_api_keys(settings: Settings, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """[server] api_keys + $GLMBOT_API_KEYS (comma-separated) + `extra` (e.g. --api-key), deduplicated."""
    env = [k for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    keys = [k.strip() for k in (*settings.server.api_keys, *env, *extra)]
    if any(not k for k in keys):
        raise ConfigError("an API key is empty: give non-empty keys (server.api_keys in glmbot.toml, GLMBOT_API_KEYS, --api-key)")
    return tuple(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def check_bind(host: str, api_keys: Sequence[str]) -> None:
    """Refuse to listen beyond this machine without API keys."""
    if not is_loopback(host) and not api_keys:
        raise ConfigError(
            f"refusing to serve on {host!r} without API keys: anyone who can reach it could use the model. "
            f"Set {API_KEYS_ENV}=KEY (comma-separated for several), or server.api_keys in glmbot.toml, or pass "
            "--api-key KEY; or bind 127.0.0.1 (--host 127.0.0.1)")


def key_matches(digests: Sequence[bytes], token: str) -> bool:
    """Whether `token` is one of the keys whose SHA-256 `digests` are given, compared in constant time."""
    given = hashlib.sha256(token.strip().encode()).digest()
    matched = False
    for digest in digests:  # no early exit: the time does not tell which key came close
        matched |= hmac.compare_digest(digest, given)
    return matched


def key_digests(keys: Sequence[str]) -> list[bytes]:
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def key_guard(keys: Sequence[str], metrics: ServerMetrics) -> Callable:
    """A dependency that wants `Authorization: Bearer KEY` when any key is set."""
    digests = key_digests(keys)

    async def require_key(request: Request) -> None:
        if not digests:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key_matches(digests, token):
            metrics.refused(401)
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with a key "
                                "this server was given", code="invalid_api_key")

    return require_key
