"""The decode-path check (glmbot.serving.verify): the engine's teacher-forced logits equal a plain
forward within rounding, and each injected bug (a swapped prefix, a stale KV slot) fails it."""

from __future__ import annotations

import pytest
import torch
from conftest import small_model

from glmbot.config import Settings
from glmbot.model.tokenizer import ChatGLMTokenizer
from glmbot.serving.engine import Engine
from glmbot.serving.verify import StaleSlot, SwappedPrefixes, mixed_cases, random_prefixes, tolerance, verify_engine


def with_decode() -> Settings:
    """Settings with [serving] prefill_with_decode on (the default; said here, as these tests are about it)."""
    settings = Settings()
    settings.serving.prefill_with_decode = True
    return settings


@pytest.fixture(scope="module")
def base():
    return small_model()


@pytest.fixture(scope="module")
def tok(sp_model_file) -> ChatGLMTokenizer:
    return ChatGLMTokenizer(sp_model_file)


@pytest.fixture(scope="module")
def prefixes(base):
    return random_prefixes(base.config, (8, 8, 3, 16), seed=3)  # two of one length, for the swap


@pytest.fixture(scope="module")
def cases(prefixes, tok):
    return mixed_cases(prefixes, rows=16, new_tokens=6, vocab=(3, tok.sp_size))


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "pipelined"])
def engine(base, tok, prefixes, request):
    with Engine(base, tok, prefixes=prefixes, max_batch_size=16, max_len=80, max_prefix_len=16,
                pipeline=request.param) as eng:
        yield eng


def test_teacher_forced_logits_match_a_plain_forward(engine, cases, prefixes):
    report = verify_engine(engine, cases, prefixes)
    assert report.passed, report
    assert (report.rows, report.logits) == (16, 16 * 6)
    assert {c.domain for c in cases} == {"d0", "d1", "d2", "d3", None}  # every prefix length and plain base
    assert report.tolerance == tolerance(engine.model) < 1e-4  # fp32: tight
    assert engine.scheduler.probe is None  # the normal path runs without it again


def test_a_swapped_prefix_fails_the_check(engine, cases, prefixes):
    fault = SwappedPrefixes.between(cases, prefixes)
    assert cases[fault.a].domain != cases[fault.b].domain
    report = verify_engine(engine, cases, prefixes, fault=fault)
    assert report.fault_injected and not report.passed
    assert report.worst[0] in (fault.a, fault.b)
    assert report.max_rel > 1e3 * report.tolerance


def test_a_stale_kv_slot_fails_the_check(engine, cases, prefixes):
    report = verify_engine(engine, cases, prefixes, fault=StaleSlot(5))
    assert report.fault_injected and not report.passed
    assert report.worst[0] == 5
    assert report.max_rel > 1e3 * report.tolerance


