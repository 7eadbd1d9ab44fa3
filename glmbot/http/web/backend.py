"""What the web pages ask of glmbot: the same engine and registry as every other surface, no gradio here.

The pages (chat.py, adapters.py) only lay out components and call this. Reads go through the
registry API, writes (promote, rollback, archive) too; answers come from the shared engine, so a
browser's turn shares batches with the HTTP API's requests and lands in the same conversation log.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmbot.errors import GlmbotError
from glmbot.http.schemas import AUTO
from glmbot.serving.prompts import build_prompt, engine_family
from glmbot.serving.requests import GenerationRequest, GenerationResult
from glmbot.serving.router import BASE
from glmbot.serving.turn_log import new_conversation_id
from glmbot.training.metrics import METRIC_LABELS, learned_nothing, metric_words

# The columns of the versions table, and the metrics shown in it: the official P-Tuning v2 evaluation's
# ROUGE/BLEU on dev data, the training questions' ROUGE-L and whether the prefix learned them (a domain
# without dev data had empty columns), then the forgetting probe's share of general answers kept, in the
# words `glmbot adapters list` uses (a newcomer read "learned 1, probe_kept 0.1738").
METRICS = ("rouge-l", "bleu-4", "train_rouge-l", "learned", "probe_kept")
VERSION_COLUMNS = ("version", "status", *(METRIC_LABELS.get(m, m) for m in METRICS), "P", "created", "weights sha256")


def _metric_cells(metrics: dict[str, float]) -> list[Any]:
    return [None if metrics.get(m) is None else (metric_words(m, metrics[m]) or metrics[m]) for m in METRICS]
ACTIONS = ("promote", "rollback", "archive")


def supports_system_role(engine: Any) -> bool:
    """Whether the base has a native system turn: the base family's `native_system` flag (ChatGLM3,
    GLM-4), read from the engine's tokenizer; False when the base does not say (ChatGLM2)."""
    family = getattr(getattr(engine, "tokenizer", None), "family", None)
    return bool(getattr(family, "native_system", False))


@dataclass(frozen=True)
class Reply:
    """One streamed step of an answer: the text so far, and the engine's result once it ended."""

    text: str
    result: GenerationResult | None = None


def route_note(result: GenerationResult) -> str:
    """'adapter support@v2 · route keyword (score 1.00): 退货' — shown under each answer."""
    route = result.route
    adapter = result.adapter or "plain base"
    if route is None:
        return f"adapter {adapter}"
    detail = f": {route.detail}" if route.detail else ""
    return f"adapter {adapter} · route {route.reason} (score {route.score:.2f}){detail}"


