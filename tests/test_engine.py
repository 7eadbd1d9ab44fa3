"""Serving engine on a small random ChatGLM2: batched = solo = the generate() oracle, continuous
batching, cancelling, streaming, stop strings, seeds, NaN rows and per-request errors."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from conftest import small_model

from glmbot.config import Settings
from glmbot.errors import GenerationError, UnknownAdapterError
from glmbot.model.generate import generate_answers
from glmbot.model.prefix import PrefixEncoder
from glmbot.model.tokenizer import ChatGLMTokenizer
from glmbot.serving.engine import Engine, _Group
from glmbot.serving.requests import GenerationRequest, RequestHandle, TextStream, batched_wakeups, chat_turns
from glmbot.serving.sampling import SamplingParams, choose_tokens
from glmbot.serving.scheduler import Job, Scheduler

QUERIES = ["请问订单什么时候发货？", "退货需要几天到账？", "你好", "谢谢，再见。", "Hello world 123", "问：你好"]


def random_kv(config, length: int, seed: int) -> torch.Tensor:
    """A random prefix KV (2L, G, P, D), as a freshly initialised PrefixEncoder gives."""
    torch.manual_seed(seed)
    return PrefixEncoder(config, length).kv().detach()


def greedy(query: str, domain: str | None = None, max_new_tokens: int = 10, **kw) -> GenerationRequest:
    return GenerationRequest(query=query, domain=domain, max_new_tokens=max_new_tokens, do_sample=False, **kw)


def oracle(model, tok, query: str, kv: torch.Tensor | None, max_new_tokens: int) -> str:
    """glmbot.model.generate (transformers' generate with a per-row prefix), one request alone."""
    return generate_answers(model, tok, [query], kv, max_new_tokens=max_new_tokens)[0]


@pytest.fixture(scope="module")
def base():
    return small_model()


@pytest.fixture(scope="module")
def tok(sp_model_file) -> ChatGLMTokenizer:
    return ChatGLMTokenizer(sp_model_file)


@pytest.fixture(scope="module")
def prefixes(base) -> dict[str, torch.Tensor]:
    """Three adapters of different prefix lengths."""
    return {"support": random_kv(base.config, 3, 1), "ads": random_kv(base.config, 7, 2),
            "hr": random_kv(base.config, 12, 3)}


@pytest.fixture(params=[False, True], ids=["sync", "pipelined"])
def engine(base, tok, prefixes, request):
    """Every engine test runs with the decode step synchronous and pipelined (the CUDA default)."""
    with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, pipeline=request.param) as eng:
        yield eng


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


# ---------------------------------------------------------------------------- correctness of batching

def test_generate_many_queues_its_requests_together(base, tok, prefixes):
    """generate_many() batches its requests even when one is slow to prepare (a loaded machine, a
    prefix loading): the quick ones wait for it rather than decode, and finish, alone. A request
    that fails in preparation does not hold the others back."""
    with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96) as eng:
        make_job = eng._make_job

        def slow_for_hello(handle):
            if handle.request.query == QUERIES[4]:
                time.sleep(0.5)  # longer than the others need to generate their 4 tokens
            return make_job(handle)

        eng._make_job = slow_for_hello
        results = eng.generate_many([greedy(q, "support", 4) for q in QUERIES[:5]]
                                    + [greedy(QUERIES[0], "no-such-domain", 4)], return_exceptions=True)
        assert eng.stats().peak_rows == 5  # all five shared a decode step
    assert [len(r.token_ids) for r in results[:5]] == [4] * 5
    assert isinstance(results[5], UnknownAdapterError) and "no-such-domain" in str(results[5])


@pytest.mark.parametrize("pipeline", [False, True], ids=["sync", "pipelined"])
@pytest.mark.parametrize("static_shapes", [False, True], ids=["dynamic", "static"])
def test_mixed_batch_equals_each_request_alone_and_the_oracle(base, tok, prefixes, static_shapes, pipeline):
    plan = [("support", QUERIES[0]), ("ads", QUERIES[1]), ("hr", QUERIES[2]), (None, QUERIES[3]),
            ("hr", QUERIES[4]), ("support", QUERIES[5])]
    with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, static_shapes=static_shapes,
                pipeline=pipeline) as eng:
        batched = eng.generate_many([greedy(q, d, 12) for d, q in plan])
        assert eng.stats().peak_rows == len(plan)  # one forward over all rows at once
        alone = [eng.generate(greedy(q, d, 12)) for d, q in plan]
    for (domain, query), b, a in zip(plan, batched, alone):
        assert b.token_ids == a.token_ids and len(b.token_ids) > 0
        assert b.text == a.text == oracle(base, tok, query, prefixes.get(domain), 12), (domain, query)
        assert b.adapter == domain and b.finish_reason in ("length", "stop")
        assert b.usage.prompt_tokens == len(tok.build_chat_input(query))
    assert len({b.token_ids for b in batched}) == len(plan)  # the prefixes really change the answers


def test_static_prompt_forwards_are_padded_to_the_captured_shapes(base, tok, prefixes):
    """With static shapes (CUDA graphs on the GPU) a prompt forward is padded to one of the captured
    (rows, tokens, kv_len) shapes: more left padding, and idle rows that write only their scratch
    slot. The answers are the unpadded engine's."""
    from glmbot.serving.kv_slots import prefill_shapes

    plan = list(zip(["support", "ads", "hr", None, "hr", "support"], QUERIES))

    def run(static: bool):
        shapes = []
        with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, static_shapes=static) as eng:
            real = eng.scheduler._prefill_forward

            def recording(ids, positions, write, limit, slot_rows, kv_len):
                shapes.append((*ids.shape, kv_len))
                return real(ids, positions, write, limit, slot_rows, kv_len)

            eng.scheduler._prefill_forward = recording
            tokens = [r.token_ids for r in eng.generate_many([greedy(q, d, 12) for d, q in plan])]
            return tokens, shapes, eng.scheduler.prefill_shapes

    dynamic, unpadded, none = run(False)
    static, padded, captured = run(True)
    assert static == dynamic and all(dynamic)
    assert none == [] and len(unpadded) == 1 and unpadded[0][0] == len(plan)
    assert len(padded) == 1 and padded[0] in captured  # 6 rows -> 8, the longest prompt -> 16 or 32 tokens
    assert padded[0][0] == 8 and padded[0][1] in (16, 32) and padded[0][1] >= unpadded[0][1]
    shapes = prefill_shapes(32, [256, 512, 1024, 1104])  # rows of 1,104 slots
    assert (16, 64, 256) in shapes and (1, 1024, 1024) in shapes and (32, 16, 256) in shapes
    assert all(rows * width <= 1024 and width <= kv <= 1024 for rows, width, kv in shapes)


class EagerGraph:
    """A stand-in for a captured CUDA graph on the CPU: replay() runs the forward again on the same
    static inputs and writes into the same output tensors, as a graph's replay does."""

    def __init__(self, forward, static, kv_len):
        self.forward, self.static, self.kv_len = forward, static, kv_len
        self.outputs = forward(*static, kv_len)

    def replay(self):
        for out, new in zip(self.outputs, self.forward(*self.static, self.kv_len)):
            out.copy_(new)


