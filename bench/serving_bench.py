"""Serving benchmark: many concurrent streams of many domains on one base model, vs one at a time.

    python bench/serving_bench.py                                   # builtin:tiny on CPU
    python bench/serving_bench.py --full-size --cuda-graph --check  # ChatGLM2-6B shape, random bf16, CUDA
    python bench/serving_bench.py --family chatglm3 --shape full --cuda-graph   # ChatGLM3-6B (= ChatGLM2's shape)
    python bench/serving_bench.py --family glm4 --shape full --cuda-graph --streams 64 --baseline-streams 8
    python bench/serving_bench.py --family glm4 --shape tiny --device cpu       # a quick check on CPU

--family picks the base family (its vocabulary, special-token ids, stop ids and rotary variant:
glmbot.model.family); --shape full is the official size (ChatGLM2/3-6B: 28 layers; GLM-4-9B: 40
layers, vocabulary 151552), --shape tiny a 2-layer model of the same family for CPU checks. The
decode-step column at 1 stream ("engine, one at a time") and at --streams streams is what
docs/PERFORMANCE.md records per family.

Every stream has a prompt of --prompt-len random tokens, a prefix of --prefix-len positions (its
domain's), and generates exactly --max-new-tokens tokens (greedy, eos ignored). Scenarios:

  baseline      the streams one at a time through transformers' generate() with their prefix
                (glmbot.model.generate's path, batch 1): what users run today. Ratios are vs this.
  engine 1x1    the same streams one at a time through the engine (its batch-1 speed)
  single 64     --streams streams of one domain, continuously batched
  mixed 64      --streams streams over --domains domains: a different prefix on every few rows
  mixed-P 64    the same with prefix lengths spread over [P/8, P] and some plain-base rows

On CUDA it also prints the weight-read floor of a decode step (weights bytes / measured
device-to-device copy bandwidth) and how close each decode step comes to it. --check compares the
CUDA-graph engine's tokens with an eager engine at the same static shapes (near-tied logits of
random weights may flip tokens, so it shows, but cannot prove, a difference).

--arrival-rate R runs steady arrivals instead of the scenarios: --arrival-count requests at a mean
R per second (Poisson), once per prefill budget of --prefill-tokens (prompt tokens prefilled
between two decode steps; 32768 = whole prompts at once, as before chunked prefill), reporting
time to first token p50/p99, the gap between decode steps (what a running stream waits per token)
p50/p99/max, the rate achieved, end-to-end tokens/s, rows per decode step and how busy the engine was.

--closed-loop N runs N requests from --streams clients instead, each sending its next request as
soon as its previous answer ends (answer lengths drawn from [max/2, 3max/2], so they fall out of
step and prompts arrive while other streams decode): end-to-end tokens/s against the plain decode
step's figure (--streams rows / the mean step of an all-at-once batch run first on the same
engine), both over the whole run and over its steady part (from a quarter of the requests sent
until the last is sent: every client busy, no start or drain; decode tokens only, the one
prefill token of each request left out), the mean step while the loop runs, torch.compile's
compiles during the loop (0 once the engine's warm-up did its job) and time to first token
p50/p99, once per
--prefill-with-decode mode (on: new prompts go through the running rows' decode forward; off: a
prefill forward of their own), --prefill-graphs mode (on: prompt forwards of up to ~1k tokens
replay CUDA graphs of a few padded shapes; off: eager), --handoff-wait mode (the engine's
handoff_wait: a client's next request joins the step queued right after its answer) and
--prefill-wait-steps value. On CUDA it
then prints, per run, the GPU's time per kind of step in the loop (decode only, prompts inside,
prompt forwards beside), the host's time in each launch, how long the GPU waited for it and how
long the step's graph ran, the steps with prompts inside by captured shape, and the GPU's idle time
between steps, from CUDA events around each step's work (StepTimeline); --profile-steps N adds the
kernels of N steps of the loop (torch.profiler). --blas picks cuBLAS or cuBLASLt for the whole run (default: timed,
as glmbot serve).
--arrival-rate compares the modes too.

--verify runs a check that can fail instead of the scenarios (glmbot.serving.verify): --streams
rows over --domains domains (prefix lengths P, P, P/2, P/2, ...) and plain-base rows, prompts of
mixed lengths, each made to take --verify-tokens given tokens through the engine (with
--cuda-graph / --compile as given); the logits of every token must match one eager forward of the
same model within a tolerance derived from the dtype's rounding. Its baseline, in bf16: the same
comparison between an eager bf16 and an eager fp32 forward (what rounding alone does, --domains
+ 1 rows; reported, not judged). Then it injects two bugs (two rows' prefixes swapped, one stale KV slot), each of
which must fail the check; the exit status is 1 if any run ends otherwise.
Timings on a shared machine are noisy: run it alone; each scenario reports the fastest of --repeat runs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch._dynamo.utils import counters
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's glmbot, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_table import print_kernel_table  # noqa: E402

from glmbot.config import Settings  # noqa: E402
from glmbot.model import ChatGLMConfig, ChatGLMForConditionalGeneration, load_base  # noqa: E402
from glmbot.model.family import FAMILIES, family_named  # noqa: E402
from glmbot.model.loading import resolve_base  # noqa: E402
from glmbot.model.prefix import PrefixKV  # noqa: E402
from glmbot.model.tokenizer import ChatGLMTokenizer  # noqa: E402
from glmbot.serving.engine import Engine  # noqa: E402
from glmbot.serving.blas import BLAS_LIBRARIES, choose_blas  # noqa: E402
from glmbot.serving.kv_slots import DEFAULT_SLOT_ATTENTION, SLOT_ATTENTION_MODES, set_slot_attention  # noqa: E402
from glmbot.serving.requests import GenerationRequest  # noqa: E402
from glmbot.serving.verify import (  # noqa: E402
    StaleSlot,
    SwappedPrefixes,
    mixed_cases,
    random_prefixes,
    rounding_noise,
    verify_engine,
)

console = Console(width=None if sys.stdout.isatty() else 300)  # tables unwrapped in logs


@dataclass
class Measured:
    scenario: str
    streams: int
    tokens: int
    seconds: float
    step_ms: float | None  # mean decode step (None for the generate() baseline)
    outputs: list[tuple[int, ...]]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


TINY_SHAPE = dict(num_layers=2, hidden_size=64, ffn_hidden_size=96, kv_channels=16, num_attention_heads=4,
                  multi_query_group_num=2, seq_length=4096)


class FamilyIds:
    """The token ids of a family's vocabulary for a random-weight bench model (no tokenizer files):
    its special ids (stop ids, [gMASK]/sop) at the official places, text decoded by the built-in
    tokenizer (ids it does not know are skipped), so the per-token host work matches ChatGLM2's."""

    def __init__(self, family, regular: int):
        self.family, self.regular = family, regular
        self.text = ChatGLMTokenizer.from_pretrained(resolve_base("builtin:tiny"))
        self.special_ids = {t: regular + i for i, t in enumerate(family.specials)}
        self.eos_token_id = self.special_ids.get("<|endoftext|>", 2)
        self.pad_token_id = self.special_ids.get("<|endoftext|>", 0)
        self.gmask_id, self.sop_id = (self.special_ids[t] for t in family.prompt_start)
        self.sp_size = regular

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.text.decode([i for i in ids if i < self.regular], skip_special_tokens)


