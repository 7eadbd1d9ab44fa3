"""`glmbot push REF --repo ORG/NAME` and `glmbot pull ORG/NAME[@REVISION]`: adapters through the Hugging Face Hub.

Command bodies parse, call `glmbot.integrations.hub`, print. Library errors propagate: the main app
turns them into one-line messages and exit code 1. The Hub token is never printed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from glmbot.cli import common
from glmbot.errors import GlmbotError

Ref = Annotated[str, typer.Argument(help="DOMAIN (its active adapter), DOMAIN@vN, or an adapter id",
                                    show_default=False)]
# `glmbot --promote` without a value arrives here as "better" (cli.main completes bare --promote).
PROMOTE_VALUES = ("no", "better", "force")


def push(
    ref: Ref,
    repo: Annotated[str, typer.Option("--repo", metavar="ORG/NAME", help="Hub model repo ORG/NAME (created if missing)",
                                      show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="create the repo private")] = False,
    revision: Annotated[str | None, typer.Option("--revision", metavar="BRANCH", show_default=False,
                                                    help="branch to commit to (default main)")] = None,
    tag: Annotated[str | None, typer.Option("--tag", metavar="TAG", help="tag the new commit, e.g. v3",
                                               show_default=False)] = None,
) -> None:
    """Upload an adapter to a Hugging Face Hub repo.

    The weights, adapter_config.json, metrics and model card go up in one commit; log in
    first (hf auth login, or HF_TOKEN).

    Examples:

    \b
      glmbot push support --repo my-org/glmbot-support
      glmbot push support@v3 --repo my-org/glmbot-support --tag v3 --private
    """
    from glmbot.integrations.hub import push_adapter

    result = push_adapter(common.get_registry(), ref, repo, private=private, revision=revision, tag=tag)
    where = f"branch {result.revision}, commit {result.commit_sha[:12]}" + (f", tag {result.tag}" if result.tag else "")
    common.console.print(f"Pushed {result.adapter.ref} to {result.repo} ({where}): {result.url}")
    common.console.print(f"Pull it elsewhere with: glmbot pull {result.repo}@{result.tag or result.commit_sha[:12]}",
                         highlight=False)


def pull(
    spec: Annotated[str, typer.Argument(metavar="ORG/NAME[@REVISION]", help="Hub repo, optionally @branch, @tag or "
                                        "@commit (default main)", show_default=False)],
    domain: common.DomainOpt = None,
    promote: Annotated[str, typer.Option("--promote", metavar="", help="make it its domain's active adapter",
                                         show_default=False)] = "no",
    allow_base_mismatch: Annotated[bool, typer.Option(
        "--allow-base-mismatch", help="accept a prefix trained on other weights of the same architecture")] = False,
) -> None:
    """Download an adapter from the Hub and register it as a candidate.

    Only safetensors weights are read, and the prefix must fit the configured base.

    Examples:

    \b
      glmbot pull my-org/glmbot-support
      glmbot pull my-org/glmbot-support@v3 --promote
      glmbot pull my-org/glmbot-support --domain support-eu
    """
    from glmbot.integrations.hub import download_adapter, register_pulled
    from glmbot.registry import check_domain_name

    if promote not in PROMOTE_VALUES:
        raise GlmbotError(f"--promote takes no value, got {promote!r}: write just --promote (make the pulled "
                          "adapter active)")
    if domain is not None:
        check_domain_name(domain)
    snapshot = download_adapter(spec)  # the base model loads only once there is something to register
    result = register_pulled(common.get_registry(), snapshot, load_base=lambda: common.load_base_model()[0],
                             base_model=common.get_settings().model.base_model, domain=domain,
                             promote=promote != "no", allow_base_mismatch=allow_base_mismatch)
    a, commit = result.adapter, result.commit_sha[:12]
    if result.already_registered:
        common.console.print(f"{result.repo}@{result.revision} (commit {commit}) is already registered as {a.ref} "
                             f"(id {a.id}); nothing registered.", highlight=False)
    else:
        common.console.print(f"Pulled {result.repo}@{result.revision} (commit {commit}) as {a.ref} (id {a.id}).",
                             highlight=False)
    if result.promoted:
        common.console.print(f"{a.ref} is the active adapter of [bold]{a.domain}[/] (undo with: glmbot adapters "
                             f"rollback {a.domain}).")
    elif not a.is_active:
        common.console.print(f"It is a candidate; make it live with: glmbot adapters promote {a.ref}")