@pytest.mark.parametrize("with_decode", [True, False], ids=["prompts-inside", "prompts-beside"])
def test_graph_replays_serve_the_dynamic_engines_tokens(base, tok, prefixes, with_decode):
    """The CUDA-graph plumbing, on the CPU with graphs that replay eagerly: decode steps, prompt
    forwards and decode steps with prompts inside (or, without prefill_with_decode, prompt forwards
    replayed beside the step), each replayed from its shape's static buffers (inputs copied in,
    outputs overwritten by the next replay), give the dynamic engine's tokens, for a first batch and
    for prompts that arrive while it decodes."""
    from glmbot.serving import kv_slots

    settings = Settings()
    settings.serving.prefill_with_decode = with_decode

    first = [greedy(q, d, 24, ignore_eos=True) for d, q in [("support", QUERIES[0]), ("hr", QUERIES[1]),
                                                              (None, QUERIES[2])]]
    late = [greedy(q, d, 8) for d, q in [("ads", QUERIES[3]), ("support", QUERIES[4]), (None, QUERIES[5])]]

    def run(graphs: bool):
        with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, static_shapes=graphs,
                    pipeline=True, settings=settings) as eng:
            s = eng.scheduler
            if graphs:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(kv_slots, "capture", lambda f, static, kv, pool, device: (
                        graph := EagerGraph(f, static, kv), graph.outputs))
                    pool = ("one pool",)
                    s.graphed = kv_slots.GraphedDecode(s._decode, s.buckets, s.kv_lengths, s.slots.scratch, s.device,
                                                       pool)
                    s.graphed_prefill = kv_slots.GraphedPrefill(s._prefill_forward, s.prefill_shapes, s.pad,
                                                                s.slots.scratch, s.device, pool)
                    if s.mixed_shapes:
                        s.graphed_mixed = kv_slots.GraphedMixed(s._mixed_forward, s.mixed_shapes, s.buckets[-1],
                                                                s.pad, s.slots.scratch, s.device, pool)
            handles = [eng.submit(r) for r in first]
            wait_until(lambda: eng.stats().decode_steps >= 3)
            handles += [eng.submit(r) for r in late]
            tokens = [h.result(timeout=60).token_ids for h in handles]
            return tokens, s.stats

    dynamic, _ = run(False)
    replayed, stats = run(True)
    assert replayed == dynamic and all(dynamic)
    if with_decode:
        assert stats.prefill_replays >= 1 and stats.mixed_replays >= 1  # each kind of graph served
    else:  # the late prompts' forwards were replayed beside a decode step
        assert stats.prefill_replays >= 2 and stats.mixed_replays == stats.mixed_steps == 0


def test_compiled_dense_parts_serve_the_eager_tokens(base, tok, prefixes):
    """The engine with compiled dense parts (batch buckets, prefill lengths and decode all through
    the same few graphs) gives the eager engine's tokens."""
    plan = [("support", QUERIES[0]), ("hr", QUERIES[2]), (None, QUERIES[3]), ("ads", QUERIES[1])]

    def run():
        with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, static_shapes=True) as eng:
            return [r.token_ids for r in eng.generate_many([greedy(q, d, 10) for d, q in plan])]

    eager = run()
    torch._dynamo.reset()
    base.compile_dense(backend="aot_eager")  # dynamo + functionalization, as inductor gets it
    try:
        compiled = run()
    finally:
        base.uncompile_dense()
        torch._dynamo.reset()
    assert compiled == eager and all(eager)


@pytest.mark.parametrize("with_decode", [True, False], ids=["prompts-in-decode", "prefill-forwards"])
def test_the_warm_up_compiles_every_kind_of_forward_before_any_request(base, tok, prefixes, with_decode):
    """After the engine's warm-up, requests arriving while others decode (prompt chunks alone, in
    batches, inside decode steps; decode batches of every size) make torch.compile compile nothing:
    on the GPU those compiles had taken seconds out of the first requests' time. Without the
    warm-up the same load compiles."""
    from torch._dynamo.utils import counters

    settings = Settings()
    settings.serving.prefill_wait_steps = 0
    settings.serving.prefill_with_decode = with_decode
    queries = [q + "?" * i for i in range(4) for q in QUERIES]
    plan = [greedy(q, d, 3 + 5 * (i % 4)) for i, (q, d) in enumerate(zip(queries, ["support", "hr", None, "ads"] * 4))]
    compiled = {}
    torch._dynamo.reset()
    base.compile_dense(backend="eager")  # dynamo's guards and recompiles, without a compiler's time
    try:
        for warm_up in (True, False):
            torch._dynamo.reset()
            with Engine(base, tok, prefixes=prefixes, settings=settings, max_batch_size=8, max_len=96,
                        prefill_token_budget=24, warm_up=warm_up) as eng:
                before = counters["stats"]["unique_graphs"]
                handles = []
                for i, request in enumerate(plan):
                    handles.append(eng.submit(request))
                    time.sleep(0.01 * (i % 3))  # arrivals spread over the decode steps of earlier ones
                assert all(h.result(timeout=60).finish_reason == "length" for h in handles)
                compiled[warm_up] = counters["stats"]["unique_graphs"] - before
                stats = eng.stats()
            assert (stats.mixed_steps > 0) == with_decode and stats.prefill_forwards > 0
    finally:
        base.uncompile_dense()
        torch._dynamo.reset()
    assert compiled[True] == 0 and compiled[False] > 0, compiled


def test_static_decode_steps_read_the_shortest_kv_length_that_holds_their_rows(base, tok, prefixes):
    """Static-shape (CUDA-graph) decode steps read 256, 512, ... slots, the fewest that hold the
    rows' prefix and tokens, not every row's whole context; the tokens are those of dynamic steps."""
    from glmbot.serving.kv_slots import kv_buckets

    keys: list[int] = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        if q.shape[2] == 1 or q.shape[1] == base.config.kv_groups:  # decode queries (grouped or folded)
            keys.append(k.shape[2])
        return real_sdpa(q, k, v, *args, **kwargs)

    def run(static: bool):
        with Engine(base, tok, prefixes=prefixes, max_batch_size=2, max_len=500, static_shapes=static) as eng:
            request = greedy(QUERIES[0], "support", 300, ignore_eos=True)
            return eng.generate(request).token_ids, eng.scheduler.slots.length

    dynamic, _ = run(False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
        static, length = run(True)
    assert static == dynamic and len(static) == 300
    assert length > 512 and kv_buckets(length) == [256, 512, length]
    per_step = keys[::base.config.num_layers]
    assert per_step == sorted(per_step) and set(per_step) == {256, 512}  # 16 + prompt + 300 tokens < 512


def test_grouped_kv_decode_attention_gives_the_folded_tokens(base, tok, prefixes):
    """[serving] deterministic = false swaps the decode attention for one grouped-KV call (cuDNN's
    kernel on CUDA): the same attention, so the same tokens here (fp32 on CPU)."""
    plan = [("support", QUERIES[0]), ("hr", QUERIES[2]), (None, QUERIES[3]), ("ads", QUERIES[1])]
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        calls.append((q.shape[1], q.shape[2], kwargs.get("enable_gqa", False)))
        return real_sdpa(q, k, v, *args, **kwargs)

    def run():
        with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, static_shapes=True) as eng:
            return [r.token_ids for r in eng.generate_many([greedy(q, d, 10) for d, q in plan])]

    folded = run()
    base.set_deterministic_decode(False)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
            grouped = run()
    finally:
        base.set_deterministic_decode(True)
    assert grouped == folded and all(folded)
    heads = base.config.num_attention_heads
    assert (heads, 1, True) in calls  # decode queries: all heads, one position, grouped KV