@pytest.mark.parametrize("static_shapes", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("pipeline", [False, True], ids=["sync", "pipelined"])
def test_prompts_prefilled_inside_decode_steps_match_a_plain_forward(base, tok, prefixes, cases, pipeline,
                                                                     static_shapes):
    """24 prompt tokens a step: after the first rows, prompts go in (in chunks) through the forward of
    the decode steps of the rows already decoding; every logit vector still matches, and a fault fails.
    With static shapes (CUDA graphs) such a step is padded to all 16 rows and a captured prompt shape."""
    with Engine(base, tok, prefixes=prefixes, max_batch_size=16, max_len=80, max_prefix_len=16,
                prefill_token_budget=24, pipeline=pipeline, settings=with_decode(),
                static_shapes=static_shapes) as eng:
        clean = verify_engine(eng, cases, prefixes)
        mixed = eng.stats().mixed_steps
        stale = verify_engine(eng, cases, prefixes, fault=StaleSlot(9))
    assert mixed >= sum(len(c.prompt_ids) for c in cases) // 24 - 2  # nearly every prompt chunk rode a decode step
    assert clean.passed and clean.logits == 16 * 6, clean
    assert stale.fault_injected and stale.max_rel > 1e3 * stale.tolerance


def test_given_tokens_hold_whatever_the_logits_say(engine, cases, prefixes):
    """Teacher forcing decides every token: the engine returns the cases' tokens, not its greedy choice."""
    from glmbot.serving.verify import engine_logits

    probe = engine_logits(engine, cases[:4])
    greedy = [int(probe.logits[0, i].argmax()) for i in range(6)]
    assert greedy != cases[0].tokens  # random ids are not what this model would choose
    assert sorted(probe.logits) == [(c, i) for c in range(4) for i in range(6)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_compiled_decode_matches_a_plain_forward_in_bf16(tok):
    """A bigger bf16 shape, 64 rows, CUDA graphs + compiled dense parts + pipelining: within bf16
    rounding, and both injected bugs fail it."""
    model = small_model(num_layers=6, hidden_size=512, ffn_hidden_size=1376, kv_channels=64,
                        num_attention_heads=8, padded_vocab_size=4096, initializer_range=0.02)
    model = model.to("cuda", torch.bfloat16)
    model.set_deterministic_decode(False)  # the CUDA default: cuDNN grouped-KV decode attention
    kernels = model.compile_dense()
    try:
        kvs = random_prefixes(model.config, (64, 64, 32, 32, 8), "cuda", torch.bfloat16, seed=3)
        cases = mixed_cases(kvs, rows=64, new_tokens=16, vocab=(3, tok.sp_size), prompt_lens=(70, 5, 33, 17))
        with Engine(model, tok, prefixes=kvs, max_batch_size=64, max_len=96, max_prefix_len=64, cuda_graph=True,
                    static_shapes=True) as eng:
            assert eng.scheduler.pipeline
            clean = verify_engine(eng, cases, kvs)
            swapped = verify_engine(eng, cases, kvs, fault=SwappedPrefixes.between(cases, kvs))
            stale = verify_engine(eng, cases, kvs, fault=StaleSlot(7))
        # prompts in chunks of 256 tokens, mostly inside the (then eager) decode steps of earlier rows
        with Engine(model, tok, prefixes=kvs, max_batch_size=64, max_len=96, max_prefix_len=64, cuda_graph=True,
                    static_shapes=True, prefill_token_budget=256, settings=with_decode()) as eng:
            mixed_clean = verify_engine(eng, cases, kvs)
            mixed_steps = eng.stats().mixed_steps
            mixed_stale = verify_engine(eng, cases, kvs, fault=StaleSlot(7))
    finally:
        model.uncompile_dense()
    assert kernels is not None
    assert clean.passed, clean
    assert 0 < clean.max_rel  # bf16 kernels do round differently: the check is not comparing a thing with itself
    assert mixed_clean.passed and mixed_steps >= 4, (mixed_clean, mixed_steps)
    for broken in (swapped, stale, mixed_stale):
        assert broken.fault_injected and not broken.passed, broken


def test_in_bf16_the_engine_and_rounding_alone_stay_within_the_derived_tolerance(tok):
    """The bf16 tolerance on CPU: the engine's error and that of an eager bf16 vs fp32 forward are
    both rounding, nonzero, and under it; a fault is far above it."""
    from glmbot.serving.verify import rounding_noise

    model = small_model().to(torch.bfloat16)
    kvs = random_prefixes(model.config, (8, 8, 3), dtype=torch.bfloat16, seed=3)
    cases = mixed_cases(kvs, rows=8, new_tokens=6, vocab=(3, tok.sp_size))
    noise = rounding_noise(model, cases, kvs)
    with Engine(model, tok, prefixes=kvs, max_batch_size=8, max_len=80, max_prefix_len=8) as eng:
        clean = verify_engine(eng, cases, kvs)
        stale = verify_engine(eng, cases, kvs, fault=StaleSlot(2))
    assert 0 < noise.max_rel < noise.tolerance and noise.passed
    assert 0 < clean.max_rel and clean.passed, clean
    assert not stale.passed and stale.max_rel > 3 * stale.tolerance, stale
