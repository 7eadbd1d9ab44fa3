"""Per-row token choice: greedy or sampled with each request's own temperature, top-k, top-p,
repetition penalty and random generator, all rows of a step at once.

Sampling draws one uniform number per row from the row's own CPU `torch.Generator` and inverts
the row's filtered CDF with it, so a request with a `seed` gets the same tokens whatever else
shares its batch (given the same logits: on CUDA, `[serving] deterministic = true` keeps those bit
for bit from run to run). The order of the filters is transformers' (penalty, temperature, top-k, top-p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from glmbot.errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens (the engine fills unset fields from [generation])."""

    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> GenerationError:
            return GenerationError(f"{name} = {getattr(self, name)!r} is invalid: it must be {rule}")

        if not _finite(self.temperature) or self.temperature < 0:
            raise bad("temperature", ">= 0 (0 = greedy)")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 = off)")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "> 0 (1.0 = off)")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", "an integer or None")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def generator(self) -> torch.Generator | None:
        """The row's own random source: seeded when `seed` is set, else from fresh OS entropy."""
        if self.greedy:
            return None
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def apply_repetition_penalty(logits: torch.Tensor, params: Sequence[SamplingParams],
                             seen: Sequence[Sequence[int]]) -> None:
    """In place, as transformers does: a seen token's logit is divided by the penalty (x it if < 0)."""
    for row, (p, tokens) in enumerate(zip(params, seen)):
        if p.repetition_penalty == 1.0 or not tokens:
            continue
        ids = torch.tensor(sorted(set(tokens)), device=logits.device)
        score = logits[row, ids]
        logits[row, ids] = torch.where(score < 0, score * p.repetition_penalty, score / p.repetition_penalty)


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams], uniforms: torch.Tensor) -> torch.Tensor:
    """Sampled token per row: logits (B, V) fp32, uniforms (B,) in [0, 1) -> (B,) token ids."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)
    top_k = torch.tensor([p.top_k or logits.shape[1] for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    ordered, order = (logits / temperature[:, None]).sort(dim=-1, descending=True)  # (B, V)
    rank = torch.arange(logits.shape[1], device=device)
    ordered = ordered.masked_fill(rank >= top_k[:, None], float("-inf"))
    probs = ordered.softmax(dim=-1)
    # Keep a token while the mass ranked above it is < top_p (the first one is always kept).
    above = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(above >= top_p[:, None], 0.0)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    target = (uniforms.to(device) * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True).clamp_(max=logits.shape[1] - 1)  # (B, 1)
    return order.gather(1, pick)[:, 0]


def draw_uniforms(params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]) -> torch.Tensor | None:
    """One uniform number per sampling row from its own generator (None if every row is greedy)."""
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    return torch.cat([torch.rand(1, generator=generators[i]) for i in sampled]) if sampled else None


def choose_tokens_on_device(logits: torch.Tensor, params: Sequence[SamplingParams], seen: Sequence[Sequence[int]],
                            uniforms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token (B,) and whether the row's logits were finite (B,), both left on the device.

    uniforms: `draw_uniforms` of the same rows. No host sync: the serving loop can queue the next
    decode step on these tokens before reading them.
    """
    logits = logits.float()
    finite = torch.isfinite(logits).all(dim=-1)  # (B,)
    # A non-finite row fails its request; zeros keep the math below defined for it meanwhile.
    logits = torch.where(finite[:, None], logits, torch.zeros((), device=logits.device))
    apply_repetition_penalty(logits, params, seen)
    tokens = logits.argmax(dim=-1)  # (B,)
    if uniforms is not None:
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        index = torch.tensor(sampled, device=logits.device)
        tokens[index] = sample_rows(logits[index], [params[i] for i in sampled], uniforms)
    return tokens, finite


def choose_tokens(logits: torch.Tensor, params: Sequence[SamplingParams], seen: Sequence[Sequence[int]],
                  generators: Sequence[torch.Generator | None]) -> tuple[list[int], list[bool]]:
    """Next token of every row and whether its logits were finite.

    logits: (B, V) in any dtype; seen: each row's prompt + completion ids (repetition penalty);
    generators: each sampling row's own generator (None for greedy rows). One device sync.
    """
    tokens, finite = choose_tokens_on_device(logits, params, seen, draw_uniforms(params, generators))
    both = torch.stack((tokens, finite.long())).tolist()
    return both[0], [bool(x) for x in both[1]]