def test_requests_arriving_during_decode_join_the_batch(engine, base, tok, prefixes):
    """Late requests join the running rows; their prompts are queued with a decode step and their
    first tokens come back with its tokens: the host never waits on a prompt forward alone (it
    samples on the host only prompts that arrive while nothing decodes)."""
    host_sampled = []
    sample_and_advance = engine.scheduler._sample_and_advance

    def recording(rows, logits):
        host_sampled.extend(row.job.handle.request.query for row in rows)
        return sample_and_advance(rows, logits)

    engine.scheduler._sample_and_advance = recording
    # Each three are queued together, as generate_many's are: on a loaded machine their preparation (a
    # thread pool's) could otherwise spread their arrivals over more steps than their answers take.
    early = engine._submit([greedy(q, d, 40, ignore_eos=True)
                            for d, q in [("support", QUERIES[0]), ("hr", QUERIES[1]), (None, QUERIES[2])]], _Group(3))
    wait_until(lambda: engine.stats().decode_steps >= 3)
    late = engine._submit([greedy(q, d, 6) for d, q in [("ads", QUERIES[3]), ("support", QUERIES[4]),
                                                         (None, QUERIES[5])]], _Group(3))
    results = [h.result(timeout=60) for h in early + late]
    stats = engine.stats()
    assert stats.peak_rows == 6  # the late ones decoded together with the early ones
    # by default ([serving] prefill_with_decode) the late ones rode in a decode step's forward
    assert stats.prefill_forwards >= 1 and stats.mixed_steps >= 1
    assert 1 <= len(host_sampled) <= 3 and not set(host_sampled) & set(QUERIES[3:6])
    for handle, result in zip(early + late, results):
        solo = engine.generate(handle.request)
        assert result.token_ids == solo.token_ids and result.text == solo.text
    assert [len(r.token_ids) for r in results[:3]] == [40, 40, 40]


def test_cancelling_one_request_leaves_the_others_intact(engine):
    requests = [greedy(QUERIES[i], d, 30, ignore_eos=True) for i, d in enumerate(["support", "ads", None])]
    handles = [engine.submit(r) for r in requests]
    wait_until(lambda: engine.stats().decode_steps >= 2)
    handles[1].cancel()
    results = [h.result(timeout=60) for h in handles]
    assert results[1].finish_reason == "cancelled" and len(results[1].token_ids) < 30
    solo = [engine.generate(r) for r in requests]
    assert results[1].token_ids == solo[1].token_ids[:len(results[1].token_ids)]
    for i in (0, 2):
        assert results[i].finish_reason == "length" and results[i].token_ids == solo[i].token_ids


def test_pipelined_decode_equals_synchronous_decode(base, tok, prefixes):
    """Running a step ahead on device tokens changes nothing a caller sees: tokens, text, finish
    reasons and usage equal the synchronous loop for rows ending at different steps (1, 2 and 3
    tokens, eos, a stop string), seeded sampling, a repetition penalty and late arrivals."""
    def plan():
        return [greedy(QUERIES[0], "support", 1), greedy(QUERIES[1], "ads", 2, ignore_eos=True),
                greedy(QUERIES[2], None, 3, ignore_eos=True), greedy(QUERIES[3], "hr", 40),
                greedy(QUERIES[4], "hr", 30, ignore_eos=True, stop=["的", "了", "是"]),
                GenerationRequest(query=QUERIES[5], domain="ads", max_new_tokens=25, do_sample=True,
                                  temperature=1.0, seed=11, ignore_eos=True),
                GenerationRequest(query=QUERIES[0], domain="hr", max_new_tokens=20, do_sample=False,
                                  repetition_penalty=1.3, ignore_eos=True)]

    runs = {}
    for pipeline in (False, True):
        with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, pipeline=pipeline) as eng:
            first = eng.generate_many(plan())
            early = [eng.submit(greedy(q, "support", 30, ignore_eos=True)) for q in QUERIES[:2]]
            wait_until(lambda: eng.stats().decode_steps >= 4)
            late = [eng.submit(r) for r in plan()[:4]]
            results = first + [h.result(timeout=60) for h in early + late]
            runs[pipeline] = ([(r.token_ids, r.text, r.finish_reason, r.usage) for r in results],
                              eng.stats().decode_tokens)
    assert runs[True][0] == runs[False][0]
    assert [len(r[0]) for r in runs[True][0][:3]] == [1, 2, 3]
    assert runs[True][1] == runs[False][1]  # tokens computed for rows that had ended are not counted


def test_handoff_wait_takes_a_request_sent_right_back_into_the_next_step(base, tok, prefixes, monkeypatch):
    """handoff_wait: after a step in which a request finished, with the next step queued, the
    engine waits for that client's next request (here up to 1 s, so the test does not race the
    client): it is admitted before another decode step completes, and its answer is unchanged.
    With nothing sent back, the wait ends at its limit and the running stream goes on."""
    import glmbot.serving.engine as engine_module

    monkeypatch.setattr(engine_module, "HANDOFF_MAX_S", 1.0)
    monkeypatch.setattr(engine_module, "HANDOFF_SHARE", 1e9)
    with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, pipeline=True,
                handoff_wait=True) as eng:
        waiting, await_handoff, steps_at_wait = threading.Event(), eng._await_handoff, []
        armed, cond_wait = threading.Event(), eng._cond.wait

        def entering(finished):
            if finished:
                steps_at_wait.append(eng.stats().decode_steps)
                if len(steps_at_wait) == 2:  # after `expected`, `first` finished
                    armed.set()
            try:
                return await_handoff(finished)
            finally:
                armed.clear()

        def polling(timeout=None):  # the follow-up is sent once the wait is under way, as a slow client's would
            if armed.is_set() and timeout is not None:
                waiting.set()
            return cond_wait(timeout)

        eng._await_handoff, eng._cond.wait = entering, polling
        expected = eng.generate(greedy(QUERIES[2], "ads", 6, ignore_eos=True))
        running = eng.submit(greedy(QUERIES[0], "support", 40, ignore_eos=True))
        first = eng.generate(greedy(QUERIES[1], "hr", 3, ignore_eos=True))
        assert waiting.wait(timeout=20)  # the engine thread waits for this client now
        follow_up = eng.submit(greedy(QUERIES[2], "ads", 6, ignore_eos=True))
        rows = []
        wait_until(lambda: rows.extend(r for r in eng.scheduler.rows if r is not None and r.job.handle is follow_up)
                   or bool(rows))
        assert rows[0].admitted_step == steps_at_wait[1]
        assert follow_up.result(timeout=60).token_ids == expected.token_ids
        assert len(first.token_ids) == 3 and len(running.result(timeout=60).token_ids) == 40
        stats = eng.stats()  # the follow-up came in time; after its own answer nothing came, for the whole limit
        assert stats.handoff_taken >= 1 and stats.handoff_missed >= 1 and stats.handoff_s >= 1.0


def test_no_handoff_wait_unless_asked(base, tok, prefixes):
    """handoff_wait is off by default (an H100 closed loop lost 0.9% of throughput to it, and HTTP
    clients seldom come back within its 2 ms): a request answered while another runs, with steps
    pipelined, is followed by no wait."""
    with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, pipeline=True) as eng:
        running = eng.submit(greedy(QUERIES[0], "support", 30, ignore_eos=True))
        eng.generate(greedy(QUERIES[1], "hr", 3, ignore_eos=True))
        running.result(timeout=60)
        stats = eng.stats()
        assert stats.handoff_taken == stats.handoff_missed == 0 and stats.handoff_s == 0.0


