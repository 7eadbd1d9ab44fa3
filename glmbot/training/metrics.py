"""Generation metrics computed exactly as the official ChatGLM2 ptuning recipe, and a forgetting probe.

`score` reproduces `compute_metrics` of THUDM/ChatGLM2-6B `ptuning/main.py`: per sample, ROUGE-1/2/L
F x 100 of jieba words (rouge_chinese) and character BLEU-4 x 100 (nltk, smoothing method3), each
rounded to 4 decimals, then the plain mean over samples. The official code crashes on an empty
hypothesis; like LLaMA-Factory we score ROUGE 0 when either side has no words.

`probe_drift` compares a tuned adapter's answers to general prompts with the plain base's answers
and with reference answers, to catch a prefix that "forgot how to say hello". `learned` says
whether a prefix answers its own training questions clearly better than the plain base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from glmbot.errors import DataError
from glmbot.segment import jieba_module

METRIC_KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
_ROUGE_KEYS = METRIC_KEYS[:3]

# Forgetting thresholds (see probe_drift): both must hold, so a tuned model that merely rephrases
# (kept low, references still met) or that was already bad at the references is not flagged.
FORGET_RELATIVE_DROP = 0.5  # the tuned reference score fell by more than half of the base's
FORGET_KEPT = 0.5           # and tuned answers share less than half (char LCS F1) with the base's
FORGET_HINT = ("lower the learning rate (a little at a time: too low and the domain is not learned), shorten "
               "training or mix general chat data into the domain's data")
# A prefix learned its data when its ROUGE-L (0..100) on the training questions beats the plain
# base's by at least this many points, or is within this distance of 100 (no room left to gain).
# Measured on builtin:tiny + builtin:support: +1.8 after 30 steps (nothing yet), +8 after 100, +30 after 200.
LEARNED_MIN_GAIN = 5.0
# Probe answers are short; the cap bounds the O(n*m) LCS cost of a runaway generation.
MAX_PROBE_CHARS = 512


def learned(prefix_rouge_l: float, base_rouge_l: float) -> bool:
    """The LEARNED_MIN_GAIN rule: the prefix's training-question ROUGE-L clearly above the base's."""
    return prefix_rouge_l >= min(base_rouge_l + LEARNED_MIN_GAIN, 100.0 - LEARNED_MIN_GAIN)


# Metrics that read better in words than as numbers, shown so by `glmbot adapters list` and the dashboard
# (a newcomer read "learned 1, probe_forgot 1, probe_kept 0.1738"): their label, and how a value reads.
METRIC_LABELS = {"probe_kept": "general chat kept"}


def metric_words(name: str, value: float) -> str | None:
    """A metric's value in words ("yes", "17%"), or None where the number itself is what to show."""
    if name == "learned":
        return "yes" if value else "no"
    if name == "probe_kept":
        return f"{value:.0%}"
    return None


def learned_nothing(ref: str, metrics: dict[str, float]) -> str | None:
    """Why `ref` should not be made active, when its training found that it learned nothing (its
    metrics' `learned` is 0); None otherwise (learned, or not checked: imported, pulled)."""
    if metrics.get("learned", 1.0):
        return None
    scores = ""
    if "train_rouge-l" in metrics and "train_rouge-l_base" in metrics:
        scores = (f" (ROUGE-L on its training questions {metrics['train_rouge-l']:.1f}, the plain base "
                  f"{metrics['train_rouge-l_base']:.1f})")
    return f"{ref} learned nothing in training{scores}: it answers its domain no better than the plain base"


def _sample_scores(pred: str, ref: str) -> dict[str, float]:
    """The official per-sample scores (x 100, rounded to 4 decimals) of one prediction."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba = jieba_module()
    hypothesis = " ".join(jieba.cut(pred))
    reference = " ".join(jieba.cut(ref))
    if not hypothesis.split() or not reference.split():
        # rouge_chinese raises "Hypothesis is empty." here; a side without words shares none: ROUGE 0.
        rouge = {key: 0.0 for key in _ROUGE_KEYS}
    else:
        result = Rouge().get_scores(hypothesis, reference)[0]
        rouge = {key: result[key]["f"] for key in _ROUGE_KEYS}
    # nltk returns 0 for an empty hypothesis today; older releases divided by zero.
    bleu = 0.0 if not pred else sentence_bleu([list(ref)], list(pred),
                                              smoothing_function=SmoothingFunction().method3)
    scores = {key: round(value * 100, 4) for key, value in rouge.items()}
    scores["bleu-4"] = round(float(bleu) * 100, 4)
    return scores


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean official ROUGE-1/2/L and BLEU-4 (0..100) of `predictions` against `references`."""
    import numpy as np

    if len(predictions) != len(references):
        raise DataError(f"got {len(predictions)} predictions but {len(references)} references: "
                        "pass one reference per prediction")
    if not predictions:
        raise DataError("no predictions to score: pass at least one prediction/reference pair")
    per_key: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str) or not isinstance(ref, str):
            raise DataError(f"pair {i}: prediction and reference must be strings, got "
                            f"{type(pred).__name__} and {type(ref).__name__}")
        for key, value in _sample_scores(pred, ref).items():
            per_key[key].append(value)
    return {key: float(np.mean(values)) for key, values in per_key.items()}


