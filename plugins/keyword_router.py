"""An example router plugin (register_routers): keywords that always pick a domain.

Asked after explicit and sticky routes and before glmbot.toml's rules. Settings:
`[plugins.options.keyword_router] rules = {"发票" = "support", "开票" = "support"}` (the default).
"""

from __future__ import annotations

from glmbot.hookspecs import hookimpl
from glmbot.plugins import plugin_options
from glmbot.serving.router import RouteDecision

DEFAULT_RULES = {"发票": "support", "开票": "support"}


def route_by_keyword(text: str, history) -> RouteDecision | None:
    rules = plugin_options("keyword_router").get("rules", DEFAULT_RULES)
    for keyword, domain in rules.items():
        if keyword in text:
            return RouteDecision(domain, None, "plugin", 1.0, detail=f"keyword_router: {keyword!r}")
    return None


@hookimpl
def register_routers(register):
    register(route_by_keyword)