def test_handoff_wait_comes_out_of_the_hosts_slack_and_ends_with_the_queued_step(base, tok, prefixes, monkeypatch):
    """The hand-off wait never delays the device: on CUDA it lasts at most half the time the host
    has lately spent blocked on the device per step (none in a host-bound loop), and it ends as
    soon as the queued step is done (its token copy's event has completed), whatever the limit.
    Without events (CPU, asked for explicitly) it lasts up to a quarter of a mean step."""
    import types

    import glmbot.serving.engine as engine_module

    monkeypatch.setattr(engine_module, "HANDOFF_MAX_S", 5.0)
    with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, pipeline=True,
                handoff_wait=True) as eng:
        eng.generate(greedy(QUERIES[0], "support", 3))  # a mean step for the CPU rule
        done, pending = (types.SimpleNamespace(query=lambda v=v: v) for v in (True, False))
        cases = [(done, 10.0, 1.0, 0.0, 0.5),  # the queued step is done: stop at once
                 (pending, 0.0, 1.0, 0.0, 0.5),  # host-bound: no slack, no wait
                 (pending, 0.6, 1.0, 0.25, 2.0),  # half of 0.6 s of slack
                 (None, 0.0, 1e9, 0.3, 2.0)]  # CPU: a quarter of the (huge) mean step, capped at 0.3 s below
        for ready, blocked, share, least, most in cases:
            monkeypatch.setattr(eng.scheduler, "inflight", types.SimpleNamespace(ready=ready))
            monkeypatch.setattr(eng.scheduler, "blocked_s", blocked)
            monkeypatch.setattr(engine_module, "HANDOFF_SHARE", share)
            if ready is None:
                monkeypatch.setattr(engine_module, "HANDOFF_MAX_S", 0.3)
            started = time.perf_counter()
            eng._await_handoff(1)
            assert least <= time.perf_counter() - started < most, (ready, blocked)
        monkeypatch.undo()


# ---------------------------------------------------------------------------- chunked prefill

def scheduler_job(tok, query: str, prefix, max_new_tokens: int) -> Job:
    handle = RequestHandle(greedy(query, max_new_tokens=max_new_tokens))
    return Job(handle, tok.build_chat_input(query), prefix, SamplingParams(do_sample=False), max_new_tokens,
               ignore_eos=True)


@pytest.mark.parametrize("with_decode", [True, False], ids=["with-decode", "own-forward"])
@pytest.mark.parametrize("pipeline", [False, True], ids=["sync", "pipelined"])
def test_prompts_prefilled_in_chunks_give_the_whole_prompt_tokens(base, tok, prefixes, pipeline, with_decode):
    """A budget of 5 prompt tokens a step splits every prompt (11-26 tokens) into chunks, each
    written at its own positions behind the prefix, in forwards of their own or (once a row decodes)
    inside the decode steps: the answers equal the oracle's."""
    settings = Settings()
    settings.serving.prefill_with_decode = with_decode
    plan = [("support", QUERIES[0]), ("hr", QUERIES[1] * 2), (None, QUERIES[2]), ("ads", QUERIES[4])]
    with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, prefill_token_budget=5,
                pipeline=pipeline, settings=settings) as eng:
        results = eng.generate_many([greedy(q, d, 8) for d, q in plan])
        stats = eng.stats()
    prompt_tokens = sum(len(tok.build_chat_input(q)) for _, q in plan)
    assert stats.prefill_tokens == prompt_tokens
    # no forward took more than the budget
    assert stats.prefill_forwards + stats.mixed_steps >= prompt_tokens // 5
    assert (stats.mixed_steps > 0) == with_decode
    for (domain, query), result in zip(plan, results):
        assert result.text == oracle(base, tok, query, prefixes.get(domain), 8), (domain, query)


@pytest.mark.parametrize("mode", ["mixed", "all"])
@pytest.mark.parametrize("static_shapes", [False, True], ids=["dynamic", "static"])
def test_one_attention_call_over_all_parts_gives_the_oracles_answers(base, tok, prefixes, mode, static_shapes,
                                                                     monkeypatch):
    """kernels.slot_attention in place of each part's gather, mask and attention ("mixed": for decode
    steps with prompts inside; "all": every forward), its torch form here:
    prompts in chunks of at most 5 tokens inside decode steps, padded to static shapes or not, over
    three prefix lengths and the plain base give the oracle's answers."""
    from glmbot.model import kernels
    from glmbot.serving import kv_slots

    calls = []
    real = kernels.slot_attention

    def counted(q, slots, rows, limits):
        calls.append(q.shape[0])
        return real(q, slots, rows, limits)

    kv_slots.set_slot_attention(mode)
    monkeypatch.setattr(kernels, "slot_attention", counted)
    monkeypatch.setattr(kv_slots, "fused_attention_ok", lambda model, slots, mixed, **kw: mode == "all" or mixed)
    settings = Settings()
    settings.serving.prefill_with_decode = True
    plan = [("support", QUERIES[0]), ("hr", QUERIES[1] * 2), (None, QUERIES[2]), ("ads", QUERIES[4])]
    try:
        with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96, prefill_token_budget=5,
                    static_shapes=static_shapes, settings=settings) as eng:
            results = eng.generate_many([greedy(q, d, 8) for d, q in plan])
            mixed_steps = eng.stats().mixed_steps
    finally:
        kv_slots.set_slot_attention(kv_slots.DEFAULT_SLOT_ATTENTION)
    layers = base.config.num_layers  # (no warm-up forwards on the CPU)
    # once per layer of each decode step with prompts inside; with "all", of every other forward too
    assert mixed_steps > 0 and len(calls) % layers == 0
    assert len(calls) // layers == mixed_steps if mode == "mixed" else len(calls) // layers > mixed_steps
    for (domain, query), result in zip(plan, results):
        assert result.text == oracle(base, tok, query, prefixes.get(domain), 8), (domain, query)


