"""Batched answers from a base model with optional per-row prefixes (no serving engine needed).

Used by evaluation, the demo and tools; the serving engine has its own continuous-batching loop.
"""

from __future__ import annotations

from typing import Sequence

import torch

from glmbot.model.modeling import ChatGLMForConditionalGeneration
from glmbot.model.prefix import PrefixKV
from glmbot.model.tokenizer import ChatGLMTokenizer, History


@torch.no_grad()
def generate_answers(
    model: ChatGLMForConditionalGeneration,
    tok: ChatGLMTokenizer,
    queries: Sequence[str],
    prefixes: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
    histories: Sequence[History] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    **sampling,
) -> list[str]:
    """One answer per query, in order. `prefixes`: one (2L, G, P, D) KV per row, or one for all.

    Greedy by default (deterministic evaluation); pass do_sample=True with temperature/top_p for
    the official chat sampling.
    """
    if isinstance(prefixes, torch.Tensor) or prefixes is None:
        prefixes = [prefixes] * len(queries)
    histories = histories or [()] * len(queries)
    answers: list[str] = []
    for start in range(0, len(queries), batch_size):
        rows = range(start, min(start + batch_size, len(queries)))
        enc = tok.pad([tok.build_chat_input(queries[i], histories[i]) for i in rows], device=model.device)
        prefix = PrefixKV.stack([None if prefixes[i] is None else prefixes[i].to(model.device) for i in rows])
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], prefix=prefix,
                             max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **sampling)
        answers += [tok.decode(row[enc["input_ids"].shape[1]:]).strip() for row in out]
    return answers
