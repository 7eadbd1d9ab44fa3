"""`glmbot adapters ...`: list, inspect, promote, roll back, import, export, verify and clean adapters.

Command bodies parse, call `Registry`, print. Library errors propagate: the main app turns them
into one-line messages and exit code 1.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.common import JsonOpt
from glmbot.errors import RegistryError

EXAMPLES = """Examples:

\b
  glmbot adapters list
  glmbot adapters show support --json
  glmbot adapters promote support@v3
"""

app = typer.Typer(cls=common.HelpGroup, epilog=EXAMPLES, no_args_is_help=True,
                  help="Registered P-Tuning v2 adapters (one versioned prefix family per domain).")

STATUS_STYLE = {"active": "bold green", "candidate": "yellow", "archived": "dim"}
Ref = Annotated[str, typer.Argument(help="DOMAIN (its active adapter), DOMAIN@vN, or an adapter id",
                                    show_default=False)]


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # not reached


def age(when: datetime | None, now: datetime | None = None) -> str:
    """'42s', '5m', '3h', '12d' ago."""
    if when is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - when).total_seconds()))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit}"
    return f"{seconds}s"


# Shown first when an adapter has more metrics than fit: dev-set scores, then (a domain without dev data) the training questions' ROUGE-L and
# whether the prefix learned them; the rest is counted ("(+3)") and in `adapters show`.
KEY_METRICS = ("rouge-l", "bleu-4", "train_rouge-l", "learned", "probe_kept", "rouge-1", "rouge-2")


def format_metrics(metrics: dict[str, float], limit: int = 3) -> str:
    """The first `limit` metrics, those that say most first, in words where a number would puzzle:
    "learned yes", and the forgetting probe as "general chat kept 16%" (`glmbot train` prints the
    same share; probe_forgot, its 0/1 verdict, is left to --json)."""
    metrics = {k: v for k, v in metrics.items() if not (k == "probe_forgot" and "probe_kept" in metrics)}
    order = sorted(metrics, key=lambda n: (KEY_METRICS.index(n) if n in KEY_METRICS else len(KEY_METRICS), n))
    from glmbot.training.metrics import METRIC_LABELS, metric_words

    shown = [f"{METRIC_LABELS.get(name, name)} {metric_words(name, metrics[name]) or f'{metrics[name]:.4g}'}"
             for name in order[:limit]]
    more = len(metrics) - limit
    return ", ".join(shown) + (f" (+{more})" if more > 0 else "") if shown else "-"


def status_text(status: str, damage: str | None = None) -> str:
    """'active', or 'active DAMAGED' for a version whose files failed their check."""
    return f"[{STATUS_STYLE.get(status, '')}]{status}[/]" + (" [bold red]DAMAGED[/]" if damage else "")


def iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def adapter_json(a) -> dict:  # noqa: ANN001 - glmbot.registry.AdapterInfo
    """The stable `--json` fields of an adapter (docs/CLI.md)."""
    return {"id": a.id, "ref": a.ref, "domain": a.domain, "version": a.version, "status": a.status,
            "pre_seq_len": a.pre_seq_len, "prefix_projection": a.prefix_projection, "dtype": a.dtype,
            "base_model": a.base_model, "base_fingerprint": a.base_fingerprint, "source": a.source,
            "metrics": a.metrics, "size_bytes": a.size_bytes, "path": str(a.path), "files": a.files,
            "dataset_sha256": a.dataset_sha256, "sample_count": a.sample_count, "hyperparams": a.hyperparams,
            "provenance": a.provenance, "created_at": iso(a.created_at), "activated_at": iso(a.activated_at),
            "damage": a.damage, "damaged_at": iso(a.damaged_at)}


Status = Literal["candidate", "active", "archived"]  # glmbot.registry.states.STATUSES


@app.command("list")
def list_adapters(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="only this domain")] = None,
    status: Annotated[Status | None, typer.Option("--status", "-s", help="only this status")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List adapters: domain, version, status, P, metrics, size, age.

    Examples:

    \b
      glmbot adapters list
      glmbot adapters list --domain support --status active
      glmbot adapters list --json
    """
    if domain is not None:
        common.require_domain(domain)
    registry = common.get_registry()
    # A domain of glmbot.toml enters the registry with its first adapter: until then it has none.
    registered = domain is None or domain in {d.name for d in registry.list_domains()}
    adapters = registry.list_adapters(domain, status) if registered else []
    if as_json:
        common.print_json([adapter_json(a) for a in adapters])
        return
    if not adapters:
        which = domain or "DOMAIN"
        common.console.print(f"No adapters registered{f' for {domain}' if domain else ''} yet. Train one (glmbot "
                             f"train --domain {which}) or import one (glmbot adapters import PATH --domain {which}).",
                             highlight=False)
        return
    table = Table(title="Adapters", header_style="bold")
    for column, justify in (("domain", "left"), ("version", "right"), ("status", "left"), ("P", "right"),
                            ("metrics", "left"), ("size", "right"), ("age", "right"), ("id", "right")):
        table.add_column(column, justify=justify)
    for a in adapters:
        table.add_row(a.domain, f"v{a.version}", status_text(a.status, a.damage), str(a.pre_seq_len),
                      format_metrics(a.metrics), human_size(a.size_bytes), age(a.created_at), str(a.id))
    common.console.print(table)
    for a in (a for a in adapters if a.damage):
        rollback = f"glmbot adapters rollback {a.domain}, or " if a.is_active else ""
        common.console.print(f"[bold red]DAMAGED[/] {a.ref}: {a.damage} (found {age(a.damaged_at)} ago); routed "
                             f"requests skip it. Fix: {rollback}restore its files and run glmbot adapters verify "
                             f"{a.ref}", highlight=False)