def test_which_forwards_take_the_one_call_attention(monkeypatch):
    """kv_slots.fused_attention_ok: "all" (the default) takes every forward, "mixed" decode steps with
    prompts inside, both only up to FUSED_PROMPT_READS prompt tokens x slots (the measured range); never
    the deterministic (folded) decode, the CPU, fp32, or head sizes the Triton kernel does not take (8
    heads a group are padded: taken)."""
    from types import SimpleNamespace

    from glmbot.model import kernels
    from glmbot.serving import kv_slots

    monkeypatch.setattr(kernels, "triton", object())  # as where Triton is installed

    def model(heads=32, groups=2, head_dim=128, grouped=True):
        attention = SimpleNamespace(num_heads=heads, groups=groups, head_dim=head_dim, grouped_decode=grouped)
        return SimpleNamespace(transformer=SimpleNamespace(encoder=SimpleNamespace(
            layers=[SimpleNamespace(self_attention=attention)])))

    def slots(cuda=True, dtype=torch.bfloat16):
        return SimpleNamespace(kv=SimpleNamespace(is_cuda=cuda, dtype=dtype))

    ok, limit = kv_slots.fused_attention_ok, kv_slots.FUSED_PROMPT_READS
    assert kv_slots.DEFAULT_SLOT_ATTENTION == "all" and ok(model(), slots(), mixed=False)
    try:
        kv_slots.set_slot_attention("off")
        assert not ok(model(), slots(), mixed=True, prompt_reads=64 * 384)
        kv_slots.set_slot_attention("mixed")
        assert ok(model(), slots(), mixed=True, prompt_reads=limit)
        assert not ok(model(), slots(), mixed=True, prompt_reads=limit + 1)  # a big chunk re-reads too much
        assert not ok(model(), slots(), mixed=False)
        assert ok(model(groups=4), slots(), mixed=True)  # glm-4-9b-chat-1m: 8 heads a group
        for other in (model(grouped=False), model(head_dim=96)):
            assert not ok(other, slots(), mixed=True)
        for other in (slots(cuda=False), slots(dtype=torch.float32)):
            assert not ok(model(), other, mixed=True)
        kv_slots.set_slot_attention("all")
        assert ok(model(), slots(), mixed=False) and ok(model(), slots(), mixed=True, prompt_reads=limit)
        for mixed in (False, True):  # a long prompt, alone or inside a decode step, keeps flash / cuDNN tiles
            assert not ok(model(), slots(), mixed=mixed, prompt_reads=limit + 1)
        with pytest.raises(ValueError, match="'fast'.*mixed, all, off"):
            kv_slots.set_slot_attention("fast")
    finally:
        kv_slots.set_slot_attention(kv_slots.DEFAULT_SLOT_ATTENTION)


def test_prompt_forwards_tell_the_one_call_attention_how_much_they_would_read(base, tok, prefixes, monkeypatch):
    """forward_slots hands fused_attention_ok each prompt's tokens x slots (decode steps: none), so
    that a long prompt keeps the per-part attention in every mode."""
    from glmbot.serving import kv_slots

    asked = []

    def record(model, slots, mixed, prompt_reads=0):
        asked.append((mixed, prompt_reads))
        return False

    monkeypatch.setattr(kv_slots, "fused_attention_ok", record)
    with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, static_shapes=False) as eng:
        eng.generate_many([greedy(QUERIES[0], "support", 4)])
    prompt = [reads for mixed, reads in asked if not mixed and reads]
    prompt_tokens = len(tok.encode(tok.build_prompt(QUERIES[0])))
    assert len(prompt) == 1 and prompt[0] >= prompt_tokens * prompt_tokens  # a row's tokens x its slots
    assert sum(1 for mixed, reads in asked if not mixed and reads == 0) >= 3  # the decode steps


def test_l2_prefetch_asks_for_each_layers_next_weights_before_its_attention(base, tok, prefixes, monkeypatch):
    """model.set_l2_prefetch(n): every serving forward asks, in each layer before its attention, for the
    first n bytes of the dense weight and the rest of n from the h->4h weight, before the layer's
    rotary and slot write (then attention); the answers stay the oracle's; a plain forward (generate)
    and n = 0 ask for nothing; a negative n is refused."""
    from glmbot.model import modeling

    asked, order = [], []
    real = modeling.kernels.l2_prefetch  # a no-op on the CPU; it reports the bytes it covered

    def record(t, n):
        asked.append((t, n))
        order.append("ask")
        return real(t, n)

    monkeypatch.setattr(modeling.kernels, "l2_prefetch", record)
    write = modeling.kernels.rotary_to_slots
    monkeypatch.setattr(modeling.kernels, "rotary_to_slots", lambda *a: (order.append("write"), write(*a))[1])
    layers = base.transformer.encoder.layers
    dense = layers[0].self_attention.dense.weight.nbytes
    try:
        base.set_l2_prefetch(dense + 100)
        expected = oracle(base, tok, QUERIES[0], prefixes["support"], 6)
        assert asked == []  # the plain forward has no slots: nothing to ask before
        with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, static_shapes=False) as eng:
            assert eng.generate_many([greedy(QUERIES[0], "support", 6)])[0].text == expected
        per_forward = [(layer.self_attention.dense.weight, dense + 100) for layer in layers]
        per_forward = [x for pair in zip(per_forward, [(layer.mlp.dense_h_to_4h.weight, 100) for layer in layers])
                       for x in pair]
        forwards = len(asked) // len(per_forward)
        assert forwards >= 6 and len(asked) == forwards * len(per_forward)
        assert all(got[0] is want[0] and got[1] == want[1] for got, want in zip(asked, per_forward * forwards))
        assert order == ["ask", "ask", "write"] * (forwards * len(layers))  # each layer asks before its attention
        base.set_l2_prefetch(0)
        asked.clear()
        with Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96, static_shapes=False) as eng:
            assert eng.generate_many([greedy(QUERIES[0], "support", 6)])[0].text == expected
        assert asked == []
        with pytest.raises(ValueError, match="-1 bytes"):
            base.set_l2_prefetch(-1)
    finally:
        base.set_l2_prefetch(0)


