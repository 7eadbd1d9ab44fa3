"""`glmbot train --domain D` and `glmbot eval REF | --predictions FILE`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.markup import escape
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.values import checked
from glmbot.errors import GlmbotError
from glmbot.serving.router import BASE
from glmbot.training.metrics import METRIC_KEYS

Opt = typer.Option


def _launch_torchrun(nproc: int) -> None:
    """Re-run this command under torchrun (the standard launcher) with `nproc` processes."""
    args = sys.argv[1:]
    if "--nproc" in args:  # "--nproc N": drop the value too
        i = args.index("--nproc")
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--nproc=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "glmbot",
           *args]
    common.console.print(f"launching: {' '.join(cmd[1:])}")
    os.execv(sys.executable, cmd)


def _init_distributed():
    """Join the process group torchrun set up; returns (rank, device)."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, device


# Each value is checked while parsing: a bad one names the flag, the value and the fix (values.py).
_STEPS = checked(("--steps", "--max-steps"), int, lambda v: v >= 0,
                 "a whole number of optimizer steps >= 0 (0 = train by --epochs)", "200")
_EPOCHS = checked("--epochs", float, lambda v: v >= 0, "a number of passes over the data >= 0", "3")
_LR = checked(("--lr", "--learning-rate"), float, lambda v: 0 < v < 1, "a learning rate between 0 and 1", "1e-1")
_PRE_SEQ_LEN = checked("--pre-seq-len", int, lambda v: v > 0, "a prefix length > 0", "32")
_BATCH = checked("--batch-size", int, lambda v: v > 0, "a micro-batch size > 0", "16")
_ACCUM = checked("--grad-accum", int, lambda v: v > 0, "a number of micro-batches per step > 0", "1")
_SEED = checked("--seed", int, lambda v: True, "a whole number", "42")
_EVERY = checked("--checkpoint-every", int, lambda v: v >= 0, "a number of steps >= 0 (0 = no checkpoints)", "100")
_NPROC = checked("--nproc", int, lambda v: v >= 1, "a number of processes >= 1", "2")