@app.command("show")
def show(ref: Ref, as_json: JsonOpt = False) -> None:
    """Everything the registry knows about one adapter.

    Examples:

    \b
      glmbot adapters show support          # the active support adapter
      glmbot adapters show support@v2
      glmbot adapters show 7 --json         # by id
    """
    from glmbot.registry.refs import parse_ref

    if (domain := parse_ref(ref).domain) is not None:
        common.require_domain(domain)
    registry = common.get_registry()
    a = registry.resolve(ref)
    if as_json:
        evaluations = [{"kind": e.kind, "metrics": e.metrics, "dataset_sha256": e.dataset_sha256,
                        "created_at": iso(e.created_at)} for e in registry.evaluations(a.id)]
        pushes = [{"repo": p.repo, "revision": p.revision, "commit_sha": p.commit_sha, "tag": p.tag,
                   "pushed_at": iso(p.pushed_at)} for p in registry.pushes(a.id)]
        common.print_json({**adapter_json(a), "evaluations": evaluations, "hub_pushes": pushes})
        return
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    rows = [("adapter", f"{a.ref} (id {a.id})"), ("status", status_text(a.status, a.damage)), ("path", str(a.path)),
            ("damage", f"{a.damage} (found {age(a.damaged_at)} ago)" if a.damage else "-"),
            ("base model", a.base_model), ("base fingerprint", a.base_fingerprint),
            ("prefix length P", str(a.pre_seq_len)), ("prefix projection", "yes" if a.prefix_projection else "no"),
            ("dtype", a.dtype), ("size", human_size(a.size_bytes)), ("source", a.source),
            ("created", f"{a.created_at:%Y-%m-%d %H:%M:%S} UTC ({age(a.created_at)} ago)"),
            ("activated", f"{a.activated_at:%Y-%m-%d %H:%M:%S} UTC" if a.activated_at else "-"),
            ("dataset", f"{a.dataset_sha256 or '-'} ({a.sample_count if a.sample_count is not None else '?'} samples)"),
            ("hyper-parameters", ", ".join(f"{k}={v}" for k, v in sorted(a.hyperparams.items())) or "-"),
            ("provenance", ", ".join(f"{k}={v}" for k, v in sorted(a.provenance.items())) or "-"),
            ("metrics", format_metrics(a.metrics, limit=20))]
    for key, value in rows:
        facts.add_row(key, value)
    common.console.print(facts)
    files = Table("file", "sha256", title="Files", header_style="bold")
    for name, sha in sorted(a.files.items()):
        files.add_row(name, sha)
    common.console.print(files)
    evaluations = registry.evaluations(a.id)
    if evaluations:
        table = Table("kind", "metrics", "dataset sha256", "age", title="Evaluations", header_style="bold")
        for e in evaluations:
            table.add_row(e.kind, format_metrics(e.metrics, limit=20), (e.dataset_sha256 or "-")[:16],
                          age(e.created_at))
        common.console.print(table)
    pushes = registry.pushes(a.id)
    if pushes:
        table = Table("repo", "branch", "commit", "tag", "age", title="Hub pushes", header_style="bold")
        for p in pushes:
            table.add_row(p.repo, p.revision, p.commit_sha[:12], p.tag or "-", age(p.pushed_at))
        common.console.print(table)


@app.command("promote")
def promote(ref: Ref, force: Annotated[bool, typer.Option(
        "--force", help="promote even a version whose training found it learned nothing")] = False) -> None:
    """Make REF the active adapter of its domain (the previous one is archived).

    A version whose training found that it learned nothing is refused without --force.

    Examples:

    \b
      glmbot adapters promote support@v3
      glmbot adapters promote 7
    """
    from glmbot.training.metrics import learned_nothing

    registry = common.get_registry()
    candidate = registry.resolve(ref)
    why = learned_nothing(candidate.ref, candidate.metrics)
    if why and not force:
        raise RegistryError(f"{why}; retrain it (glmbot train --domain {candidate.domain}), or promote it anyway "
                            f"with: glmbot adapters promote {candidate.ref} --force")
    a = registry.promote(ref)
    common.console.print(f"{a.ref} is now the active adapter of [bold]{a.domain}[/] "
                         f"(undo with: glmbot adapters rollback {a.domain}).")