def read_predictions_file(path: str | Path) -> tuple[list[str], list[str]]:
    """(predictions, labels) of a `generated_predictions.txt`: JSON lines {"labels": .., "predict": ..}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"predictions file {path} does not exist: run prediction first") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    predictions: list[str] = []
    labels: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # a trailing newline or blank separator is not a record
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be "
                            '{"labels": "...", "predict": "..."}') from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with 'labels' and 'predict', "
                            f"got {type(row).__name__}")
        for key in ("labels", "predict"):
            if key not in row:
                raise DataError(f"{where}: missing key {key!r} (keys found: {sorted(row)}); each line must be "
                                '{"labels": "...", "predict": "..."}')
            if not isinstance(row[key], str):
                raise DataError(f"{where}: {key!r} must be a string, got {row[key]!r}")
        labels.append(row["labels"])
        predictions.append(row["predict"])
    if not predictions:
        raise DataError(f"{path} holds no predictions: expected JSON lines of "
                        '{"labels": "...", "predict": "..."}')
    return predictions, labels


def score_predictions_file(path: str | Path) -> tuple[dict[str, float], int]:
    """(official metrics, number of samples) of an official `generated_predictions.txt`."""
    predictions, labels = read_predictions_file(path)
    return score(predictions, labels), len(predictions)


# ---------------------------------------------------------------------------- forgetting probe

def char_similarity(a: str, b: str) -> float:
    """ROUGE-L F1 on characters (whitespace ignored), 0..1; two empty answers count as identical."""
    a = "".join(a.split())[:MAX_PROBE_CHARS]
    b = "".join(b.split())[:MAX_PROBE_CHARS]
    if not a or not b:
        return 1.0 if a == b else 0.0
    lcs = _lcs_length(a, b)
    return 2.0 * lcs / (len(a) + len(b))  # F1 of precision lcs/len(a) and recall lcs/len(b)


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if char == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class PromptDrift:
    """How one probe prompt's answer moved; each value is a char_similarity in 0..1."""

    kept: float             # tuned answer vs the base's answer
    reference_base: float   # base answer vs the reference
    reference_tuned: float  # tuned answer vs the reference


@dataclass(frozen=True)
class ProbeResult:
    """Aggregate forgetting verdict of a tuned adapter on general prompts."""

    kept: float                   # mean similarity of tuned to base answers, 0..1
    reference_score_base: float   # mean similarity of base answers to the references, 0..1
    reference_score_tuned: float  # same for the tuned answers
    forgot: bool
    hint: str                     # what to do about it; "" when not forgot
    prompts: list[PromptDrift] = field(default_factory=list)

    @property
    def relative_drop(self) -> float:
        """Share of the base's reference score that tuning lost (0 if the base scored 0)."""
        if self.reference_score_base <= 0:
            return 0.0
        return (self.reference_score_base - self.reference_score_tuned) / self.reference_score_base


def probe_drift(base_answers: list[str], tuned_answers: list[str], references: list[str]) -> ProbeResult:
    """Compare tuned answers to the base's and to references; `forgot` when both fell apart.

    forgot = relative drop of the reference score > FORGET_RELATIVE_DROP (50%)
             and kept < FORGET_KEPT (0.5).
    A base that scores 0 on the references gives no evidence of forgetting (relative drop 0).
    """
    counts = {len(base_answers), len(tuned_answers), len(references)}
    if len(counts) != 1:
        raise DataError(f"probe lists differ in length: {len(base_answers)} base answers, "
                        f"{len(tuned_answers)} tuned answers, {len(references)} references; "
                        "pass one of each per probe prompt")
    if not references:
        raise DataError("no probe prompts: pass at least one base answer, tuned answer and reference")
    prompts = [PromptDrift(kept=char_similarity(tuned, base),
                           reference_base=char_similarity(base, ref),
                           reference_tuned=char_similarity(tuned, ref))
               for base, tuned, ref in zip(base_answers, tuned_answers, references)]
    n = len(prompts)
    result = ProbeResult(
        kept=sum(p.kept for p in prompts) / n,
        reference_score_base=sum(p.reference_base for p in prompts) / n,
        reference_score_tuned=sum(p.reference_tuned for p in prompts) / n,
        forgot=False, hint="", prompts=prompts)
    if result.relative_drop > FORGET_RELATIVE_DROP and result.kept < FORGET_KEPT:
        return replace(result, forgot=True, hint=FORGET_HINT)
    return result
