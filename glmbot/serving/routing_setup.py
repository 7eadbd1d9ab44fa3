"""Build the Router that serving uses, from glmbot.toml and the registry (CLI, chat and HTTP share it).

With a registry, the routable domains are those with an active adapter: a message is never
routed to a domain that cannot answer. Each domain's classifier learns from its active adapter's
`routing_prompts.json` (sha256-verified), else from the training prompts of its data file in
glmbot.toml. Keywords and patterns come from glmbot.toml and from the registry's domain record.
Without a registry, every domain of glmbot.toml is routable.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from glmbot.config import Settings, no_config_note
from glmbot.errors import ConfigError, DataError, GenerationError, GlmbotError, UnknownDomainError
from glmbot.serving.requests import without_system
from glmbot.serving.router import BASE, DomainProfile, RouteDecision, Router

log = logging.getLogger(__name__)


def build_router(settings: Settings, registry: Any = None, plugins: Any = None) -> Router:
    """A Router over the domains that can be served, with [routing]'s fallback, min_score and sticky.

    plugins: a PluginManager whose register_routers hooks add routers asked before the rules.
    """
    profiles = registry_profiles(settings, registry) if registry is not None else _settings_profiles(settings)
    fallback = settings.routing.fallback
    if fallback != BASE and fallback not in {p.name for p in profiles}:
        known = ", ".join(p.name for p in profiles) or "none"
        why = "has no active adapter in the registry" if registry is not None else "is not a [domains] table"
        raise ConfigError(f"{settings.source}: [routing] fallback = {fallback!r} {why} (routable domains: {known}); "
                          f"promote one (glmbot adapters promote {fallback}@vN) or set fallback = {BASE!r}")
    router = Router.configured(profiles, settings.routing)
    if plugins is not None:
        plugins.call("register_routers", register=router.add_plugin_router)
    return router


def _settings_profiles(settings: Settings) -> list[DomainProfile]:
    return [DomainProfile(name, keywords=list(d.keywords), patterns=list(d.patterns),
                          prompts=settings_prompts(settings, name)) for name, d in settings.domains.items()]


def registry_profiles(settings: Settings, registry: Any) -> list[DomainProfile]:
    profiles = []
    for domain in registry.list_domains():
        if domain.active_version is None:
            log.info("domain %r has no active adapter: not routable", domain.name)
            continue
        info = registry.resolve(domain.name)
        configured = settings.domains.get(domain.name)
        keywords = _merge(configured.keywords if configured else (), domain.keywords)
        patterns = _merge(configured.patterns if configured else (), domain.patterns)
        prompts = adapter_routing_prompts(info)
        if prompts is None:
            prompts = settings_prompts(settings, domain.name)
        profiles.append(DomainProfile(domain.name, keywords=keywords, patterns=patterns, prompts=prompts,
                                      adapter_version=info.version))
    return profiles


def adapter_routing_prompts(info: Any) -> list[str] | None:
    """The prompts stored with an adapter (routing_prompts.json), checked against their sha256; None if absent."""
    from glmbot.registry import store
    from glmbot.registry.damage import integrity_error

    expected = info.files.get(store.ROUTING)
    if expected is None:
        return None
    data, problem = store.read_checked(info.path, store.ROUTING, expected)
    if problem is not None:
        raise integrity_error(info, [problem])
    prompts = json.loads(data.decode("utf-8"))
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise DataError(f"{info.path / store.ROUTING} must hold a JSON list of strings")
    return prompts


def settings_prompts(settings: Settings, name: str) -> list[str]:
    """Training prompts of the domain's data file in glmbot.toml; [] when it names none."""
    domain = settings.domains.get(name)
    if domain is None or not domain.data:
        return []
    from glmbot.training.data import load_examples

    data = domain.data if domain.data.startswith("builtin:") else str(settings.path(domain.data))
    examples = load_examples(data, domain.format, domain.prompt_column, domain.response_column,
                             domain.history_column or None)
    return [ex.prompt for ex in examples]


