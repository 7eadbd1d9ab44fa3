"""`glmbot eval REF | --predictions FILE`: score an adapter (or the plain base), or a predictions file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.common import JsonOpt
from glmbot.errors import GlmbotError

Opt = typer.Option


def evaluate(
    ref: Annotated[Optional[str], typer.Argument(
        help="adapter (support, support@v3, an id) or 'base' for the plain model", show_default=False)] = None,
    data: Annotated[Optional[str], Opt(metavar="FILE", help="JSONL to evaluate on (default: the domain's "
                                       "dev_data in glmbot.toml), or builtin:NAME")] = None,
    fmt: Annotated[Optional[str], Opt("--format", metavar="chat|advertisegen",
                                      help="layout of --data (default: the domain's)")] = None,
    predictions: Annotated[Optional[Path], Opt(metavar="FILE",
                                               help="score an existing {labels, predict} JSONL instead")] = None,
    limit: Annotated[int, Opt(min=1, help="evaluate at most this many samples")] = 200,
    save: Annotated[bool, Opt("--save/--no-save", help="store the results in the registry")] = True,
    as_json: JsonOpt = False,
    quantize: common.QuantizeOpt = None,
) -> None:
    """Score an adapter (ROUGE-1/2/L, BLEU-4 and the forgetting probe), or a predictions file.

    Examples:

    \b
      glmbot eval support                      # the active support adapter on its dev data
      glmbot eval support@v2 --data dev.jsonl --limit 50
      glmbot eval base --data builtin:support  # the plain model, for comparison
      glmbot eval --predictions runs/support/20240101-120000/generated_predictions.jsonl
      glmbot eval support --json --no-save
    """
    from glmbot.training.metrics import score_predictions_file

    common.use_quantization(quantize)

    if predictions is not None:
        if ref is not None:
            raise GlmbotError(f"give either REF ({ref!r}) or --predictions {predictions}, not both")
        metrics, count = score_predictions_file(predictions)
        report = {"ref": None, "adapter": None, "data": str(predictions), "samples": count, "metrics": metrics,
                  "probe": None, "saved": False}
    elif ref is None:
        raise GlmbotError("name what to evaluate: glmbot eval support@v2 (or 'base'), "
                          "or glmbot eval --predictions FILE")
    else:
        report = _evaluate_ref(ref, data, fmt, limit, save)
    if as_json:
        common.print_json(report)
        return
    _print_report(report)


def _evaluate_ref(ref: str, data: str | None, fmt: str | None, limit: int, save: bool) -> dict:
    from glmbot.model.prefix_io import prefix_encoder_from_state
    from glmbot.training.data import file_sha256, resolve_data_path
    from glmbot.training.evaluate import evaluate_prefix, forgetting_probe
    from glmbot.training.plan import DataSpec, config_data_path

    settings, registry = common.get_settings(), common.get_registry()
    adapter = None if ref == "base" else registry.resolve(ref)
    domain_cfg = settings.domains.get(adapter.domain) if adapter else None
    if data is None and (domain_cfg is None or not domain_cfg.dev_data):
        where = f"domain {adapter.domain!r} has no dev_data in {settings.source}" if adapter else "'base' has no data"
        raise GlmbotError(f"nothing to evaluate {ref} on: {where}; pass --data FILE.jsonl (or builtin:support)")
    spec = DataSpec.for_domain(domain_cfg, settings.root, train=data or config_data_path(domain_cfg.dev_data, settings.root),
                               fmt=fmt)
    examples = spec.load("train")[:limit]
    model, tok = common.load_base_model()
    kv = None
    if adapter is not None:
        state, adapter = registry.load_prefix_state(adapter.id)
        kv = prefix_encoder_from_state(state, model.config, adapter.ref).to(model.device).kv(model.dtype).detach()
    result = evaluate_prefix(model, tok, kv, examples)
    report = {"ref": adapter.ref if adapter else "base", "adapter": adapter.id if adapter else None,
              "data": str(spec.train), "samples": result.count, "metrics": result.metrics, "probe": None,
              "saved": False}
    if adapter is not None:
        probe = forgetting_probe(model, tok, kv)
        report["probe"] = {"kept": probe.kept, "forgot": probe.forgot, "hint": probe.hint}
        if save:
            registry.add_evaluation(adapter.id, {**result.metrics, "probe_kept": round(probe.kept, 4)},
                                    file_sha256(resolve_data_path(spec.train)), kind=evaluation_kind(spec.train))
            report["saved"] = True
    return report


def evaluation_kind(source: str) -> str:
    """The registry's short name of an evaluation set: builtin:NAME, else the file's name (32 characters at most)."""
    return (source if source.startswith("builtin:") else Path(source).name)[:32]


def _print_report(report: dict) -> None:
    title = f"{report['ref']} on {report['data']}" if report["ref"] else report["data"]
    table = Table(title=f"{title} ({report['samples']} samples)")
    for key in report["metrics"]:
        table.add_column(key, justify="right")
    table.add_row(*(f"{v:.2f}" for v in report["metrics"].values()))
    common.console.print(table)
    probe = report["probe"]
    if probe is not None:
        common.console.print(f"forgetting probe: general answers kept {probe['kept']:.0%}"
                             + (f" [bold yellow]- forgot general chat: {probe['hint']}[/]" if probe["forgot"] else ""))
    if report["saved"]:
        common.console.print(f"stored in the registry for {report['ref']}")
