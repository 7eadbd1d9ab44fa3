"""`glmbot demo`: the product in two minutes on the builtin base, offline, on a CPU.

Loads the base, lets it greet, trains a support prefix with the configured recipe, shows how
the trained prefix (and an untrained one) change the answers, and that greetings survive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.cli.progress import TrainingProgress
from glmbot.model import PrefixEncoder, count_parameters
from glmbot.model.generate import generate_answers
from glmbot.training.data import encode_all, load_examples
from glmbot.training.trainer import PrefixTrainer, total_steps

GREETINGS = ["你好", "你是谁", "谢谢"]
SHOWN_QUESTIONS = 5


def demo(
    domain: Annotated[str, typer.Option(help="domain of glmbot.toml to train")] = "support",
    steps: Annotated[Optional[int], typer.Option(help="override [train] max_steps")] = None,
) -> None:
    """Load the base, train a prefix for DOMAIN, and compare answers before and after."""
    console = common.console
    settings = common.get_settings()
    started = time.perf_counter()
    model, tok = common.load_base_model()
    console.print(f"[bold]Base[/] {settings.model.base_model}: {count_parameters(model):,} parameters on "
                  f"{model.device}, loaded in {time.perf_counter() - started:.1f}s")

    console.rule("The plain base model chats")
    for q, a in zip(GREETINGS, generate_answers(model, tok, GREETINGS)):
        console.print(f"[cyan]问[/] {q}  [green]答[/] {a}")

    domain_cfg = _domain(settings, domain)
    examples = load_examples(domain_cfg.data, domain_cfg.format, domain_cfg.prompt_column,
                             domain_cfg.response_column, domain_cfg.history_column or None)
    train = settings.train_for(domain, max_steps=steps)
    encoded, summary = encode_all(tok, examples, train.max_source_length, train.max_target_length)
    console.rule(f"Training a P-Tuning v2 prefix for '{domain}'")
    console.print(f"{summary.samples} examples, {summary.answer_tokens:,} answer tokens; P={train.pre_seq_len}, "
                  f"projection={train.prefix_projection}, LR {train.learning_rate:g}, {train.max_steps} steps")
    run_dir = settings.path(settings.train.runs_dir) / f"demo-{domain}-{time.strftime('%Y%m%d-%H%M%S')}"
    with TrainingProgress(domain, total_steps(train, len(encoded))) as bar:
        result = PrefixTrainer(model, train, run_dir, tok.pad_token_id, on_step=bar.update).fit(encoded)
    console.print(f"trained in {result.seconds:.0f}s at {result.tokens_per_s:,.0f} tokens/s; loss "
                  f"{result.losses[0]:.2f} -> {sum(result.losses[-10:]) / len(result.losses[-10:]):.2f}; "
                  f"loss curve in {Path(run_dir) / 'loss.png'}")

    _compare(model, tok, examples, train, result.encoder)


def _domain(settings, name: str):
    from glmbot.errors import UnknownDomainError

    if name not in settings.domains:
        known = ", ".join(settings.domains) or "none"
        raise UnknownDomainError(f"domain {name!r} is not in {settings.source} (known: {known}); add a "
                                 f"[domains.{name}] table with its data file")
    return settings.domains[name]


def _compare(model, tok, examples, train, encoder: PrefixEncoder) -> None:
    console = common.console
    single = [e for e in examples if not e.history]
    questions = [e.prompt for e in single]
    trained_kv = encoder.kv().detach()
    torch.manual_seed(0)
    untrained_kv = PrefixEncoder(model.config, train.pre_seq_len, train.prefix_projection).kv().detach()
    trained = generate_answers(model, tok, questions, trained_kv)
    exact = sum(a == e.response.strip() for a, e in zip(trained, single))
    shown = questions[::max(1, len(questions) // SHOWN_QUESTIONS)][:SHOWN_QUESTIONS]
    plain = generate_answers(model, tok, shown)
    untrained = generate_answers(model, tok, shown, untrained_kv)
    table = Table(title="Training questions: answers before and after", show_lines=True)
    for col in ("question", "reference", "plain base", "untrained prefix", "trained prefix"):
        table.add_column(col, overflow="fold")
    for i, q in enumerate(shown):
        ref = single[questions.index(q)].response
        got = trained[questions.index(q)]
        table.add_row(q, ref, plain[i], untrained[i], f"[green]{got}[/]" if got == ref.strip() else got)
    console.print(table)
    console.print(f"[bold]{exact}/{len(single)}[/] single-turn training questions answered exactly as trained.")
    console.rule("General chat with and without the prefix")
    for q, base, tuned in zip(GREETINGS, generate_answers(model, tok, GREETINGS),
                              generate_answers(model, tok, GREETINGS, trained_kv)):
        console.print(f"[cyan]问[/] {q}  [green]base[/] {base}  [yellow]prefix[/] {tuned}")
    console.print("The router sends general chat like this to the plain base (`glmbot route`), so "
                  "a domain prefix never has to answer it.")