def train(
    domain: Annotated[str, Opt("--domain", "-d", help="business domain, e.g. support")],
    data: Annotated[Optional[str], Opt(
        help="training data, JSONL or CSV/TSV with a header row (default: the domain's data in glmbot.toml)")] = None,
    dev_data: Annotated[Optional[str], Opt(help="dev JSONL for ROUGE/BLEU")] = None,
    fmt: Annotated[Optional[str], Opt("--format", help="chat | advertisegen (default: read from the columns)")] = None,
    prompt_column: Annotated[Optional[str], Opt(help="name of the prompt column")] = None,
    response_column: Annotated[Optional[str], Opt(help="name of the answer column")] = None,
    history_column: Annotated[Optional[str], Opt(help="name of the history column")] = None,
    steps: Annotated[Optional[int], Opt("--steps", "--max-steps", parser=_STEPS, metavar="INTEGER",
                                        help="optimizer steps ([train] max_steps)")] = None,
    epochs: Annotated[Optional[float], Opt(parser=_EPOCHS, metavar="FLOAT", help="epochs, used when --steps 0")] = None,
    lr: Annotated[Optional[float], Opt("--lr", "--learning-rate", parser=_LR, metavar="FLOAT",
                                       help="learning rate")] = None,
    pre_seq_len: Annotated[Optional[int], Opt(parser=_PRE_SEQ_LEN, metavar="INTEGER", help="prefix length P")] = None,
    projection: Annotated[Optional[bool], Opt("--projection/--no-projection", help="prefix MLP")] = None,
    batch_size: Annotated[Optional[int], Opt(parser=_BATCH, metavar="INTEGER", help="micro-batch size")] = None,
    grad_accum: Annotated[Optional[int], Opt(parser=_ACCUM, metavar="INTEGER", help="micro-batches per step")] = None,
    gradient_checkpointing: Annotated[Optional[bool], Opt("--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    seed: Annotated[Optional[int], Opt(parser=_SEED, metavar="INTEGER", help="random seed")] = None,
    checkpoint_every: Annotated[Optional[int], Opt(parser=_EVERY, metavar="INTEGER",
                                                   help="steps between checkpoints")] = None,
    resume: Annotated[bool, Opt(help="continue the domain's interrupted run with its own plan (data, steps, "
                                     "settings)")] = False,
    run_dir: Annotated[Optional[Path], Opt(help="run folder (default runs/DOMAIN/TIMESTAMP)")] = None,
    promote: Annotated[str, Opt(metavar="[=force]", show_default=False, help=(
        "activate the new adapter if it learned and beats the active one on --metric; --promote=force: "
        "always (default: register it as a candidate only)"))] = "no",
    metric: Annotated[str, Opt(help=f"metric for --promote: {', '.join(METRIC_KEYS)}")] = "rouge-l",
    no_eval: Annotated[bool, Opt("--no-eval", help="skip the dev-set evaluation")] = False,
    nproc: Annotated[int, Opt(parser=_NPROC, metavar="INTEGER",
                              help="processes (GPUs) to train on, launched with torchrun")] = 1,
    quantize: common.QuantizeOpt = None,
) -> None:
    """Train a P-Tuning v2 prefix for DOMAIN, evaluate it, and register it as a candidate.

    Examples:

    \b
      glmbot train --domain support --promote
      glmbot train --domain hr --data hr.jsonl --steps 300
      glmbot train --domain hr --resume
    """
    from glmbot.training import pipeline

    if promote not in ("no", "better", "force"):
        raise GlmbotError(f"--promote={promote!r}: use --promote (if better) or --promote=force")
    if metric not in METRIC_KEYS:
        raise GlmbotError(f"--metric {metric!r} is not one of {', '.join(METRIC_KEYS)}")
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        _launch_torchrun(nproc)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, device = _init_distributed() if distributed else (0, None)
    common.use_quantization(quantize)
    settings, registry = common.get_settings(), common.get_registry()
    if rank == 0:
        pipeline.ensure_registered_domain(registry, settings, domain)
    data_flags = {"train": data, "dev": dev_data, "fmt": fmt, "prompt_column": prompt_column,
                  "response_column": response_column, "history_column": history_column}
    train_flags = {"max_steps": steps, "epochs": epochs, "learning_rate": lr, "pre_seq_len": pre_seq_len,
                   "prefix_projection": projection, "batch_size": batch_size, "grad_accum": grad_accum,
                   "gradient_checkpointing": gradient_checkpointing, "seed": seed, "checkpoint_every": checkpoint_every}
    spec, tsettings, run_dir = _plan(settings, domain, resume, run_dir, data_flags, train_flags)
    model, tok = _model(device)
    job = pipeline.prepare(tok, settings, domain, spec, tsettings,
                           _shared_run_dir(settings, domain, run_dir, distributed))
    if rank == 0:
        _print_summary(job, settings.model.base_model)
    outcome = _run(model, tok, registry, job, resume, promote, metric, not no_eval, quiet=rank != 0)
    if rank == 0:
        _print_outcome(outcome, job)


def _plan(settings, domain: str, resume: bool, run_dir: Path | None, data_flags: dict, train_flags: dict):
    """(data spec, train settings, run folder): the interrupted run's own plan on --resume, else config + flags."""
    from glmbot.training import pipeline
    from glmbot.training.plan import DataSpec, ResumeError, RunPlan

    if resume:
        run_dir = run_dir or pipeline.interrupted_run_dir(settings, domain)
        plan = RunPlan.read(run_dir)
        if (Path(run_dir) / pipeline.RUN_INFO_FILE).exists():
            raise ResumeError(f"{run_dir} finished and registered its adapter: nothing to resume; train a new run "
                              "without --resume")
        if plan.domain != domain:
            raise ResumeError(f"{run_dir} is a run of domain {plan.domain!r}, not {domain!r}; "
                              f"resume it with: glmbot train --domain {plan.domain} --resume --run-dir {run_dir}")
        plan.check_resume(run_dir, data_flags, train_flags, settings.model.base_model)
        return plan.data_spec(), plan.train, run_dir
    spec = DataSpec.for_domain(settings.domains.get(domain), settings.root, **data_flags)
    _check_configured_files(settings, domain, spec, data_flags)
    if train_flags["max_steps"] == 0 and not (train_flags["epochs"] or settings.train_for(domain).epochs):
        raise GlmbotError("--steps 0 trains by epochs, but no epochs are set: add --epochs N (e.g. --epochs 3) "
                          "or give --steps N")
    return spec, settings.train_for(domain, **train_flags), run_dir


def _check_configured_files(settings, domain: str, spec, data_flags: dict) -> None:
    """A data file glmbot.toml names that is gone: say where the path comes from and how to change it (a
    newcomer who had moved their file read only "data file moved.tsv does not exist")."""
    from glmbot.errors import DataError
    from glmbot.training.data import plugin_datasets

    for which, key, flag in (("train", "data", "--data"), ("dev", "dev_data", "--dev-data")):
        value = getattr(spec, which)
        if data_flags.get(which) is not None or not value or value.startswith("builtin:"):
            continue
        if Path(value).expanduser().is_file() or value in plugin_datasets():
            continue
        stored = getattr(settings.domains[domain], key)
        full = Path(stored).expanduser()
        full = full if full.is_absolute() else settings.root / full
        raise DataError(f"data file {full} does not exist ({key} = {stored!r} of [domains.{domain}] in "
                        f"{settings.source}); "
                        f"put the file back, or point the domain at where it is now: glmbot domains set {domain} "
                        f"{flag} FILE (.jsonl, .csv or .tsv)")


def _model(device):
    if device is None:
        return common.load_base_model()
    from glmbot.model import load_base

    m = common.get_settings().model
    return load_base(m.base_model, dtype=m.dtype, device=device, quantization=m.quantization)


def _shared_run_dir(settings, domain: str, run_dir: Path | None, distributed: bool) -> Path:
    """The run folder; under torchrun rank 0 picks it and every rank uses the same one."""
    import time

    if run_dir is None:
        run_dir = settings.path(settings.train.runs_dir) / domain / time.strftime("%Y%m%d-%H%M%S")
    if distributed:
        import torch.distributed as dist

        box = [str(run_dir)]
        dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    return Path(run_dir)


def _run(model, tok, registry, job, resume, promote, metric, evaluate, quiet):
    from glmbot.cli.progress import training_progress
    from glmbot.training import pipeline
    from glmbot.training.trainer import total_steps

    if quiet:
        return pipeline.run_job(model, tok, registry, job, resume=resume, promote=promote, metric=metric,
                                evaluate=evaluate)
    with training_progress(job.domain, total_steps(job.settings, len(job.encoded))) as bar:
        return pipeline.run_job(model, tok, registry, job, resume=resume, promote=promote, metric=metric,
                                evaluate=evaluate, on_step=bar.update)


FEW_EXAMPLES = 10  # fewer lines than this: a warning that the domain is barely described


def _print_summary(job, base_model: str) -> None:
    from glmbot.training.data import AUTO, conflicting_answers

    s, t, c = job.summary, job.settings, job.coverage
    table = Table(title=f"Training data for '{job.domain}'", show_header=False, box=None)
    for key, value in [
        ("source", f"{s.source} (sha256 {s.sha256[:12]})"), ("format", job.plan.columns.describe() + (", read from the columns" if job.data.fmt == AUTO else "")),
        ("samples", f"{s.samples:,}" + (f" + {job.reworded_rows:,} rewordings of their questions "
                                        f"(question_rewrites {t.question_rewrites})" if job.reworded_rows else "")
         + (f" + {job.history_rows:,} behind an earlier round (history_share {t.history_share:g})"
            if job.history_rows else "")),
        ("prompts truncated", f"{s.prompts_truncated} (max_source_length {t.max_source_length})"),
        ("answers truncated", f"{s.answers_truncated} (max_target_length {t.max_target_length})"),
        ("tokens", f"{s.prompt_tokens:,} prompt + {s.answer_tokens:,} answer; longest row {s.longest}"),
        ("not in vocabulary", f"{c.uncovered_chars} characters" + (
            f" (first: {c.first_uncovered}); {c.byte_share:.1%} of answer tokens are byte tokens"
            if c.uncovered_chars else "")),
        ("dev samples", f"{len(job.dev_examples)}"),
        ("recipe", f"P={t.pre_seq_len}, projection={t.prefix_projection}, LR {t.learning_rate:g}, "
                   f"{t.max_steps or f'{t.epochs:g} epochs'} steps x batch {t.batch_size} x accum {t.grad_accum}, "
                   f"seed {t.seed}"),
        ("run folder", str(job.run_dir)),
    ]:
        table.add_row(f"[bold]{key}[/]", escape(value))
    common.console.print(table)
    # AdvertiseGen's attribute keys come with several ad texts each, by design: only chat data is checked.
    twice = conflicting_answers(job.train_examples) if job.plan.columns.fmt == "chat" else []
    if twice:
        shown = "、".join(twice[:3]) + (" ..." if len(twice) > 3 else "")
        common.err_console.print(
            f"[bold yellow]warning:[/] {len(twice)} question(s) of the data have more than one answer ({escape(shown)}): "
            "the prefix learns a blend of them; keep one answer per question", highlight=False, soft_wrap=True)
    if s.samples < FEW_EXAMPLES:
        common.err_console.print(
            f"[bold yellow]warning:[/] only {s.samples} example(s): the prefix learns these questions and little "
            f"else; {FEW_EXAMPLES * 2}-40 lines, with the ways your users really ask, answer far more of them",
            highlight=False, soft_wrap=True)
    if c.too_low:
        common.err_console.print(
            f"[bold yellow]warning:[/] {c.byte_share:.1%} of the answer tokens are characters that {base_model}'s "
            f"tokenizer does not have ({escape(c.first_uncovered)} ...): they fall back to byte tokens the base never "
            f"learned, so {'the builtin base' if base_model.startswith('builtin:') else 'this base'} cannot learn "
            "them. Train on ChatGLM2-6B: in glmbot.toml set \\[model] base_model = \"THUDM/chatglm2-6b\" "
            "(or a local ChatGLM2-6B folder)", highlight=False, soft_wrap=True)


def _print_outcome(outcome, job) -> None:
    from glmbot.training.pipeline import NOT_LEARNED, not_learned_hint

    r, a, learning = outcome.result, outcome.adapter, outcome.learning
    common.console.print(f"trained {r.steps} steps in {r.seconds:.0f}s ({r.tokens_per_s:,.0f} tokens/s"
                         f"{f', resumed at step {r.resumed_from}' if r.resumed_from else ''}); "
                         f"loss curve: {r.run_dir / 'loss.png'}")
    if learning.learned:
        common.console.print(f"learned: {learning.describe()}")
    else:
        hint = "" if NOT_LEARNED in outcome.promote_reason else f"; {not_learned_hint(job.settings)}"
        common.err_console.print(f"[bold yellow]warning:[/] the prefix learned nothing: {learning.describe()}{hint}",
                                 highlight=False, soft_wrap=True)
    if outcome.evaluation:
        e = outcome.evaluation
        common.console.print("dev: " + ", ".join(f"{k} {v:.2f}" for k, v in e.metrics.items())
                             + f" on {e.count} samples; predictions in {e.predictions_path}")
    p = outcome.probe
    fallback = common.get_settings().routing.fallback
    if p is not None and p.forgot and fallback == BASE:
        # The usual case for the default recipe on a small base: the router keeps general chat away from
        # the prefix, so this is worth knowing, not alarming (a newcomer read the learning-rate advice once
        # printed here after a good run as a warning).
        configured = common.get_settings().train_for(job.domain).learning_rate
        advice = (f"; to keep more: {p.hint}; this run's --lr was {job.settings.learning_rate:g}, "
                  f"the recipe's {configured:g}" if job.settings.learning_rate > configured else "")
        common.console.print(f"general chat: routed to the plain base, as usual (alone, this prefix keeps "
                             f"{p.kept:.0%} of the base's general answers: expected of a prefix that learned its "
                             f"domain; it shows only when a general question other than small talk is asked under "
                             f"--domain {job.domain}{advice})", highlight=False, soft_wrap=True)
    elif p is not None and p.forgot:
        common.err_console.print(f"[bold yellow]warning:[/] the prefix wrecks general chat (answers kept "
                                 f"{p.kept:.0%}, reference score {p.reference_score_base:.2f} -> "
                                 f"{p.reference_score_tuned:.2f}): {p.hint}; this run's --lr was "
                                 f"{job.settings.learning_rate:g}. routing.fallback is {fallback!r}, not the plain "
                                 "base, so general chat can reach a prefix.", highlight=False, soft_wrap=True)
    elif p is not None:
        common.console.print(f"forgetting probe: general answers kept {p.kept:.0%} (ok)")
    common.console.print(f"registered [bold]{a.ref}[/] (candidate, id {a.id})"
                         + (f"; promoted: {outcome.promote_reason}" if outcome.promoted
                            else f"; not promoted: {outcome.promote_reason}"), highlight=False, soft_wrap=True)