def test_a_long_prompt_does_not_stall_streams_that_are_decoding(base, tok, prefixes):
    """While a 100+-token prompt goes in over steps of at most 16 prompt tokens, the stream already
    decoding gets a token every step, and the new row joins the decode steps once its prompt is in."""
    sched = Scheduler(base, tok.eos_token_id, tok.pad_token_id, tok.decode, max_rows=4, slot_len=256,
                      prefill_token_budget=16)
    running = scheduler_job(tok, QUERIES[0], prefixes["support"], 60)
    sched.admit([running])
    while not sched.decoding:
        sched.step()
    assert sched.rows[0].sampled >= 1
    long_query = "".join(QUERIES) * 3
    late = scheduler_job(tok, long_query, prefixes["hr"], 8)
    n = len(late.prompt_ids)
    assert n > 100
    sched.admit([late])
    steps = 0
    while not sched.rows[1].decoding:
        before, tokens = sched.rows[0].sampled, sched.stats.prefill_tokens
        sched.step()
        steps += 1
        assert sched.stats.prefill_tokens - tokens <= 16
        assert sched.rows[0].sampled == before + 1  # the running stream advanced this step too
    assert steps == -(-n // 16) and sched.rows[1].prefilled == n
    while sched.active:
        sched.step()
    assert late.handle.result().text == oracle(base, tok, long_query, prefixes["hr"], 8)
    assert running.handle.result().text == oracle(base, tok, QUERIES[0], prefixes["support"], 60)


def test_a_prompt_that_fails_inside_a_decode_step_fails_alone(base, tok, prefixes, monkeypatch):
    """A forward that takes a new prompt into the running rows' decode step raises: that request ends with
    the error, the running stream loses no token and still gives the oracle's answer."""
    import glmbot.serving.scheduler as scheduler_module

    sched = Scheduler(base, tok.eos_token_id, tok.pad_token_id, tok.decode, max_rows=4, slot_len=256,
                      prefill_with_decode=True)
    running = scheduler_job(tok, QUERIES[0], prefixes["support"], 30)
    sched.admit([running])
    sched.step()
    assert sched.decoding and sched.stats.prefill_forwards == 1

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (a stand-in)")

    monkeypatch.setattr(scheduler_module, "forward_mixed", broken)
    late = scheduler_job(tok, QUERIES[1], prefixes["hr"], 8)
    sched.admit([late])
    before = sched.rows[0].sampled
    sched.step()
    assert sched.rows[0].sampled == before + 1  # the decode step ran without the prompt
    with pytest.raises(GenerationError, match="prefill failed: RuntimeError: CUDA out of memory"):
        late.handle.result(timeout=10)
    assert sched.waiting == [] and sched.rows[1] is None  # its row is free again
    monkeypatch.undo()
    while sched.active:
        sched.step()
    assert running.handle.result().text == oracle(base, tok, QUERIES[0], prefixes["support"], 30)


def test_arrivals_wait_a_few_steps_to_prefill_together_without_changing_answers(base, tok, prefixes):
    """prefill_wait_steps=3: prompts that arrive one step apart while 12 streams decode go in together,
    in one forward, once the first has waited 3 decode steps; the streams advance meanwhile; answers are the oracle's.
    Prompts as many as a quarter of the decoding rows go in at once."""
    sched = Scheduler(base, tok.eos_token_id, tok.pad_token_id, tok.decode, max_rows=20, slot_len=256,
                      prefill_wait_steps=3)

    def prefills() -> int:  # forwards of their own, or decode steps that took prompt tokens in
        return sched.stats.prefill_forwards + sched.stats.mixed_steps

    sched.admit([scheduler_job(tok, QUERIES[i % 6], prefixes["support"], 40) for i in range(12)])
    sched.step()  # nothing decodes yet: prefilled at once
    assert len(sched.decoding) == 12 and prefills() == 1
    plan = [("hr", QUERIES[1]), ("ads", QUERIES[3])]
    late = [scheduler_job(tok, q, prefixes[d], 6) for d, q in plan]
    sampled = sched.rows[0].sampled
    sched.admit(late[:1])
    sched.step()
    sched.admit(late[1:])
    for _ in range(2):
        assert prefills() == 1 and len(sched.decoding) == 12  # waiting for company
        sched.step()
    assert prefills() == 1  # the first has waited 3 decode steps: it goes in next
    sched.step()
    assert prefills() == 2 and len(sched.decoding) == 14  # both in one forward
    assert sched.rows[0].sampled == sampled + 4  # the running streams never paused
    while any(not job.handle.done for job in late):
        sched.step()
    for job, (d, q) in zip(late, plan):
        assert job.handle.result().text == oracle(base, tok, q, prefixes[d], 6)
    sched.admit([scheduler_job(tok, QUERIES[2], None, 20) for _ in range(3)])  # 4 x 3 >= 12 decoding
    sched.step()
    assert prefills() == 3 and len(sched.decoding) == 15
    sched.admit([scheduler_job(tok, QUERIES[0], None, 4)])  # 1 of 15: waits
    sched.step()
    assert prefills() == 3 and len(sched.waiting) == 1
    while sched.active:
        sched.step()


def test_a_prompt_a_captured_decode_step_takes_in_does_not_wait(base, tok, prefixes):
    """With static shapes and prompts inside decode steps (the CUDA defaults), an arrival that a
    captured decode step can take in goes in at the next step despite prefill_wait_steps: batching
    would save little there and only delay its first token. Its answer is the oracle's."""
    sched = Scheduler(base, tok.eos_token_id, tok.pad_token_id, tok.decode, max_rows=20, slot_len=256,
                      prefill_wait_steps=3, static_shapes=True)
    assert sched.mixed_shapes
    sched.admit([scheduler_job(tok, QUERIES[i % 6], prefixes["support"], 40) for i in range(12)])
    sched.step()
    assert len(sched.decoding) == 12 and sched.stats.mixed_steps == 0
    late = scheduler_job(tok, QUERIES[1], prefixes["hr"], 6)
    sched.admit([late])
    sched.step()
    assert sched.stats.mixed_steps == 1 and len(sched.decoding) == 13  # no waiting for company
    while not late.handle.done:
        sched.step()
    assert late.handle.result().text == oracle(base, tok, QUERIES[1], prefixes["hr"], 6)


def test_a_request_cancelled_while_its_prompt_goes_in_frees_its_row(base, tok, prefixes):
    sched = Scheduler(base, tok.eos_token_id, tok.pad_token_id, tok.decode, max_rows=2, slot_len=256,
                      prefill_token_budget=8)
    job = scheduler_job(tok, "".join(QUERIES), prefixes["ads"], 8)
    sched.admit([job])
    sched.step()
    assert 0 < sched.rows[0].prefilled < len(job.prompt_ids)
    job.handle.cancel()
    sched.drop_cancelled()
    sched.step()
    assert sched.active == [] and sched.waiting == [] and job.handle.result().finish_reason == "cancelled"
    assert not job.handle.result().token_ids


# ---------------------------------------------------------------------------- streaming and stop strings

def test_stream_deltas_concatenate_to_the_text_sync_and_async(engine):
    handle = engine.submit(greedy(QUERIES[0], "ads", 24))
    deltas = list(handle.stream())
    result = handle.result()
    assert "".join(deltas) == result.text and result.text
    assert len(deltas) > 1 and all(deltas)  # progressively, never an empty delta

    async def both():
        handles = [engine.submit(greedy(QUERIES[0], "ads", 24)), engine.submit(greedy(QUERIES[1], None, 16))]

        async def collect(h):
            return "".join([d async for d in h.astream()])
        return await asyncio.gather(*(collect(h) for h in handles)), handles

    texts, handles = asyncio.run(both())
    assert texts == [h.result().text for h in handles] and texts[0] == result.text


def count_cross_thread_calls(monkeypatch) -> list:
    """The running loop's call_soon_threadsafe calls, recorded as they come (call from inside it)."""
    loop = asyncio.get_running_loop()
    calls, real = [], loop.call_soon_threadsafe

    def counted(*args):
        calls.append(args)
        return real(*args)
    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    return calls


def test_an_async_consumer_that_falls_behind_gets_one_wake_up_and_the_deltas_joined(monkeypatch):
    """Tokens pushed while the loop is busy queue one cross-thread wake-up, not one each, and come
    out as one delta; a consumer that keeps up still gets each delta on its own."""
    async def run() -> tuple[list[str], int]:
        calls = count_cross_thread_calls(monkeypatch)
        handle = RequestHandle(greedy("x"))
        got, stream = [], handle.astream()
        reader = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # the consumer waits for its first delta
        engine = threading.Thread(target=lambda: [handle._push(c) for c in "你好世界"])
        engine.start()
        engine.join()  # the loop is not running meanwhile: all four queue up
        got.append(await reader)
        handle._push("！")
        got.append(await stream.__anext__())
        handle._finish()
        got += [d async for d in stream]
        return got, len(calls)

    deltas, wakeups = asyncio.run(run())
    # four pushes: one wake-up; "！": one, which the finish, pushed before it ran, rides on
    assert deltas == ["你好世界", "！"] and wakeups == 2


def test_a_thread_waiting_for_the_result_is_not_woken_by_each_token():
    """result() callers (one thread per request: LangChain's invoke, the benches' clients) sleep until
    the end; only stream() readers are woken per delta."""
    handle = RequestHandle(greedy("x"))
    waits = []
    real_wait = handle._finished.wait

    def counted(timeout=None):
        waits.append(timeout)
        return real_wait(timeout)
    handle._finished.wait = counted
    reader = threading.Thread(target=handle.result)
    reader.start()
    wait_until(lambda: len(waits) == 1)
    for piece in "一二三四五六七八九十" * 5:
        handle._push(piece)
    time.sleep(0.05)
    assert len(waits) == 1  # asleep through all 50 deltas
    handle._finish()
    reader.join(5)
    assert not reader.is_alive() and len(waits) == 1 and "".join(handle.stream()) == "一二三四五六七八九十" * 5


def test_a_step_wakes_all_its_streams_with_one_call_per_event_loop(monkeypatch):
    """Inside batched_wakeups() (the engine's step) pushes to three streams queue nothing on the loop;
    at its end one cross-thread call wakes all three, each with its own delta."""
    async def run() -> tuple[list[str], int, int]:
        calls = count_cross_thread_calls(monkeypatch)
        handles = [RequestHandle(greedy("x")) for _ in range(3)]
        streams = [h.astream() for h in handles]
        readers = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.sleep(0)  # every consumer waits for its first delta
        inside = []

        def step() -> None:
            with batched_wakeups():
                for handle, text in zip(handles, "甲乙丙"):
                    handle._push(text)
                inside.append(len(calls))
        engine = threading.Thread(target=step)
        engine.start()
        engine.join()
        got = list(await asyncio.gather(*readers))
        return got, inside[0], len(calls)

    deltas, during, wakeups = asyncio.run(run())
    assert deltas == ["甲", "乙", "丙"] and during == 0 and wakeups == 1


def test_text_stream_holds_back_incomplete_characters_whitespace_and_stop_prefixes(tok):
    ids = tok.encode("  龙年好 END 再见", add_special_tokens=False)  # 龙 is not a piece: three byte tokens
    assert len(ids) > len("  龙年好 END 再见") - 4
    stream = TextStream(tok.decode, stop=["END"])
    deltas = [stream.push(i) for i in ids]
    deltas.append(stream.finish())
    assert "".join(deltas) == stream.text == "龙年好"
    assert stream.stopped and not any("\ufffd" in d for d in deltas)
    plain = TextStream(tok.decode)
    out = [plain.push(i) for i in ids] + [plain.finish()]
    assert "".join(out) == tok.decode(ids).strip() and not any(d.endswith(" ") for d in out)


def test_stop_strings_end_the_request_before_the_stop_text(engine):
    def stop_candidate(text: str) -> int | None:
        """Index of a visible character that first occurs there, not at the very start."""
        return next((i for i in range(2, len(text) - 1) if text.find(text[i]) == i and text[i].isprintable()
                     and not text[i].isspace() and text[i] not in "\ufffd\\"), None)

    for query in QUERIES:  # a random model writes odd text: find an answer with a usable character
        full = engine.generate(greedy(query, "hr", 30, ignore_eos=True))
        k = stop_candidate(full.text)
        if k is not None:
            break
    text = full.text
    handle = engine.submit(greedy(query, "hr", 30, ignore_eos=True, stop=["never-there", text[k] + "never", text[k]]))
    deltas = list(handle.stream())
    cut = handle.result()
    assert (cut.text, cut.finish_reason) == (text[:k].rstrip(), "stop")
    assert "".join(deltas) == cut.text and len(cut.token_ids) < len(full.token_ids)
    assert full.token_ids[:len(cut.token_ids)] == cut.token_ids


# ---------------------------------------------------------------------------- sampling

def test_seed_makes_sampling_reproducible_whatever_shares_the_batch(engine):
    def sampled(seed):
        return GenerationRequest(query=QUERIES[0], domain="support", max_new_tokens=16, do_sample=True,
                                 temperature=1.0, top_p=0.95, seed=seed, ignore_eos=True)

    alone = engine.generate(sampled(7))
    mixed = engine.generate_many([greedy(QUERIES[2], "hr", 20), sampled(7), sampled(8), greedy(QUERIES[3], None, 5)])
    assert mixed[1].token_ids == alone.token_ids
    assert mixed[2].token_ids != alone.token_ids
    unseeded = engine.generate_many([sampled(None), sampled(None)])
    assert unseeded[0].token_ids != unseeded[1].token_ids


def test_decode_step_picks_greedy_tokens_and_flags_non_finite_rows(base, monkeypatch):
    """The decode step's own token choice (inside the CUDA graph on GPU) agrees with
    choose_tokens_on_device: argmax per row, and a row with any NaN/Inf logit flagged."""
    from glmbot.serving import scheduler as scheduler_module
    from glmbot.serving.sampling import choose_tokens_on_device

    logits = torch.tensor([[0.0, float("inf"), 1.0], [0.5, 2.0, 1.0], [float("nan"), 0.0, 1.0], [3.0, 2.0, 1.0]])
    monkeypatch.setattr(scheduler_module, "forward_slots", lambda *args, **kwargs: logits)
    sched = scheduler_module.Scheduler(base, 2, 0, str, max_rows=4, slot_len=16)
    _, greedy_tokens, finite = sched._decode(None, None, None, None, 16)
    tokens, expected_finite = choose_tokens_on_device(logits, [SamplingParams(do_sample=False)] * 4, [()] * 4, None)
    assert finite.tolist() == expected_finite.tolist() == [False, True, False, True]
    assert greedy_tokens[[1, 3]].tolist() == tokens[[1, 3]].tolist() == [1, 0]


def test_sampling_filters_follow_transformers_semantics():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 3)
    params = [SamplingParams(top_k=1, temperature=1.0), SamplingParams(top_p=1e-4, temperature=1.0),
              SamplingParams(do_sample=False, repetition_penalty=10.0)]
    gens = [p.generator() for p in params]
    tokens, finite = choose_tokens(logits, params, [(), (), [1]], gens)
    assert tokens == [1, 1, 3] and finite == [True] * 3  # penalty 10 pushes token 1 below token 3
    bad = torch.tensor([[0.0, float("nan"), 1.0, 2.0]])
    assert choose_tokens(bad, [SamplingParams()], [()], [SamplingParams().generator()])[1] == [False]
    with pytest.raises(GenerationError, match="top_p"):
        SamplingParams(top_p=0.0)