def family_config(family, shape: str) -> ChatGLMConfig:
    """The official config of `family` (ChatGLM2-6B defaults + the family's differences), or its tiny shape."""
    values = {k: v for k, v in family.config_defaults.items() if k != "torch_dtype"}
    if shape == "tiny":
        values.update(TINY_SHAPE)
    return ChatGLMConfig(glm_family=family.name, **values)


def random_model(config: ChatGLMConfig, dtype: torch.dtype, device: str) -> ChatGLMForConditionalGeneration:
    """A frozen model of `config` with random weights, initialised straight on the device (no checkpoint file)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = ChatGLMForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(old)
    return model.requires_grad_(False).eval()


def build_model(args: argparse.Namespace) -> tuple[ChatGLMForConditionalGeneration, object]:
    family = family_named(args.family)
    if args.shape is None and family.name == "chatglm2":
        return load_base(args.model, device=args.device)
    shape = args.shape or "tiny"
    if shape == "full" and not args.device.startswith("cuda"):
        raise SystemExit("--shape full needs --device cuda (12.5 GB of bf16 weights; GLM-4-9B: 18.8 GB)")
    model = random_model(family_config(family, shape), torch.bfloat16 if shape == "full" else torch.float32, args.device)
    if family.name == "chatglm2":
        # Ids of the built-in tokenizer are valid ids of the full vocabulary; the text is meaningless anyway.
        return model, ChatGLMTokenizer.from_pretrained(resolve_base("builtin:tiny"))
    # the regular vocabulary ends where the specials start: 64789 SentencePiece pieces (ChatGLM3), 151329 ranks (GLM-4)
    return model, FamilyIds(family, 151329 if family.tokenizer == "tiktoken" else 64789)


def make_prefixes(model, domains: int, length: int, spread: bool) -> dict[str, torch.Tensor]:
    """Random prefix KV (2L, G, P, D) per domain; spread: lengths from length/8 up to length."""
    lengths = [max(1, round(length * (1 + 7 * i / max(domains - 1, 1)) / 8)) if spread else length
               for i in range(domains)]
    return random_prefixes(model.config, lengths, model.device, model.dtype)


def make_prompts(streams: int, length: int, tok: ChatGLMTokenizer) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    body = torch.randint(3, tok.sp_size, (streams, length - 2), generator=g).tolist()
    return [[tok.gmask_id, tok.sop_id] + ids for ids in body]


def requests_for(prompts, domains: list[str | None], max_new: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt_ids=p, domain=domains[i % len(domains)], max_new_tokens=max_new,
                              do_sample=False, ignore_eos=True) for i, p in enumerate(prompts)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_generate_baseline(model, prompts, prefixes: dict[str, torch.Tensor], max_new: int) -> Measured:
    """One stream at a time through transformers' generate() with a per-row prefix (batch 1)."""
    names = list(prefixes)
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None  # like ignore_eos
    sync(model.device)
    start, outputs = time.perf_counter(), []
    try:
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids], device=model.device)
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                 prefix=PrefixKV.stack([prefixes[names[i % len(names)]]]), max_new_tokens=max_new,
                                 do_sample=False, pad_token_id=0)
            outputs.append(tuple(out[0, x.shape[1]:].tolist()))
        sync(model.device)
    finally:
        model.generation_config.eos_token_id = eos
    seconds = time.perf_counter() - start
    return Measured("baseline: generate(), one at a time", len(prompts), sum(map(len, outputs)), seconds, None, outputs)


def run_engine(engine: Engine, name: str, requests: list[GenerationRequest], one_at_a_time: bool = False) -> Measured:
    stats = engine.scheduler.stats
    steps, decode_s = stats.decode_steps, stats.decode_s
    start = time.perf_counter()
    if one_at_a_time:
        results = [engine.generate(r) for r in requests]
    else:
        results = engine.generate_many(requests)
    seconds = time.perf_counter() - start
    step_ms = 1e3 * (stats.decode_s - decode_s) / max(stats.decode_steps - steps, 1)
    tokens = sum(r.usage.completion_tokens for r in results)
    return Measured(name, len(requests), tokens, seconds, step_ms, [r.token_ids for r in results])


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 31) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize(device)
    return 2 * nbytes * 10 / (begin.elapsed_time(end) / 1e3)


def replay_ms(engine: Engine, batch: int, replays: int = 50) -> float:
    """GPU time of one decode step alone: the captured graph of a batch bucket replayed back to back."""
    graph = engine.scheduler.graphed.graphs[batch, engine.scheduler.graphed.kv_lengths[-1]][0]  # all slots
    graph.replay()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / replays