def _merge(*lists) -> list[str]:  # noqa: ANN002 - sequences of str
    return list(dict.fromkeys(item for items in lists for item in items))


REGISTRY_CHECK_S = 1.0  # a RegistryFollower reads the registry's domains at most this often (one query)


class RegistryFollower:
    """Keeps a serving router's domains as the registry has them, read at most every REGISTRY_CHECK_S
    before routing (the engine, and the Ray Serve ingress, which routes for its replicas): a domain
    promoted while serving (from the CLI or the dashboard) becomes routable, one promoted to another
    version is routed and named with it (the route said "(active v1)" while v2 answered), one whose
    active adapter was archived is no longer routed (a newcomer's `model: auto` got 404 "model 'auto'
    does not exist"). Profiles the router was given without a version stay as they are."""

    def __init__(self, router: Router, settings: Settings, registry: Any):
        self.router, self.settings, self.registry = router, settings, registry
        self._checked = float("-inf")

    def follow(self, now: bool = False) -> None:
        checked = time.monotonic()
        if not now and checked - self._checked < REGISTRY_CHECK_S:
            return
        self._checked = checked
        try:
            domains = self.registry.list_domains()
        except GlmbotError as exc:
            # The registry is unreachable: route as before; a request that needs an adapter fails on its own.
            log.warning("routing could not read the registry's domains: %s", exc)
            return
        active = {d.name: d.active_version for d in domains if d.active_version is not None}
        known = {name: self.router.adapter_version(name) for name in self.router.domains}
        changed = {name for name, version in active.items() if name not in known or known[name] not in (None, version)}
        gone = [name for name, version in known.items() if version is not None and name not in active]
        if changed or gone:
            profiles = [p for p in registry_profiles(self.settings, self.registry) if p.name in changed]
            self.router.update_profiles(profiles, remove=gone)


def refresh_router(router: Router, settings: Settings, registry: Any) -> None:
    """Bring the router's domains up to date with the registry (a domain promoted after start)."""
    profiles = registry_profiles(settings, registry)
    gone = set(router.domains) - {p.name for p in profiles}
    router.update_profiles(profiles, remove=gone)


def route_request(router: Router | None, settings: Settings, registry: Any, req: Any, query: str | None,
                  history: list) -> RouteDecision:
    """The route of a GenerationRequest: its explicit domain/adapter, else the router's decision.

    An explicit domain the router does not know yet (promoted after start) re-reads the registry's
    domains once. Without a router, unnamed requests go to the plain base model.
    """
    if req.adapter and req.domain and req.adapter.partition("@")[0].strip() != req.domain.strip():
        raise GenerationError(f"adapter {req.adapter!r} does not belong to domain {req.domain!r}; give one of them")
    explicit = req.adapter or req.domain
    if router is not None and (query is not None or explicit is not None):
        def route() -> RouteDecision:
            text = without_system(req, query) or ""
            return router.route(text, conversation_id=req.conversation_id, history=history, explicit=explicit)

        try:
            return route()
        except UnknownDomainError:
            if explicit is None or registry is None:
                raise
            refresh_router(router, settings, registry)
            try:
                return route()
            except UnknownDomainError as exc:
                if explicit.partition("@")[0].strip() in {d.name for d in registry.list_domains()}:
                    registry.resolve(explicit)  # a domain without an active adapter: the registry's error says so
                note = no_config_note(settings)
                if note is None:
                    raise
                raise UnknownDomainError(f"{exc}; {note}") from None
    if explicit is None:
        return RouteDecision(None, None, "fallback", 0.0, detail="no router configured: plain base model")
    explicit = explicit.strip()
    if explicit == BASE:
        return RouteDecision(None, None, "explicit", 1.0, detail="plain base model requested")
    domain, sep, _ = explicit.partition("@")
    return RouteDecision(domain, explicit if sep else None, "explicit", 1.0, detail=f"{explicit!r} requested")