class WebBackend:
    def __init__(self, engine: Any, registry: Any, settings: Any, turn_logger: Any = None):
        self.engine, self.registry, self.settings, self.turn_logger = engine, registry, settings, turn_logger

    # ---- chat -------------------------------------------------------------------------------------

    def targets(self) -> list[tuple[str, str]]:
        """(label, model) pairs for the domain picker: auto, base, each domain, then each named version."""
        choices = [("auto-routed", AUTO), ("plain base model", BASE)]
        if self.registry is None:
            return choices
        adapters = sorted(self.registry.list_adapters(), key=lambda a: (a.domain, a.version))
        for domain in sorted({a.domain for a in adapters if a.is_active}):
            active = next(a for a in adapters if a.domain == domain and a.is_active)
            choices.append((f"{domain} (active v{active.version})", domain))
        choices += [(f"{a.ref} ({a.status})", a.ref) for a in adapters if a.status != "archived"]
        return choices

    async def stream_reply(self, message: str, history: Sequence[tuple[str, str]], model: str,
                           system: str = "", conversation_id: str | None = None) -> AsyncIterator[Reply]:
        """The answer to `message` after `history`, text growing piece by piece, then the result."""
        messages = [{"role": "system", "content": system}] if system.strip() else []
        for query, answer in history:
            messages += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": message})
        target = {"adapter": model} if "@" in model else {"domain": None if model == AUTO else model}
        request = GenerationRequest(messages=messages, conversation_id=conversation_id or new_conversation_id(),
                                    **target)
        request.max_new_tokens = await asyncio.to_thread(self._budget, request)
        handle = self.engine.submit(request)
        text = ""
        try:
            async for delta in handle.astream():
                text += delta
                yield Reply(text)
        finally:
            if not handle.done:
                handle.cancel()  # the page went away mid-answer
        result = handle.result()
        if self.turn_logger is not None:
            await asyncio.to_thread(self.turn_logger.record_turn, request, result)
        yield Reply(result.text, result)

    def _budget(self, request: GenerationRequest) -> int:
        """[generation] max_new_tokens, or less when the conversation leaves less of the context."""
        _, _, prompt = build_prompt(request, self.engine.tokenizer, engine_family(self.engine))
        return max(1, min(self.settings.generation.max_new_tokens, self.engine.max_len - len(prompt)))

    def conversations(self, limit: int = 50) -> list[list[Any]]:
        if self.registry is None:
            return []
        return [[c.id, c.source, c.turns, c.started_at.strftime("%Y-%m-%d %H:%M"), c.title]
                for c in self.registry.list_conversations(limit)]

    def conversation(self, conversation_id: str) -> list[list[Any]]:
        return [[t.created_at.strftime("%H:%M:%S"), t.query, t.answer, t.adapter or "plain base",
                 t.route_reason or "-", None if t.route_score is None else round(t.route_score, 3)]
                for t in self.registry.conversation_turns(conversation_id)]

    # ---- teaching a wrongly answered question ------------------------------------------------------

    def teach_domains(self) -> list[str]:
        """Domains whose data is a file of the user's own, which a taught example can be added to."""
        from glmbot.training.teach import teachable_domains

        return teachable_domains(self.settings)

    def teach_candidates(self, question: str, given: str) -> list[tuple[str, str]]:
        """(domain, answer) of the data's answers closest to `question` (and to the `given` answer)."""
        from glmbot.training.teach import Teacher

        return [(c.domain, c.response) for c in Teacher(self.settings).candidates(question, given)]

    def teach(self, domain: str, question: str, answer: str) -> str:
        """Add `question` -> `answer` to `domain`'s data file; what happened (GlmbotError if refused)."""
        from glmbot.training.teach import Teacher

        added = Teacher(self.settings).add(domain, question, answer)
        retrain = f"`glmbot train --domain {domain} --promote`"
        if added.already:
            return (f"{added.path.name} has it already (example {added.line}); retrain if the adapter is older: "
                    f"{retrain}")
        return (f"Added to {added.path.name} (example {added.line}, {added.examples} in all). "
                f"The prefix learns it when you retrain: {retrain}")

    # ---- adapters ---------------------------------------------------------------------------------

    def domains(self) -> list[str]:
        return [d.name for d in self.registry.list_domains()] if self.registry is not None else []

    def versions(self, domain: str) -> list[list[Any]]:
        """One row per version of `domain` (VERSION_COLUMNS), newest first."""
        rows = []
        for a in sorted(self.registry.list_adapters(domain), key=lambda a: -a.version):
            weights = next((sha for name, sha in sorted(a.files.items()) if name.endswith(".safetensors")), "")
            rows.append([a.ref, a.status + (" (damaged)" if a.damage else ""),
                         *_metric_cells(a.metrics), a.pre_seq_len,
                         a.created_at.strftime("%Y-%m-%d %H:%M") if a.created_at else "-", weights[:16]])
        return rows

    def refs(self, domain: str | None = None) -> list[str]:
        adapters = self.registry.list_adapters(domain) if self.registry is not None else []
        return [a.ref for a in sorted(adapters, key=lambda a: (a.domain, -a.version))]

    def details(self, ref: str) -> str:
        """Markdown: status, metrics, files with their sha256, provenance, hyperparameters, history."""
        a = self.registry.resolve(ref)
        lines = [f"### {a.ref} · {a.status}", "",
                 f"base `{a.base_model}` (`{a.base_fingerprint[:23]}`) · P = {a.pre_seq_len} · "
                 f"{a.sample_count or '-'} samples · data sha256 `{(a.dataset_sha256 or '-')[:16]}`"]
        if a.damage:
            lines += ["", f"**damaged**: {a.damage}"]
        lines += ["", "| metric | value |", "| --- | --- |",
                  *(f"| {k} | {v:.4g} |" for k, v in sorted(a.metrics.items()))]
        lines += ["", "| file | sha256 |", "| --- | --- |", *(f"| {n} | `{s}` |" for n, s in sorted(a.files.items()))]
        lines += ["", "provenance: " + (", ".join(f"{k} = `{v}`" for k, v in sorted(a.provenance.items())) or "-"),
                  "", "hyperparameters: " + (", ".join(f"{k} = {v}" for k, v in sorted(a.hyperparams.items()))
                                             or "-")]
        return "\n".join(lines)

    def loss_curve(self, ref: str) -> list[tuple[int, float]]:
        """(step, loss) of the run that trained `ref` (its loss.csv); [] when it has none (imported, pulled)."""
        run_dir = self.registry.resolve(ref).provenance.get("run_dir")
        path = Path(run_dir) / "loss.csv" if run_dir else None
        if path is None or not path.is_file():
            return []
        with open(path, encoding="utf-8") as f:
            return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]

    async def compare(self, refs: Sequence[str], question: str) -> list[str]:
        """The greedy answers of each of `refs` to `question`, generated together in one batch."""
        handles = [self.engine.submit(GenerationRequest(messages=[{"role": "user", "content": question}],
                                                        do_sample=False, **_target(ref))) for ref in refs]
        return [(await h.aresult()).text for h in handles]

    def act(self, action: str, ref: str) -> str:
        """promote REF / rollback REF's domain / archive REF; returns what happened (GlmbotError if refused)."""
        if action == "promote":
            return f"{self.registry.promote(ref).ref} is now active"
        if action == "rollback":
            return f"{self.registry.rollback(ref.partition('@')[0]).ref} is active again"
        if action == "archive":
            return f"{self.registry.archive(ref).ref} is archived"
        raise GlmbotError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")

    def action_question(self, action: str, ref: str) -> str:
        """The confirmation asked before `action` on `ref`, naming what it replaces."""
        domain = ref.partition("@")[0]
        active = next((a.ref for a in self.registry.list_adapters(domain, status="active")), None)
        if action == "promote":
            why = learned_nothing(ref, self.registry.resolve(ref).metrics)
            return (f"Promote {ref}? It replaces {active or 'no active version'} for every routed request of {domain}."
                    + (f" Careful: {why}." if why else ""))
        if action == "rollback":
            return f"Roll {domain} back from {active or '(none active)'} to the version active before it?"
        return f"Archive {ref}?" + (f" It is the active version: {domain} will have none." if active == ref else "")


def _target(ref: str) -> dict[str, str | None]:
    return {"adapter": ref} if "@" in ref else {"domain": ref}