def print_table(rows: list[Measured], title: str) -> None:
    base = rows[0].tokens_per_s
    table = Table(title=title, header_style="bold")
    for column in ("scenario", "streams", "tokens", "seconds", "tokens/s", "mean decode step ms", "vs baseline"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for m in rows:
        step = "-" if m.step_ms is None else f"{m.step_ms:.2f}"
        table.add_row(m.scenario, str(m.streams), str(m.tokens), f"{m.seconds:.2f}", f"{m.tokens_per_s:,.0f}", step,
                      f"{m.tokens_per_s / base:.2f}x")
    console.print(table)


def print_floor(model, rows: list[Measured]) -> None:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth(model.device)
    floor_ms = 1e3 * weights / bandwidth
    table = Table(title=f"Decode step vs the weight-read floor: {weights / 1e9:.2f} GB / {bandwidth / 1e12:.2f} TB/s "
                        f"= {floor_ms:.2f} ms", header_style="bold")
    for column in ("scenario", "batch", "step ms", "floor / step", "tokens/s at this step"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for m in rows:
        if m.step_ms is not None:
            batch = 1 if "one at a time" in m.scenario else m.streams
            table.add_row(m.scenario, str(batch), f"{m.step_ms:.2f}", f"{floor_ms / m.step_ms:.2f}",
                          f"{1e3 * batch / m.step_ms:,.0f}")
    console.print(table)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:tiny", help="base model (ignored with --full-size)")
    parser.add_argument("--full-size", action="store_true", help="= --shape full (random-weight bf16 on CUDA)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="chatglm2",
                        help="base family: vocabulary, special and stop ids, rotary variant (default chatglm2)")
    parser.add_argument("--shape", choices=("full", "tiny"), default=None,
                        help="full: the official size of --family in bf16 (CUDA); tiny: 2 layers (CPU checks); "
                             "default: --model for chatglm2, tiny for the others")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--prefix-len", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--baseline-streams", type=int, default=8,
                        help="streams run one at a time for the baselines (tokens/s is a rate: a subset suffices)")
    parser.add_argument("--cuda-graph", action="store_true", help="replay the decode step from CUDA graphs")
    parser.add_argument("--check", action="store_true", help="with --cuda-graph: tokens equal an eager static engine")
    parser.add_argument("--verify", action="store_true",
                        help="teacher-forced logits of the engine vs an eager forward, then with injected faults")
    parser.add_argument("--verify-tokens", type=int, default=32, help="given tokens per row with --verify")
    parser.add_argument("--verify-prefill-tokens", type=int, default=256,
                        help="with --verify, a second run at this prefill budget (prompt chunks inside decode steps)")
    parser.add_argument("--arrival-rate", type=float, default=0.0,
                        help="instead of the scenarios: requests arriving at this mean rate per second (TTFT)")
    parser.add_argument("--arrival-count", type=int, default=256, help="requests sent with --arrival-rate")
    parser.add_argument("--prefill-tokens", default="32768,2048",
                        help="with --arrival-rate: prefill budgets to compare, tokens per step (32768: whole prompts)")
    parser.add_argument("--context", type=int, default=0,
                        help="also run the mixed scenario with rows of this many tokens (glmbot serve: "
                             "[generation] max_length, 8192), decode steps reading the slots the rows reach vs all")
    parser.add_argument("--closed-loop", type=int, default=0,
                        help="instead of the scenarios: this many requests from --streams clients back to back")
    parser.add_argument("--prefill-with-decode", default="on,off",
                        help="with --closed-loop / --arrival-rate: [serving] prefill_with_decode modes to compare")
    parser.add_argument("--prefill-graphs", default="on",
                        help="with --cuda-graph, prompt forwards replay captured graphs: on, off or on,off "
                             "(--closed-loop, --arrival-rate)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="with --closed-loop on CUDA: torch.profiler over this many decode steps from the "
                             "300th on; prints their kernels (ms per step, µs per call)")
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="the interpreter's thread switch interval (sys.setswitchinterval; Python's default is "
                             "5 ms): with --closed-loop, the clients are threads beside the engine's")
    parser.add_argument("--handoff-wait", default="off",
                        help="with --closed-loop: the engine's handoff_wait (a request sent right back after an "
                             "answer joins the next step; off by default): on, off or on,off (no effect on CPU: "
                             "steps are not pipelined there)")
    parser.add_argument("--prefill-wait-steps", default="8",
                        help="with --closed-loop: [serving] prefill_wait_steps values to compare (comma-separated)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block's norms and MLP")
    parser.add_argument("--repeat", type=int, default=2, help="runs per scenario; the fastest is reported (noise)")
    parser.add_argument("--deterministic", action="store_true",
                        help="as [serving] deterministic = true: bit-reproducible decode attention (default: "
                             "cuDNN grouped KV, as glmbot serve runs on CUDA)")
    add_slot_attention(parser)
    add_blas(parser)
    parser.add_argument("--l2-prefetch", type=float, default=0,
                        help="MiB of each layer's dense (then h->4h) weight asked into L2 before its attention "
                             "(model.set_l2_prefetch; 0: off)")
    args = parser.parse_args()
    if args.full_size:
        args.shape = "full"
    return args


def add_blas(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blas", choices=("auto", *BLAS_LIBRARIES), default="auto",
                        help="on CUDA, the BLAS library for the whole run, as [serving] blas: auto (the default, as "
                             "glmbot serve: the faster of the two over the decode products at --streams rows), "
                             "cublas, cublaslt")


def apply_blas(args: argparse.Namespace, model, rows: int) -> str:
    """Set --blas for `model` before any graph capture (graphs keep their kernels); what was chosen, in words."""
    if not args.device.startswith("cuda"):
        if args.blas != "auto":
            raise SystemExit(f"--blas {args.blas} chooses a CUDA library; the run is on {args.device} (leave --blas out)")
        return ""
    choice = choose_blas(model, rows, args.blas, deterministic=args.deterministic, source="--blas")
    return choice.describe() if choice else ""


