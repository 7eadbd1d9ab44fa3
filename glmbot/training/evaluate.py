"""Evaluation of a prefix: dev-set predictions scored the official way, whether it learned its
training data at all (compared with the plain base), and the forgetting probe."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from glmbot.fileio import atomic_write_text
from glmbot.model.generate import generate_answers
from glmbot.model.modeling import ChatGLMForConditionalGeneration
from glmbot.model.tokenizer import ChatGLMTokenizer
from glmbot.training.data import SAMPLES_DIR, Example
from glmbot.training.metrics import LEARNED_MIN_GAIN, ProbeResult, learned, probe_drift, score

PROBE_FILE = SAMPLES_DIR / "general_probe.jsonl"
PREDICTIONS_FILE = "generated_predictions.jsonl"
LEARNING_CHECK_FILE = "learning_check.jsonl"
LEARNING_CHECK_SAMPLES = 32  # training questions asked, spread over the file: enough for a stable mean, fast


@dataclass
class Evaluation:
    metrics: dict[str, float]
    count: int
    predictions: list[str]
    predictions_path: Path | None = None


def evaluate_prefix(model: ChatGLMForConditionalGeneration, tok: ChatGLMTokenizer, kv: torch.Tensor | None,
                    examples: list[Example], out_dir: Path | None = None, max_new_tokens: int = 128) -> Evaluation:
    """Greedy answers to `examples` with prefix `kv`, scored with ROUGE-1/2/L and BLEU-4.

    Predictions are written as `{"labels": ..., "predict": ...}` lines (the official
    generated_predictions.txt shape) so they can be re-scored or compared with other runs.
    """
    predictions = generate_answers(model, tok, [e.prompt for e in examples], kv,
                                   histories=[e.history for e in examples], max_new_tokens=max_new_tokens)
    references = [e.response for e in examples]
    path = None
    if out_dir is not None:
        path = Path(out_dir) / PREDICTIONS_FILE
        lines = (json.dumps({"labels": r, "predict": p}, ensure_ascii=False) for r, p in zip(references, predictions))
        atomic_write_text(path, "\n".join(lines) + "\n")
    return Evaluation(score(predictions, references), len(examples), predictions, path)


@dataclass(frozen=True)
class LearningCheck:
    """Greedy answers to training questions with and without the prefix, scored against the data's answers."""

    prefix_rouge_l: float
    base_rouge_l: float
    samples: int
    learned: bool  # metrics.learned: the prefix is LEARNED_MIN_GAIN points above the base (or near 100)
    total: int = 0  # training questions in the data (samples of them were asked, evenly spread)

    @property
    def gain(self) -> float:
        return self.prefix_rouge_l - self.base_rouge_l

    def describe(self) -> str:
        asked = f"{self.samples} of {self.total}" if self.total > self.samples else f"{self.samples}"
        return (f"ROUGE-L on {asked} training questions: prefix {self.prefix_rouge_l:.1f}, plain base "
                f"{self.base_rouge_l:.1f} ({self.gain:+.1f} over the plain base; {LEARNED_MIN_GAIN:g} or more counts "
                "as learned)")


def check_learning(model: ChatGLMForConditionalGeneration, tok: ChatGLMTokenizer, kv: torch.Tensor,
                   examples: list[Example], out_dir: Path | None = None, max_new_tokens: int = 128,
                   samples: int = LEARNING_CHECK_SAMPLES) -> LearningCheck:
    """Did the prefix learn `examples` (its training data)? Asks up to `samples` of them, evenly spread.

    Both answer sets are written to `out_dir/learning_check.jsonl` ({prompt, labels, base, prefix}).
    """
    picked = spread(examples, samples)
    prompts, histories = [e.prompt for e in picked], [e.history for e in picked]
    references = [e.response for e in picked]
    base = generate_answers(model, tok, prompts, None, histories=histories, max_new_tokens=max_new_tokens)
    tuned = generate_answers(model, tok, prompts, kv, histories=histories, max_new_tokens=max_new_tokens)
    if out_dir is not None:
        lines = (json.dumps({"prompt": p, "labels": r, "base": b, "prefix": t}, ensure_ascii=False)
                 for p, r, b, t in zip(prompts, references, base, tuned))
        atomic_write_text(Path(out_dir) / LEARNING_CHECK_FILE, "\n".join(lines) + "\n")
    prefix_score, base_score = score(tuned, references)["rouge-l"], score(base, references)["rouge-l"]
    return LearningCheck(round(prefix_score, 4), round(base_score, 4), len(picked), learned(prefix_score, base_score),
                         len(examples))


def spread(examples: list[Example], samples: int) -> list[Example]:
    """Up to `samples` of `examples`, evenly spread from the first to the last (the last line of a data
    file is often the newest, e.g. one `/teach` just added: a step of len // samples left it out)."""
    n = len(examples)
    if n <= samples:
        return list(examples)
    if samples <= 1:
        return list(examples[-samples:]) if samples else []
    return [examples[round(i * (n - 1) / (samples - 1))] for i in range(samples)]


def load_probe(path: Path = PROBE_FILE) -> tuple[list[str], list[str]]:
    """The general prompts of the forgetting probe and their reference answers."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["prompt"] for r in rows], [r["reference"] for r in rows]


def forgetting_probe(model: ChatGLMForConditionalGeneration, tok: ChatGLMTokenizer, kv: torch.Tensor,
                     path: Path = PROBE_FILE) -> ProbeResult:
    """Answer general prompts with and without the prefix and measure how far the prefix moved them."""
    prompts, references = load_probe(path)
    base = generate_answers(model, tok, prompts, None, max_new_tokens=48)
    tuned = generate_answers(model, tok, prompts, kv, max_new_tokens=48)
    return probe_drift(base, tuned, references)
