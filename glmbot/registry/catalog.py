"""Every domain a user has, from glmbot.toml and the registry together, and whether it can answer.

`glmbot domains list`, `glmbot info`, `glmbot route` and `glmbot chat` all read domains through
`domain_states`, so they agree on which domains exist, which keywords route to them and why one
cannot answer yet (no data, no adapter, or adapters none of which is active).
"""

from __future__ import annotations

from dataclasses import dataclass

from glmbot.config import Settings
from glmbot.errors import UnknownDomainError


@dataclass(frozen=True)
class DomainState:
    """One domain as glmbot.toml ([domains.NAME]) and the registry know it."""

    name: str
    description: str = ""
    configured: bool = False                            # has a [domains.NAME] table in glmbot.toml
    registered: bool = False                            # has a registry row
    versions: tuple[tuple[int, str], ...] = ()          # (version, status) of its adapters
    keywords: tuple[str, ...] = ()                      # glmbot.toml's, then the registry's
    patterns: tuple[str, ...] = ()
    data: str = ""                                      # training data named in glmbot.toml

    @property
    def active_version(self) -> int | None:
        return next((v for v, status in self.versions if status == "active"), None)

    @property
    def servable(self) -> bool:
        return self.active_version is not None

    def versions_text(self) -> str:
        """'v1-v3', 'v2', 'v1, v3' or '-'."""
        numbers = [v for v, _ in self.versions]
        if not numbers:
            return "-"
        if len(numbers) > 1 and numbers == list(range(numbers[0], numbers[-1] + 1)):
            return f"v{numbers[0]}-v{numbers[-1]}"
        return ", ".join(f"v{v}" for v in numbers)

    def not_servable_reason(self) -> str:
        """Why no message can go to this domain and the command that fixes it; '' when it can answer."""
        if self.servable:
            return ""
        if self.versions:
            candidates = [v for v, status in self.versions if status == "candidate"] or [v for v, _ in self.versions]
            return (f"{self.name} has {self.versions_text()}, none active: "
                    f"glmbot adapters promote {self.name}@v{candidates[-1]}")
        if self.data:
            return f"{self.name} has no adapter yet: glmbot train --domain {self.name}"
        return f"{self.name} has no adapter and no data yet: glmbot train --domain {self.name} --data FILE.jsonl"


def domain_states(settings: Settings, registry) -> list[DomainState]:  # noqa: ANN001 - glmbot.registry.Registry
    """Every domain of glmbot.toml or the registry, sorted by name."""
    names = sorted({*settings.domains, *(d.name for d in registry.list_domains())})
    return [domain_state(settings, registry, name) for name in names]


def domain_state(settings: Settings, registry, name: str) -> DomainState:  # noqa: ANN001 - Registry
    """One domain's state; a name neither file knows gives an empty, unconfigured, unregistered state."""
    configured = settings.domains.get(name)
    try:
        row = registry.get_domain(name)
    except UnknownDomainError:
        row = None
    versions = tuple((a.version, a.status) for a in registry.list_adapters(name)) if row else ()
    keywords = dict.fromkeys([*(configured.keywords if configured else ()), *(row.keywords if row else ())])
    patterns = dict.fromkeys([*(configured.patterns if configured else ()), *(row.patterns if row else ())])
    description = (configured.description if configured else "") or (row.description if row else "")
    return DomainState(name, description, configured is not None, row is not None, tuple(sorted(versions)),
                       tuple(keywords), tuple(patterns), configured.data if configured else "")