@app.command("rollback")
def rollback(domain: Annotated[str, typer.Argument(help="the domain to roll back", show_default=False)]) -> None:
    """Re-activate the version that was active before the current one.

    Examples:

    \b
      glmbot adapters rollback support
    """
    a = common.get_registry().rollback(domain)
    common.console.print(f"Rolled back [bold]{domain}[/]: {a.ref} is active again.")


@app.command("archive")
def archive(ref: Ref) -> None:
    """Retire an adapter (kept on disk; promote brings it back).

    Examples:

    \b
      glmbot adapters archive support@v1
    """
    registry = common.get_registry()
    a = registry.archive(ref)
    common.console.print(f"Archived {a.ref}.")
    if not registry.list_adapters(a.domain, status="active"):
        common.console.print(f"{a.domain} has no active adapter now: its questions go to other domains or the plain "
                             f"base. Serve it again with: glmbot adapters promote {a.domain}@vN", highlight=False)


@app.command("rm")
def remove(
    ref: Ref,
    force: Annotated[bool, typer.Option("--force", "-f", help="also remove the active adapter")] = False,
) -> None:
    """Delete an adapter's row, evaluations and files.

    Examples:

    \b
      glmbot adapters rm support@v1
      glmbot adapters rm support --force    # even the active one
    """
    a = common.get_registry().remove(ref, force=force)
    common.console.print(f"Removed {a.ref} ({human_size(a.size_bytes)} freed).")


@app.command("import")
def import_adapter(
    path: Annotated[Path, typer.Argument(help="official checkpoint-N folder, or an exported glmbot adapter folder",
                                         show_default=False)],
    domain: Annotated[str, typer.Option("--domain", "-d", help="register it under this domain", show_default=False)],
    create_domain: Annotated[bool, typer.Option("--create-domain", help="create the domain if missing")] = False,
    allow_base_mismatch: Annotated[bool, typer.Option(
        "--allow-base-mismatch", help="import a prefix trained on another base of the same shape")] = False,
) -> None:
    """Register a prefix from a folder as a new candidate version of DOMAIN.

    PATH is an official P-Tuning v2 checkpoint-N folder or a folder written by
    glmbot adapters export.

    Examples:

    \b
      glmbot adapters import output/adgen-chatglm2-6b-pt-128-2e-2/checkpoint-3000 --domain ads
      glmbot adapters import exported/support-v3 --domain support --create-domain
    """
    from glmbot.model.fingerprint import base_fingerprint

    model, _tokenizer = common.load_base_model()
    a = common.get_registry().import_path(
        path, domain, config=model.config, base_model=common.get_settings().model.base_model,
        base_fingerprint=base_fingerprint(model), create_domain=create_domain, allow_base_mismatch=allow_base_mismatch)
    common.console.print(f"Imported {path} as {a.ref} (candidate, P={a.pre_seq_len}); make it live with: "
                         f"glmbot adapters promote {a.ref}")


@app.command("export")
def export(ref: Ref, dest: Annotated[Path, typer.Argument(help="a new folder", show_default=False)]) -> None:
    """Copy an adapter's verified files into a new folder.

    The folder holds the weights, adapter_config.json, the model card and metrics;
    glmbot adapters import reads it back.

    Examples:

    \b
      glmbot adapters export support@v3 exported/support-v3
    """
    registry = common.get_registry()
    out = registry.export(ref, dest)
    common.console.print(f"Exported {registry.resolve(ref).ref} to {out} ({len(list(out.iterdir()))} files); "
                         "import it elsewhere with: glmbot adapters import PATH --domain DOMAIN")


@app.command("verify")
def verify(ref: Annotated[str | None, typer.Argument(help="one adapter (default: all)", show_default=False)] = None,
           ) -> None:
    """Re-hash stored files against the registry; exit code 1 when any differs.

    Damaged versions are marked in the registry; intact ones lose an earlier mark.

    Examples:

    \b
      glmbot adapters verify
      glmbot adapters verify support@v3
    """
    results = common.get_registry().verify(ref)
    bad = [r for r in results if not r.ok]
    for r in bad:
        for problem in r.problems:
            common.err_console.print(f"[red]MISMATCH[/] {r.adapter.ref}: {problem.describe()}")
    summary = f"{len(results) - len(bad)} of {len(results)} adapter(s) intact"
    if bad:
        common.err_console.print(f"{summary}; fix: restore the files from an export, roll an active damaged version "
                                 "back (glmbot adapters rollback DOMAIN), or remove the damaged version (glmbot "
                                 "adapters rm REF --force) and register it again")
        raise typer.Exit(1)
    common.console.print(f"[green]OK[/] {summary}.")


@app.command("gc")
def gc() -> None:
    """Remove adapter folders no registry row points to (crash leftovers).

    Examples:

    \b
      glmbot adapters gc
    """
    removed = common.get_registry().gc()
    for path in removed:
        common.console.print(f"removed {path}")
    common.console.print(f"Removed {len(removed)} folder(s)." if removed else "Nothing to clean.")
