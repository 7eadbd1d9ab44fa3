"""Prefixes on ChatGLM3 and GLM-4 bases train, serve and mix exactly as on ChatGLM2 (small random configs)."""

from __future__ import annotations

import pytest
import torch

from glmbot.config import TrainSettings
from glmbot.model.generate import generate_answers
from glmbot.model.prefix import PrefixEncoder
from glmbot.serving.engine import Engine
from glmbot.serving.requests import GenerationRequest
from glmbot.training.data import Example, encode_all
from glmbot.training.trainer import PrefixTrainer
from tests.conftest import small_model

EXAMPLES = [Example("退货多久到账？", "三天"), Example("怎么开发票？", "在订单页"), Example("你好", "你好！"),
            Example("在吗", "在的")]
FAMILIES = {"chatglm3": ("tok3", {"padded_vocab_size": 64896}),
            "glm4": ("tok4", {"padded_vocab_size": 151552, "hidden_size": 32, "ffn_hidden_size": 48,
                              "kv_channels": 8, "rope_ratio": 500})}


def random_kv(config, length: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return PrefixEncoder(config, length).kv().detach()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_train_then_serve_a_mixed_batch(family, request, tmp_path):
    tok_name, config = FAMILIES[family]
    tok = request.getfixturevalue(tok_name)
    model = small_model(7, glm_family=family, **config)
    assert model.config.prefix_width == model.config.num_layers * 2 * model.config.kv_groups * model.config.kv_channels

    encoded, _ = encode_all(tok, EXAMPLES, 64, 32)
    first = encoded[0]
    prompt = tok.build_chat_input(EXAMPLES[0].prompt)
    assert first.input_ids[:len(prompt)] == prompt and prompt[-1] == tok.special_ids["<|assistant|>"]
    assert first.labels[len(prompt):-1] == tok.answer_ids("三天")  # the "\n" the model writes, then the answer
    assert first.input_ids[-1] == (tok.special_ids["<|user|>"] if family == "glm4" else tok.eos_token_id)

    settings = TrainSettings(pre_seq_len=4, max_steps=10, batch_size=4, learning_rate=5e-2, checkpoint_every=0,
                             compile=False)
    result = PrefixTrainer(model, settings, tmp_path, pad_id=tok.pad_token_id).fit(encoded)
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    model.eval()
    prefixes = {"trained": result.encoder.kv().detach(), "other": random_kv(model.config, 6, 1)}

    plan = [("trained", "退货多久到账？"), ("other", "你好"), (None, "在吗"), ("trained", "怎么开发票？")]
    greedy = [GenerationRequest(query=q, domain=d, max_new_tokens=6, do_sample=False) for d, q in plan]
    with Engine(model, tok, prefixes=prefixes, max_batch_size=4, max_len=64) as engine:
        batched = engine.generate_many(greedy)
        assert engine.stats().peak_rows == len(plan)
        alone = [engine.generate(r) for r in greedy]
    for (domain, query), b, a in zip(plan, batched, alone):
        assert b.token_ids == a.token_ids and len(b.token_ids) > 0
        oracle = generate_answers(model, tok, [query], prefixes.get(domain), max_new_tokens=6)[0]
        assert b.text == oracle, (family, domain, query)
        assert b.usage.prompt_tokens == len(tok.build_chat_input(query))