def add_slot_attention(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slot-attention", choices=SLOT_ATTENTION_MODES, default=DEFAULT_SLOT_ATTENTION,
                        help="which forwards attend in one kernels.slot_attention call a layer (CUDA, Triton): "
                             "all (the default, as glmbot serve), mixed (decode steps with prompts inside only), "
                             "off (each part gathers its rows' slots and attends with a mask, grouped cuDNN)")


def run_scenarios(args: argparse.Namespace, model, tok) -> tuple[list[Measured], Callable[[], list]]:
    """Every scenario of the module docstring, in order; the baseline first."""
    prompts = make_prompts(args.streams, args.prompt_len, tok)
    prefixes = make_prefixes(model, args.domains, args.prefix_len, spread=False)
    spread = make_prefixes(model, args.domains, args.prefix_len, spread=True)
    settings = Settings()
    settings.serving.prefix_cache_mib = 1 << 16

    def new_engine(kvs, **kw) -> Engine:
        return Engine(model, tok, prefixes=kvs, settings=settings, max_batch_size=args.streams,
                      max_len=args.prompt_len + args.max_new_tokens, max_prefix_len=args.prefix_len,
                      prefill_token_budget=1 << 15, **kw)

    def best(run: Callable[[], Measured]) -> Measured:
        return best_of(args.repeat, run)

    names, few, new = list(prefixes), prompts[:args.baseline_streams], args.max_new_tokens
    rows = [best(lambda: run_generate_baseline(model, few, prefixes, new))]
    with new_engine(prefixes, cuda_graph=args.cuda_graph) as engine:
        run_engine(engine, "warm-up", requests_for(prompts, names, 4))  # loads prefixes, warms kernels
        rows.append(best(lambda: run_engine(engine, "engine, one at a time", requests_for(few, names, new), True)))
        rows.append(best(lambda: run_engine(engine, f"engine, {args.streams} streams, 1 domain",
                                            requests_for(prompts, names[:1], new))))
        rows.append(best(lambda: run_engine(engine, f"engine, {args.streams} streams, {args.domains} domains",
                                            requests_for(prompts, names, new))))
        if args.cuda_graph:
            console.print("GPU-only decode step (graph replay, no host work): " + ", ".join(
                f"batch {b}: {replay_ms(engine, b):.2f} ms" for b in engine.scheduler.buckets if b in (1, args.streams)))
    if args.context:
        # As `glmbot serve` sizes its rows ([generation] max_length): every row has room for --context
        # tokens, while these streams use prompt + new tokens of it.
        for buckets in (True, False):
            with Engine(model, tok, prefixes=prefixes, settings=settings, max_batch_size=args.streams,
                        max_len=args.context, max_prefix_len=args.prefix_len, prefill_token_budget=1 << 15,
                        cuda_graph=args.cuda_graph, kv_length_buckets=buckets) as engine:
                run_engine(engine, "warm-up", requests_for(prompts, names, 4))
                reads = "the KV slots its rows reach" if buckets else "all KV slots"
                rows.append(best(lambda: run_engine(
                    engine, f"engine, {args.streams} streams, {args.domains} domains, rows of {args.context} "
                            f"tokens, each step reading {reads}", requests_for(prompts, names, new))))
    mixed_p = list(spread) + [None]
    with new_engine(spread, cuda_graph=args.cuda_graph) as engine:
        run_engine(engine, "warm-up", requests_for(prompts, mixed_p, 4))
        shortest = min(v.shape[2] for v in spread.values())
        name = f"engine, {args.streams} streams, {args.domains} domains of P {shortest}..{args.prefix_len} + plain base"
        rows.append(best(lambda: run_engine(engine, name, requests_for(prompts, mixed_p, new))))

    def check() -> tuple[list, list, list]:
        """Tokens of an eager static engine, a CUDA-graph engine that does not pipeline, and the
        pipelined CUDA-graph engine again (run-to-run control: which requests share a prefill
        forward depends on thread timing, and bf16 rounding follows the batch shape)."""
        with new_engine(prefixes, static_shapes=True) as eager:
            reference = run_engine(eager, "eager static", requests_for(prompts, names, new)).outputs
        with new_engine(prefixes, cuda_graph=True, pipeline=False) as synchronous:
            unpiped = run_engine(synchronous, "graphs, synchronous", requests_for(prompts, names, new)).outputs
        with new_engine(prefixes, cuda_graph=True) as again:
            return reference, unpiped, run_engine(again, "graphs, again", requests_for(prompts, names, new)).outputs
    return rows, check