# ---------------------------------------------------------------------------- failures stay per request

@pytest.mark.parametrize("pipeline", [False, True], ids=["sync", "pipelined"])
def test_nan_logits_fail_only_that_request(base, tok, prefixes, pipeline):
    poisoned = dict(prefixes, broken=torch.full_like(prefixes["ads"], float("nan")))
    with Engine(base, tok, prefixes=poisoned, max_batch_size=4, max_len=96, pipeline=pipeline) as eng:
        handles = [eng.submit(greedy(QUERIES[0], d, 8)) for d in ("broken", "support", None)]
        with pytest.raises(GenerationError, match="NaN/Inf logits"):
            handles[0].result()
        with pytest.raises(GenerationError, match="NaN"):
            list(handles[0].stream())
        good = [h.result() for h in handles[1:]]
        # The broken request's slots are reused: nothing of it may leak into later rows.
        again = eng.generate_many([greedy(QUERIES[0], d, 8) for d in ("support", None, "hr", "ads")])
    assert [r.text for r in good] == [oracle(base, tok, QUERIES[0], prefixes["support"], 8),
                                      oracle(base, tok, QUERIES[0], None, 8)]
    assert [r.text for r in again] == [oracle(base, tok, QUERIES[0], prefixes.get(d), 8)
                                       for d in ("support", None, "hr", "ads")]


