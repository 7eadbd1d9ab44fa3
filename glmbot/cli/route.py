"""`glmbot route TEXT`: which domain's adapter would answer a message (or the plain base), and why."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.common import JsonOpt
from glmbot.errors import GlmbotError, RegistryError, UnknownDomainError
from glmbot.registry.catalog import domain_state, domain_states
from glmbot.serving.closest import index_of
from glmbot.serving.router import RouteDecision, fallback_reply, leans_back
from glmbot.serving.routing_setup import adapter_routing_prompts, build_router

REASON_STYLE = {"explicit": "bold", "small_talk": "yellow", "sticky": "bold", "plugin": "magenta", "keyword": "green", "pattern": "green",
                "classifier": "cyan", "second_look": "cyan", "fallback": "yellow"}


def route(
    text: Annotated[str, typer.Argument(metavar="TEXT", help="the chat message to route", show_default=False)],
    domain: Annotated[Optional[str], typer.Option(
        "--domain", "-d", metavar="DOMAIN", help="route explicitly: a domain, DOMAIN@vN, or 'base' (the plain model)",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show where TEXT would be routed, why, and each domain's classifier score.

    Domains that cannot answer yet (no active adapter) are listed as skipped, with why.

    Examples:

    \b
      glmbot route "退货多久到账？"
      glmbot route "你好"                      # general chat: the plain base
      glmbot route "写一段裙子的广告" --json
      glmbot route "退货多久到账？" --domain support@v2
    """
    settings, registry = common.get_settings(), common.get_registry()
    router = build_router(settings, registry)
    try:
        decision = router.route(text, explicit=domain)
    except UnknownDomainError as exc:
        _refuse_explicit(settings, registry, domain)
        raise UnknownDomainError(f"--domain {domain!r}: {exc}") from None
    skipped = [d.not_servable_reason() for d in domain_states(settings, registry) if not d.servable]
    scores = router.explain(text)
    asked = asked_as(settings, registry, decision, text)
    fixed = fallback_reply(decision, text, settings.routing.fallback_reply)
    if as_json:
        common.print_json(route_json(registry, decision, scores, router)
                          | {"skipped": skipped, "asked_as": asked, "fallback_reply": fixed})
        return
    style = REASON_STYLE.get(decision.reason, "bold")
    common.console.print(f"domain:  [bold]{decision.domain or 'base (plain model)'}[/]")
    common.console.print(f"adapter: {adapter_label(registry, decision)}")
    common.console.print(f"reason:  [{style}]{decision.reason}[/]    score: {decision.score:.3f}")
    if decision.detail:
        common.console.print(f"detail:  {decision.detail}", markup=False, highlight=False)  # "[routing] ..." is text
    if asked is not None:
        common.console.print(f"asked as: {asked}  (its closest training question; on a builtin base, "
                             "[serving] closest_question)", markup=False, highlight=False)
    if fixed is not None:
        common.console.print(f"answer:  {fixed}  (the fixed [routing] fallback_reply, not the plain base)",
                             markup=False, highlight=False)
    for reason in skipped:
        common.console.print(f"skipped: {reason}", highlight=False)
    if not scores:
        common.console.print("No routable domain: train one (glmbot train --domain NAME) and promote its adapter "
                             "(glmbot adapters promote NAME@vN).")
        return
    table = Table("domain", "classifier score", "", title="Classifier scores", header_style="bold")
    for name, score in scores:
        passes = score > 0 and score >= router.min_score
        if name == decision.domain:  # by these scores, or by another stage (keyword, second look...)
            if decision.reason != "classifier":
                mark = f"chosen by {decision.reason.replace('_', ' ')}"
            else:  # a training prompt word for word scores 1 above, whatever its cosine here
                mark = "chosen: a training prompt" if router.prompt_of(text) == name else "chosen"
        else:
            mark = "above min_score" if passes else ""
        table.add_row(name, f"{score:.3f}", mark)
    below = "the second look by characters decides, else" if router.second_look else "the message goes to"
    where = "below it, or where general chat scores higher," if router.general_chat else "below it"
    table.caption = f"min_score {router.min_score}; {where} {below} fallback {router.fallback!r}"
    common.console.print(table)


def route_json(registry, decision: RouteDecision, scores: list[tuple[str, float]], router) -> dict:  # noqa: ANN001
    """The stable `--json` fields of a route decision (docs/CLI.md)."""
    adapter = None
    if decision.domain is not None:
        try:
            info = registry.resolve(decision.adapter or decision.domain)
            adapter = {"ref": info.ref, "id": info.id, "status": info.status}
        except RegistryError:
            pass
    return {"domain": decision.domain, "adapter": adapter, "reason": decision.reason, "score": decision.score,
            "detail": decision.detail, "classifier_scores": dict(scores), "min_score": router.min_score,
            "fallback": router.fallback, "second_look": router.second_look, "general_chat": router.general_chat}


def asked_as(settings, registry, decision: RouteDecision, text: str) -> str | None:  # noqa: ANN001
    """The training question the adapter is asked instead of TEXT ([serving] closest_question: a builtin
    base, a message asked alone, an adapter that recorded its questions), or None."""
    if (decision.domain is None or not settings.serving.closest_question or leans_back(text)
            or not settings.model.base_model.startswith("builtin:")):  # glmbot.model would import torch
        return None
    try:
        info = registry.resolve(decision.adapter or decision.domain)
    except RegistryError:
        return None
    if info.hyperparams.get("data_history_rounds"):
        return None
    index = index_of(info.hyperparams.get("data_format"), adapter_routing_prompts(info))
    return index.find(text) if index is not None else None


def _refuse_explicit(settings, registry, explicit: str | None) -> None:
    """A domain asked for by name that exists but cannot answer yet: say why instead of 'unknown'."""
    name = (explicit or "").strip().split("@", 1)[0]
    try:
        state = domain_state(settings, registry, name)
    except RegistryError:  # not even a valid domain name: the router's own error stands
        return
    if state.configured or state.registered:
        raise GlmbotError(state.not_servable_reason())


def adapter_label(registry, decision: RouteDecision) -> str:  # noqa: ANN001 - glmbot.registry.Registry
    """'support@v3 (active)' or 'support@v2 (archived)' for the decision; '-' for the plain base."""
    if decision.domain is None:
        return "-"
    try:
        info = registry.resolve(decision.adapter or decision.domain)
    except RegistryError as exc:
        return f"[red]none[/] ({exc})"
    return f"{info.ref} ({info.status})"
