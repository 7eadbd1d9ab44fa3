"""Adapter references and domain names.

A REF is `support` (the domain's active adapter), `support@v3` (or `support@3`), or an adapter
id (`17` or `#17`). Domain names follow config.DOMAIN_NAME_RE and must contain a letter, so a
name can never be mistaken for an id; they become folder names, so no separators and no '..'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from glmbot.config import DOMAIN_NAME_RE
from glmbot.errors import RegistryError, UnknownAdapterError

_VERSION_RE = re.compile(r"v?(\d+)")
_ID_RE = re.compile(r"#?(\d+)")


def check_domain_name(name: object) -> str:
    """`name` if it is a valid domain name, else a RegistryError saying what is allowed."""
    if not isinstance(name, str) or not _valid_domain_name(name):
        lowered = name.lower() if isinstance(name, str) else ""
        example = repr(lowered) if _valid_domain_name(lowered) else "'support'"  # 'Bike' -> e.g. 'bike'
        raise RegistryError(
            f"invalid domain name {name!r}: use 1-64 lowercase letters, digits, '-' or '_', starting with a "
            f"letter or digit and containing at least one letter (no '/', '\\', '.' or spaces), e.g. {example}")
    return name


def _valid_domain_name(name: str) -> bool:
    return bool(DOMAIN_NAME_RE.fullmatch(name) and re.search(r"[a-z]", name))


@dataclass(frozen=True)
class AdapterRef:
    """A parsed REF: exactly one of (domain), (domain, version) or (id) is set."""

    text: str
    domain: str | None = None
    version: int | None = None
    id: int | None = None

    @property
    def means_active(self) -> bool:
        return self.domain is not None and self.version is None


def parse_ref(ref: str | int) -> AdapterRef:
    """'support' | 'support@v3' | 'support@3' | '17' | '#17' (or an int id) -> AdapterRef."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return AdapterRef(str(ref), id=ref)
    if not isinstance(ref, str) or not ref.strip():
        raise UnknownAdapterError(f"empty or invalid adapter reference {ref!r}; use DOMAIN, DOMAIN@vN or an id")
    text = ref.strip()
    if match := _ID_RE.fullmatch(text):
        return AdapterRef(text, id=int(match.group(1)))
    domain, sep, version = text.partition("@")
    check_domain_name(domain)
    if not sep:
        return AdapterRef(text, domain=domain)
    if not (match := _VERSION_RE.fullmatch(version)) or int(match.group(1)) == 0:
        raise UnknownAdapterError(
            f"bad version {version!r} in adapter reference {text!r}; write it as {domain}@v3 (versions start at 1)")
    return AdapterRef(text, domain=domain, version=int(match.group(1)))