def test_bad_requests_fail_alone_with_clear_errors(engine):
    bad = {
        "too_long": greedy(QUERIES[0], "support", max_new_tokens=95),
        "empty": GenerationRequest(messages=[]),
        "unknown": greedy(QUERIES[0], "nosuch"),
        "assistant_last": GenerationRequest(messages=[{"role": "user", "content": "a"},
                                                      {"role": "assistant", "content": "b"}]),
        "temperature": GenerationRequest(query="hi", temperature=-1.0),
    }
    handles = {name: engine.submit(r) for name, r in bad.items()}
    ok = engine.submit(greedy(QUERIES[0], "support", 6))
    errors = {}
    for name, handle in handles.items():
        with pytest.raises(Exception) as caught:
            handle.result()
        errors[name] = caught.value
    prompt = len(engine.tokenizer.build_chat_input(QUERIES[0]))
    assert isinstance(errors["too_long"], GenerationError)
    assert f"prompt of {prompt} tokens + max_new_tokens 95 = {prompt + 95}" in str(errors["too_long"])
    assert "max_len=96" in str(errors["too_long"])
    assert "empty messages" in str(errors["empty"])
    assert isinstance(errors["unknown"], UnknownAdapterError) and "ads, hr, support" in str(errors["unknown"])
    assert "last message must come from the user" in str(errors["assistant_last"])
    assert "temperature" in str(errors["temperature"])
    assert ok.result().finish_reason in ("length", "stop")
    assert engine.generate(greedy(QUERIES[1], "hr", 4)).token_ids  # still serving


def test_messages_map_to_the_official_chat_prompt(engine):
    messages = [{"role": "system", "content": "请简短。"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "退货需要几天？"}]
    query, history = chat_turns(GenerationRequest(messages=messages))
    assert (query, history) == ("请简短。退货需要几天？", [("你好", "你好！")])
    via_messages = engine.generate(GenerationRequest(messages=messages, domain="ads", max_new_tokens=6,
                                                     do_sample=False))
    via_query = engine.generate(greedy(query, "ads", 6, history=history))
    assert via_messages.token_ids == via_query.token_ids
    assert via_messages.usage.prompt_tokens == len(engine.tokenizer.build_chat_input(query, history))


def test_defaults_come_from_settings_generation(base, tok):
    settings = Settings()
    settings.generation.max_new_tokens = 5
    settings.generation.do_sample = False
    with Engine(base, tok, settings=settings, max_batch_size=2, max_len=64) as eng:
        result = eng.generate(GenerationRequest(query=QUERIES[0], ignore_eos=True))
        closed = eng
    assert len(result.token_ids) == 5 and result.finish_reason == "length" and result.route.domain is None
    assert result.text == oracle(base, tok, QUERIES[0], None, 5)
    with pytest.raises(GenerationError, match="closed"):
        closed.submit(GenerationRequest(query="hi"))



def test_close_cancels_unfinished_requests_or_waits_for_them(base, tok, prefixes):
    eng = Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96)
    running = [eng.submit(greedy(QUERIES[0], "hr", 60, ignore_eos=True)) for _ in range(3)]
    wait_until(lambda: eng.stats().decode_steps >= 1)
    eng.close()
    assert {h.result().finish_reason for h in running} == {"cancelled"}
    assert all(len(h.result().token_ids) < 60 for h in running)
    eng = Engine(base, tok, prefixes=prefixes, max_batch_size=4, max_len=96)
    running = [eng.submit(greedy(QUERIES[0], "hr", 20, ignore_eos=True)) for _ in range(3)]
    eng.close(wait=True)
    assert [len(h.result().token_ids) for h in running] == [20, 20, 20]

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decode_equals_eager_and_the_oracle(tok):
    model = small_model().cuda()
    kvs = {"support": random_kv(model.config, 3, 1).cuda(), "hr": random_kv(model.config, 12, 3).cuda()}
    plan = [("support", QUERIES[0]), ("hr", QUERIES[1]), (None, QUERIES[2]), ("hr", QUERIES[3]),
            ("support", QUERIES[4])]
    outputs, replays = {}, {}
    for mode in ("eager", "static", "graph"):  # eager: synchronous; the others pipelined (the CUDA default)
        with Engine(model, tok, prefixes=kvs, max_batch_size=8, max_len=96, static_shapes=mode == "static",
                    cuda_graph=mode == "graph", pipeline=mode != "eager") as eng:
            outputs[mode] = [r.token_ids for r in eng.generate_many([greedy(q, d, 12) for d, q in plan])]
            late = eng.generate(greedy(QUERIES[5], "support", 12))  # a later batch of another size
            stats = eng.scheduler.stats
            replays[mode] = (stats.prefill_replays, stats.prefill_forwards)
    assert replays["graph"] == (2, 2) and replays["static"] == (0, 2)  # prompt forwards replayed graphs too
    assert outputs["graph"] == outputs["static"] == outputs["eager"]
    for (domain, query), result in zip(plan, outputs["graph"]):
        assert tok.decode(list(result)).strip() == oracle(model, tok, query, kvs.get(domain), 12)
    assert tok.decode(list(late.token_ids)).strip() == oracle(model, tok, QUERIES[5], kvs["support"], 12)


# ---------------------------------------------------------------------------- answers caught in a loop

class GivenTokens:
    """A DecodeProbe that makes every row generate `pattern` over and over, whatever the logits say."""

    def __init__(self, pattern: list[int]):
        self.pattern = pattern

    def observe(self, rows, indices, logits):  # noqa: ANN001 - the DecodeProbe protocol
        return [self.pattern[i % len(self.pattern)] for i in indices]


def looped(base, tok, pattern: list[int], loop_stop: int, **request):
    settings = Settings()
    settings.generation.loop_stop = loop_stop
    assert not set(pattern) & {tok.eos_token_id, tok.pad_token_id}
    with Engine(base, tok, settings=settings, max_batch_size=4, max_len=128) as eng:
        eng.scheduler.probe = GivenTokens(pattern)
        return eng.generate(greedy(QUERIES[2], None, 60, **request))


@pytest.mark.parametrize("period", [1, 2, 8])
def test_an_answer_repeating_one_piece_ends_after_loop_stop_tokens(base, tok, period):
    """Greedy decoding that loops (一击一击一击...) never leaves the loop: the answer ends once its last
    loop_stop tokens repeat one piece of up to 8 tokens, instead of running to max_new_tokens."""
    pattern = list(range(100, 100 + period))
    from glmbot.http.responses import openai_finish_reason

    result = looped(base, tok, pattern, loop_stop=16)
    assert result.finish_reason == "loop" and openai_finish_reason(result) == "stop"  # the HTTP API's client sees stop
    assert list(result.token_ids) == [pattern[i % period] for i in range(16)]  # it repeats from the first token


def test_no_loop_stop_for_longer_pieces_when_off_or_when_eos_is_ignored(base, tok):
    result = looped(base, tok, list(range(100, 109)), loop_stop=16)  # 9 tokens: longer than the 8 looked for
    assert result.finish_reason == "length" and len(result.token_ids) == 60
    result = looped(base, tok, [100, 101], loop_stop=0)
    assert result.finish_reason == "length" and len(result.token_ids) == 60
    result = looped(base, tok, [100, 101], loop_stop=16, ignore_eos=True)  # benchmarks generate max_tokens
    assert result.finish_reason == "length" and len(result.token_ids) == 60


def test_loop_stop_below_two_pieces_is_refused():
    from glmbot.config import GenerationSettings

    with pytest.raises(ValueError, match="loop_stop must be 0 .off. or at least 16 tokens, got 5"):
        GenerationSettings(loop_stop=5)