def verify_prefixes(model, domains: int, length: int) -> dict[str, torch.Tensor]:
    """Random prefix KV per domain, lengths P, P, P/2, P/2, P/4, ...: mixed, and pairs of one length to swap."""
    return random_prefixes(model.config, [max(1, length >> (i // 2)) for i in range(domains)], model.device,
                           model.dtype)


def run_arrivals(args: argparse.Namespace, model, tok) -> None:
    """--arrival-rate: requests arrive one by one at that mean rate (Poisson, fixed seed) instead of
    all at once, over --domains domains, once per --prefill-tokens budget (the same arrivals each
    time). The table gives time to first token p50/p99 (submit to first token: queueing and
    prefill included), the gap between two decode steps p50/p99/max (what a running stream waits
    per token: a prefill between them lengthens it), the rate achieved, end-to-end tokens/s, the
    mean rows per decode step and how busy the engine was (below 100% the arrivals, not the
    engine, bound the rate). Prefill and decode are not split: with pipelining a prefill waits for
    the decode step in flight, so host-side timers would charge that step to the prefill."""
    prefixes = make_prefixes(model, args.domains, args.prefix_len, spread=False)
    names, count = list(prefixes), args.arrival_count
    settings = Settings()
    settings.serving.prefix_cache_mib = 1 << 16
    gaps = torch.empty(count).exponential_(args.arrival_rate, generator=torch.Generator().manual_seed(2)).tolist()
    prompts = make_prompts(count, args.prompt_len, tok)
    table = Table(title=f"Steady arrivals: {count} requests at {args.arrival_rate:g}/s over {args.domains} domains, "
                        f"prompt {args.prompt_len}, {args.max_new_tokens} new tokens", header_style="bold")
    for column in ("prefill tokens per step", "with decode", "prompt graphs", "TTFT p50 ms", "TTFT p99 ms",
                   "step gap p50 / p99 / max ms", "requests/s", "tokens/s end to end", "mean rows per step", "engine busy"):
        table.add_column(column, justify="right")
    for mode, graphs, budget in runs_of(args, [int(b) for b in args.prefill_tokens.split(",")]):
        settings.serving.prefill_with_decode = mode == "on"
        with Engine(model, tok, prefixes=prefixes, settings=settings, max_batch_size=args.streams,
                    max_len=args.prompt_len + args.max_new_tokens, max_prefix_len=args.prefix_len,
                    prefill_token_budget=budget, cuda_graph=args.cuda_graph,
                    prefill_graphs=graphs == "on") as engine:
            run_engine(engine, "warm-up", requests_for(make_prompts(args.streams, args.prompt_len, tok), names, 4))
            stats = engine.scheduler.stats
            step_gaps = time_decode_steps(engine.scheduler)
            before = (stats.decode_steps, stats.decode_s, stats.decode_tokens, stats.prefill_s)
            start, handles = time.perf_counter(), []
            due = start
            for gap, request in zip(gaps, requests_for(prompts, names, args.max_new_tokens)):
                due += gap
                time.sleep(max(0.0, due - time.perf_counter()))
                handles.append(engine.submit(request))
            results = [h.result() for h in handles]
            seconds = time.perf_counter() - start
            steps, row_steps = stats.decode_steps - before[0], stats.decode_tokens - before[2]
            busy = stats.decode_s - before[1] + stats.prefill_s - before[3]
        ttft = sorted(1e3 * r.timings.first_token_s for r in results if r.timings.first_token_s is not None)
        between = sorted(1e3 * g for g in step_gaps) or [float("nan")]
        tokens = sum(r.usage.completion_tokens for r in results)
        table.add_row(f"{budget:,}", mode, graphs, f"{percentile(ttft, 0.5):.1f}", f"{percentile(ttft, 0.99):.1f}",
                      f"{percentile(between, 0.5):.1f} / {percentile(between, 0.99):.1f} / {between[-1]:.1f}",
                      f"{count / seconds:.1f}", f"{tokens / seconds:,.0f}", f"{row_steps / max(steps, 1):.1f}",
                      f"{busy / seconds:.0%}")
    console.print(table)


def modes(args: argparse.Namespace) -> list[str]:
    return on_off("--prefill-with-decode", args.prefill_with_decode)


def on_off(flag: str, value: str) -> list[str]:
    chosen = [m.strip() for m in value.split(",")]
    if not chosen or any(m not in ("on", "off") for m in chosen):
        raise SystemExit(f"{flag} takes on, off or both (on,off), got {value!r}")
    return chosen


def runs_of(args: argparse.Namespace, budgets_or_waits: list[int]) -> list[tuple[str, str, int]]:
    """(prefill with decode, prompt graphs, budget or wait steps) for every combination asked."""
    return [(mode, graphs, n) for mode in modes(args) for graphs in on_off("--prefill-graphs", args.prefill_graphs)
            for n in budgets_or_waits]


def run_closed_loop(args: argparse.Namespace, model, tok) -> None:
    """--closed-loop: see the module docstring."""
    prefixes = make_prefixes(model, args.domains, args.prefix_len, spread=False)
    names, count = list(prefixes), args.closed_loop
    if count < args.streams:
        raise SystemExit(f"--closed-loop {count}: give at least --streams ({args.streams}) requests, so that every "
                         "client sends one and the loop has a steady part")
    settings = Settings()
    settings.serving.prefix_cache_mib = 1 << 16
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(args.max_new_tokens // 2, args.max_new_tokens * 3 // 2 + 1, (count,), generator=g).tolist()
    requests = [GenerationRequest(prompt_ids=p, domain=names[i % len(names)], max_new_tokens=lengths[i],
                                  do_sample=False, ignore_eos=True)
                for i, p in enumerate(make_prompts(count, args.prompt_len, tok))]
    budget = int(args.prefill_tokens.split(",")[-1])
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    table = Table(title=f"Closed loop (thread switch interval {sys.getswitchinterval() * 1e3:g} ms): {args.streams} "
                        f"clients, {count} requests over {args.domains} domains, prompt {args.prompt_len}, "
                        f"{args.max_new_tokens // 2}-{args.max_new_tokens * 3 // 2} new tokens, prefill {budget} "
                        "tokens a step", header_style="bold")
    timelines: list[str] = []
    for column in ("with decode", "prompt graphs", "wait steps", "hand-off wait", "plain step ms",
                   "tokens/s at that step", "tokens/s end to end", "of the step figure", "steady part: tokens/s",
                   "of the step figure", "mean step ms in the loop", "rows per step (steady)",
                   "wall ms per step (steady)", "steps with prompts (graphed)", "prompt forwards (graphed)",
                   "compiles in the loop", "hand-offs taken / waits (µs each)", "TTFT mean / p50 / p99 ms",
                   "to a row p50 / p99 ms", "result to client p50 / p99 ms"):
        table.add_column(column, justify="right")
    runs = [(*run, handoff) for run in runs_of(args, [int(w) for w in args.prefill_wait_steps.split(",")])
            for handoff in on_off("--handoff-wait", args.handoff_wait)]
    for mode, graphs, wait, handoff in runs:
        settings.serving.prefill_with_decode = mode == "on"
        settings.serving.prefill_wait_steps = wait
        with Engine(model, tok, prefixes=prefixes, settings=settings, max_batch_size=args.streams,
                    max_len=args.prompt_len + args.max_new_tokens * 3 // 2, max_prefix_len=args.prefix_len,
                    prefill_token_budget=1 << 15, cuda_graph=args.cuda_graph,
                    prefill_graphs=graphs == "on", handoff_wait=handoff == "on") as engine:
            batch = requests_for(make_prompts(args.streams, args.prompt_len, tok), names, args.max_new_tokens)
            run_engine(engine, "warm-up", batch)
            plain = best_of(args.repeat, lambda: run_engine(engine, "all at once", batch))  # one prefill forward
            engine.scheduler.prefill_token_budget = budget
            stats = engine.scheduler.stats  # live: the clients read the steady part's marks from it
            before, compiled, decode_s = engine.stats(), counters["stats"]["unique_graphs"], stats.decode_s
            pending, results, wakes, lock = list(reversed(requests)), [], [], threading.Lock()
            steady: list[tuple[float, int, int]] = []  # (time, decode tokens, decode steps): steady part's start, end

            def client() -> None:
                while True:
                    with lock:
                        if not pending:
                            return
                        request = pending.pop()
                        if len(pending) in (count * 3 // 4, 0):
                            steady.append((time.perf_counter(), stats.decode_tokens, stats.decode_steps))
                    submitted = time.perf_counter()
                    result = engine.generate(request)
                    results.append(result)
                    # the result's way to the client: from the engine finishing the row to generate() returning
                    wakes.append(time.perf_counter() - submitted - result.timings.total_s)

            clients = [threading.Thread(target=client) for _ in range(args.streams)]
            cuda = engine.scheduler.device.type == "cuda"
            timeline = StepTimeline(engine.scheduler, args.profile_steps) if cuda else None
            start = time.perf_counter()
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            seconds = time.perf_counter() - start
            if timeline is not None:
                label = f"with decode {mode}, prompt graphs {graphs}, wait {wait}, hand-off wait {handoff}"
                timelines.append(f"{label}: {timeline.summary(label)}")
            after = engine.stats()

            def delta(name: str) -> float:
                return getattr(after, name) - getattr(before, name)

            loop_step = 1e3 * (stats.decode_s - decode_s) / max(delta("decode_steps"), 1)
            compiles = counters["stats"]["unique_graphs"] - compiled
            forwards = f"{delta('prefill_forwards')} ({delta('prefill_replays')})"
            mixed = f"{delta('mixed_steps')} ({delta('mixed_replays')})"
            waits = delta("handoff_taken") + delta("handoff_missed")
            handoffs = f"{delta('handoff_taken')} / {waits} ({1e6 * delta('handoff_s') / max(waits, 1):.0f})"
        tokens = sum(r.usage.completion_tokens for r in results)
        figure = 1e3 * args.streams / plain.step_ms
        (t0, n0, s0), (t1, n1, s1) = steady
        ttft = sorted(1e3 * r.timings.first_token_s for r in results if r.timings.first_token_s is not None)
        admitted = sorted(1e3 * r.timings.queued_s for r in results)
        wakes = sorted(1e3 * w for w in wakes)
        table.add_row(mode, graphs, str(wait), handoff, f"{plain.step_ms:.2f}", f"{figure:,.0f}",
                      f"{tokens / seconds:,.0f}",
                      f"{tokens / seconds / figure:.1%}", f"{(n1 - n0) / (t1 - t0):,.0f}",
                      f"{(n1 - n0) / (t1 - t0) / figure:.1%}", f"{loop_step:.2f}", f"{(n1 - n0) / max(s1 - s0, 1):.1f}",
                      f"{1e3 * (t1 - t0) / max(s1 - s0, 1):.2f}", mixed, forwards, str(compiles), handoffs,
                      f"{statistics.mean(ttft):.1f} / {percentile(ttft, 0.5):.1f} / {percentile(ttft, 0.99):.1f}",
                      f"{percentile(admitted, 0.5):.1f} / {percentile(admitted, 0.99):.1f}",
                      f"{percentile(wakes, 0.5):.1f} / {percentile(wakes, 0.99):.1f}")
    console.print(table)
    if timelines:
        console.print("The GPU in the loop (CUDA events around each decode step's queued work):")
        for line in timelines:
            console.print(f"  {line}")


@dataclasses.dataclass
class StepMark:
    """One launch in StepTimeline: its kind, CUDA events at its start and end and around its first
    graph replay (None without one), the host's seconds in it, and its captured prompt shape."""

    kind: str
    start: torch.cuda.Event
    end: torch.cuda.Event
    replay: torch.cuda.Event | None
    replayed: torch.cuda.Event | None
    host_s: float
    shape: tuple | None


class StepTimeline:
    """CUDA events around the work each decode step queues (its launch: the decode forward, prompts
    inside it or forwards of their own beside it, the token choice and copy), recorded on the
    engine's stream while the closed loop runs: the GPU's time per kind of step, and how long it
    sat idle between steps (work queued between launches, such as a row's prefix copy, counts as
    idle here). Around the launch's first decode or mixed graph replay, two more events: from the
    step's start to the first, the GPU (done with the step before) waiting for the host to finish
    preparing the launch (a host late by less than its launch time shows there, not as idle); from
    the first to the second, the graph's own run (prompt forwards beside, replayed from their own
    graphs, are not in it). Also the host's time inside each launch, the steps with prompts inside
    by captured (rows, tokens, KV length) shape, and with profile_steps a torch.profiler window of
    that many launches from the PROFILE_FROM-th. Instruments the scheduler's `_launch`,
    `_mixed_shape` and graph replays until `summary`."""

    PROFILE_FROM = 300  # launches before the profiled window (past the loop's start)

    def __init__(self, scheduler, profile_steps: int = 0):  # noqa: ANN001 - a glmbot Scheduler
        self.scheduler = scheduler
        self.profile_steps, self.profile, self.profiled = profile_steps, None, collections.Counter()
        self.graphs = {name: getattr(scheduler, name) for name in ("graphed", "graphed_mixed")}
        self.marks: list[StepMark] = []
        self.shape = self.replay = self.replayed = None
        scheduler._launch, scheduler._mixed_shape = self._timed, self._shaped  # shadow the methods until summary
        for name, graphs in self.graphs.items():
            if graphs is not None:
                setattr(scheduler, name, self._marked(graphs))

    def _marked(self, graphs):  # noqa: ANN001, ANN202 - a GraphedDecode / GraphedMixed
        def replay(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            first = self.replay is None
            if first:
                self.replay = torch.cuda.Event(enable_timing=True)
                self.replay.record()
            out = graphs(*args, **kwargs)
            if first:
                self.replayed = torch.cuda.Event(enable_timing=True)
                self.replayed.record()
            return out
        return replay

    def _shaped(self, *args, **kwargs):  # noqa: ANN002, ANN003 - Scheduler._mixed_shape's
        self.shape = type(self.scheduler)._mixed_shape(self.scheduler, *args, **kwargs)
        return self.shape

    def _timed(self, *args, **kwargs):  # noqa: ANN002, ANN003 - Scheduler._launch's
        stats = self.scheduler.stats
        before = (stats.mixed_steps, stats.prefill_forwards)
        self.shape = self.replay = self.replayed = None
        if self.profile_steps and len(self.marks) == self.PROFILE_FROM and self.profile is None:
            self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self.profile.start()
        elif self.profile is not None and len(self.marks) == self.PROFILE_FROM + self.profile_steps:
            self._stop_profile()
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        host = time.perf_counter()
        launched = type(self.scheduler)._launch(self.scheduler, *args, **kwargs)
        host = time.perf_counter() - host
        if launched is None:  # nothing was launched: not a step
            return None
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        kind = ("prompts inside" if stats.mixed_steps > before[0] else
                "prompt forwards beside" if stats.prefill_forwards > before[1] else "decode only")
        shape = self.shape if kind == "prompts inside" else None
        self.marks.append(StepMark(kind, start, end, self.replay, self.replayed, host, shape))
        if self.profile is not None and self.profile_steps and len(self.marks) - 1 >= self.PROFILE_FROM:
            self.profiled[kind if shape is None else f"{kind} {shape}"] += 1
        return launched

    def _stop_profile(self) -> None:
        if self.profile is not None and self.profile_steps:
            self.profile.stop()
            self.profile_steps = 0  # stopped: no more launches counted

    def summary(self, label: str) -> str:
        """Restore the scheduler; the timeline as one line (and, with profile_steps, print the
        window's kernels under `label`)."""
        for name in ("_launch", "_mixed_shape"):
            vars(self.scheduler).pop(name, None)
        for name, graphs in self.graphs.items():
            setattr(self.scheduler, name, graphs)
        torch.cuda.synchronize()
        if self.profile is not None:
            self._stop_profile()
            steps = sum(self.profiled.values())
            print(f"Kernels of {steps} steps of the loop ({label}; {dict(self.profiled)}):")
            print_kernel_table(self.profile, steps, "step", 30, per_call=True)
        elif self.profile_steps:
            print(f"No kernel table ({label}): the loop had {len(self.marks)} launches, the profiled window starts "
                  f"at launch {self.PROFILE_FROM}")
        if not self.marks:
            return "no decode steps"
        busy: dict[str, list[StepMark]] = collections.defaultdict(list)
        shapes: dict[tuple, list[StepMark]] = collections.defaultdict(list)
        for mark in self.marks:
            busy[mark.kind].append(mark)
            if mark.shape is not None:
                shapes[mark.shape].append(mark)
        idle = sum(a.end.elapsed_time(b.start) for a, b in zip(self.marks, self.marks[1:]))
        span = self.marks[0].start.elapsed_time(self.marks[-1].end)
        kinds = ", ".join(f"{kind} {len(marks)} x {self._ms(marks)} ms (host in launch "
                          f"{statistics.mean(1e3 * m.host_s for m in marks):.2f} ms{self._graph_ms(marks)})"
                          for kind, marks in sorted(busy.items()))
        common = sorted(shapes.items(), key=lambda item: -len(item[1]))[:6]
        inside = ", ".join(f"{shape} {len(marks)} x {self._ms(marks)} ms{self._graph_ms(marks)}"
                           for shape, marks in common)
        return (f"{kinds}; idle between steps {idle / span:.1%} of {span / 1e3:.1f} s"
                + (f"; steps with prompts inside by (rows, tokens, KV slots): {inside}" if inside else ""))

    @staticmethod
    def _ms(marks: list[StepMark]) -> str:
        return f"{statistics.mean(m.start.elapsed_time(m.end) for m in marks):.2f}"

    @staticmethod
    def _graph_ms(marks: list[StepMark]) -> str:
        """Over the steps with a graph replay: GPU waiting for the host before it, and its run."""
        graphed = [m for m in marks if m.replay is not None]
        if not graphed:
            return ""
        return (f", {len(graphed)} graphed: GPU waiting for the launch "
                f"{statistics.mean(m.start.elapsed_time(m.replay) for m in graphed):.2f} ms, graph replay "
                f"{statistics.mean(m.replay.elapsed_time(m.replayed) for m in graphed):.2f} ms")


def best_of(repeat: int, run: Callable[[], Measured]) -> Measured:
    """The fastest of `repeat` runs: a shared machine is noisy."""
    return max((run() for _ in range(repeat)), key=lambda m: m.tokens_per_s)


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_decode_steps(scheduler) -> list[float]:
    """Seconds between consecutive decode steps of the scheduler from now on (what a running
    stream waits per token); a step that decodes nothing (no stream was running) starts afresh."""
    gaps: list[float] = []
    last: float | None = None
    step = scheduler.step

    def timed() -> None:
        nonlocal last
        before = scheduler.stats.decode_steps
        step()
        now = time.perf_counter()
        if scheduler.stats.decode_steps == before:
            last = None
            return
        if last is not None:
            gaps.append(now - last)
        last = now
    scheduler.step = timed
    return gaps


def run_verify(args: argparse.Namespace, model, tok) -> bool:
    """The --verify table; True when the clean run passes and every injected fault fails."""
    prefixes = verify_prefixes(model, args.domains, args.prefix_len)
    n = args.prompt_len
    cases = mixed_cases(prefixes, rows=args.streams, new_tokens=args.verify_tokens, vocab=(3, tok.sp_size),
                        prompt_lens=(n, n // 2 + 3, n // 4 + 1, 3 * n // 4 + 2, 7))
    settings = Settings()
    settings.serving.prefix_cache_mib = 1 << 16
    faults = [None, SwappedPrefixes.between(cases, prefixes), StaleSlot(len(cases) // 2 + 1)]
    table = Table(title=f"Teacher-forced logits of the engine vs an eager forward ({model.dtype}, "
                        f"{'CUDA graphs' if args.cuda_graph else 'eager decode'}{', compiled' if args.compile else ''})",
                  header_style="bold")
    for column in ("run", "rows", "logit vectors", "max abs err", "max rel err", "worst (row, token)", "tolerance",
                   "result", "expected"):
        table.add_column(column, justify="left" if column in ("run", "result", "expected") else "right")
    ok = True

    def add(report, expected: bool | None, seconds: float) -> None:  # noqa: ANN001 - a VerifyReport
        judged = "-" if expected is None else "yes" if expected else "NO"
        table.add_row(report.run, str(report.rows), str(report.logits), f"{report.max_abs:.3g}",
                      f"{report.max_rel:.3g}", str(report.worst), f"{report.tolerance:.3g}",
                      "pass" if report.passed else "FAIL", f"{judged} ({seconds:.1f} s)")

    if model.dtype != torch.float32:  # the baseline: what rounding alone does, between two eager forwards
        # Reported, not judged: the engine and its eager reference share the same bf16 GEMMs, while an fp32
        # forward differs from a bf16 one at every rounding, which random full-size weights amplify (H100,
        # 2026-12-06: 1.44 against the tolerance 0.787, the engine 0.36, the faults 5.1-6.5; docs/PERFORMANCE.md).
        start = time.perf_counter()
        add(rounding_noise(model, cases[:args.domains + 1], prefixes), None, time.perf_counter() - start)
    # Whole prompts in one forward first; then a budget that has most prompts go in, in chunks, inside
    # the decode steps of the rows already decoding ([serving] prefill_with_decode).
    settings.serving.prefill_with_decode = True
    for budget in (1 << 15, args.verify_prefill_tokens):
        with Engine(model, tok, prefixes=prefixes, settings=settings, max_batch_size=args.streams,
                    max_len=n + args.verify_tokens + 8, max_prefix_len=args.prefix_len, prefill_token_budget=budget,
                    cuda_graph=args.cuda_graph, static_shapes=args.cuda_graph) as engine:
            for fault in faults:
                start, mixed = time.perf_counter(), engine.stats().mixed_steps
                report = verify_engine(engine, cases, prefixes, fault=fault)
                mixed = engine.stats().mixed_steps - mixed
                report = dataclasses.replace(report, run=f"{report.run}, prefill {budget} tokens a step"
                                             + (f" ({mixed} decode steps with prompt chunks)" if mixed else ""))
                expected = report.passed if fault is None else (report.fault_injected and not report.passed)
                if budget != 1 << 15 and not mixed:
                    console.print(f"[red]prefill {budget} tokens a step: no decode step took prompt chunks[/red]")
                    expected = False
                ok &= expected
                add(report, expected, time.perf_counter() - start)
    console.print(table)
    console.print("errors: max over each logit vector of |engine - eager| / RMS of the eager logits; tolerance: "
                  "glmbot.serving.verify.tolerance (dtype rounding through 2L+1 sublayers, max over the vocabulary)")
    return ok


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    set_slot_attention(args.slot_attention)  # before any engine captures its graphs
    model, tok = build_model(args)
    blas = apply_blas(args, model, args.streams)
    model.set_deterministic_decode(args.deterministic)
    model.set_l2_prefetch(int(args.l2_prefetch * (1 << 20)))
    if args.compile:
        model.compile_dense()  # fused rmsnorm and silu*mul; captured inside the CUDA graphs
    family = family_named(args.family)
    what = (f"{family.display} {args.shape} shape ({model.config.num_layers} layers, vocab "
            f"{model.config.padded_vocab_size}), random {str(model.dtype).removeprefix('torch.')}"
            if args.shape else args.model)
    console.print(f"{what} on {model.device} | "
                  f"{args.streams} streams, {args.domains} domains, P={args.prefix_len}, prompt {args.prompt_len}, "
                  f"{args.max_new_tokens} new tokens{', CUDA graphs' if args.cuda_graph else ''}"
                  f"{f' | {escape(blas)}' if blas else ''}"
                  f"{f' | L2 prefetch {args.l2_prefetch:g} MiB a layer' if args.l2_prefetch else ''}")
    if args.verify:
        sys.exit(0 if run_verify(args, model, tok) else 1)
    if args.arrival_rate > 0:
        return run_arrivals(args, model, tok)
    if args.closed_loop > 0:
        return run_closed_loop(args, model, tok)
    rows, check = run_scenarios(args, model, tok)
    print_table(rows, "Serving throughput (greedy, eos ignored)")
    same = sum(a == b for a, b in zip(rows[0].outputs, rows[1].outputs))
    note = " (bf16: rounding differs between kernels and may flip a token)" if model.dtype != torch.float32 else ""
    console.print(f"engine one-at-a-time tokens equal to generate(): {same}/{rows[0].streams} streams{note}")
    if model.device.type == "cuda":
        print_floor(model, rows)
    if args.check and args.cuda_graph:
        mixed, (reference, synchronous, again) = rows[3].outputs, check()
        equal = sum(a == b for a, b in zip(mixed, reference))
        console.print(f"CUDA-graph tokens equal to the eager engine at the same shapes: {equal}/{len(mixed)} streams")
        same = sum(a == b for a, b in zip(mixed, synchronous))
        control = sum(a == b for a, b in zip(mixed, again))
        console.print(f"pipelined tokens equal to the same graphs run synchronously: {same}/{len(mixed)} streams; "
                      f"to the pipelined engine run again: {control}/{len(mixed)} (run-to-run control)")

if __name__ == "__main__":
    main()
