"""HTTP load benchmark: many concurrent streaming clients of several domains against `glmbot serve`'s app.

    python bench/http_load.py                        # 200 clients, 4 domains, builtin:tiny on CPU
    python bench/http_load.py --clients 400 --max-tokens 64
    python bench/http_load.py --sensitive-words 海盐,优选  # the sensitive-word filter on
    python bench/http_load.py --disconnect-every 0 --compare-engine  # HTTP vs the engine alone, same load
    python bench/http_load.py --url http://127.0.0.1:8000  # an already running `glmbot serve`
    python bench/http_load.py --device cuda --shape full --disconnect-every 0 --compare-engine  # one GPU
    python bench/http_load.py --duration 20 --max-tokens 128 --compare-engine  # steady state, vs the engine alone

Without --url, a server process (the builtin tiny base, random prefixes for --domains domains,
keyword routing, the default plugins of the repo's plugins/ folder, conversation log off) listens
on 127.0.0.1; this process is the clients (asyncio + httpx), so they do not share the server's
interpreter. With --url the clients load that server instead: they ask its /v1/models for the
domains, name them (no 'auto' clients: its routing rules are unknown here) and send --api-key
(or $GLMBOT_API_KEYS's first key). Scenarios, each streaming with exactly --max-tokens tokens per
answer (greedy, eos ignored):

  one at a time   --baseline requests, each sent after the previous ended: what a client gets
                  from a server that does not batch. Ratios are vs this.
  concurrent      --clients clients at once, a quarter on model 'auto' (routed by keyword), the
                  rest naming their domain; every --disconnect-every-th client leaves after 3
                  chunks. /health is polled throughout.

Reported per scenario: time to first token (the first content chunk at the client) p50/p99,
latency, throughput, and how streamed the answers were: content chunks per answer and the time
from the first to the last one (an answer held back and sent whole has 1 chunk and ~0 ms).

--compare-engine then sends the same concurrent requests straight into the same engine (a child
process built like the server's, no HTTP) and prints the HTTP tokens/s as a share of it: what the
HTTP layer costs at that concurrency (issue 20's target: within 10%).

--duration S measures a steady state instead: every client sends its request again as soon as the
last one ended, and the engine's decode tokens (from /metrics) are counted over S seconds after
--warmup; with --compare-engine the engine alone gets the same clients (threads, no HTTP) and the
same window. Its report splits the window into decode, prefill and idle time of the engine thread.

Checks (the run fails otherwise): every staying client gets all its tokens, [DONE] and the route
it should (the `glmbot` extension); every leaving client's request is cancelled in the engine and
its row freed; /health answers 200 throughout. Shared 2-core machines are noisy: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 160)
REPO = Path(__file__).resolve().parents[1]  # its glmbot.toml defaults load the plugins of REPO/plugins
DOMAINS = {"support": "退货", "ads": "文案", "hr": "工资", "legal": "合同", "it": "电脑", "sales": "报价"}
QUESTIONS = ["请问多久能到账？", "帮我写一段介绍", "这个怎么处理比较好？", "能详细说说吗？"]


# ---- the server process ------------------------------------------------------------------------------

def bench_engine(args: argparse.Namespace):
    """The engine over the builtin tiny base (or, with --shape full, random 6B-shape weights) with
    random prefixes, keyword routing and the repo's plugins (the caller closes it: `with`). Also the
    engine process's build function of --engine-process."""
    import torch

    from glmbot import load_base
    from glmbot.model.prefix import PrefixEncoder
    from glmbot.plugins import get_manager
    from glmbot.serving.engine import Engine
    from glmbot.serving.factory import fast_path_options
    from glmbot.serving.router import DomainProfile, Router

    names = list(DOMAINS)[:args.domains]
    if args.device == "cpu":
        torch.set_num_threads(1)  # the machine's other core runs the clients
    if args.shape == "full":
        model, tok, prefixes = full_shape(args.device, names)
    else:
        model, tok = load_base("builtin:tiny", device=args.device)
        prefixes = {}
        for seed, name in enumerate(names):
            torch.manual_seed(seed)
            encoder = PrefixEncoder(model.config, 16).to(args.device)
            with torch.no_grad():
                encoder.embedding.weight.normal_(0, 1.0)
                prefixes[name] = encoder.kv()
    router = Router([DomainProfile(name, keywords=[DOMAINS[name]]) for name in names])
    settings = bench_settings(args)
    plugins = get_manager(settings)  # the default [plugins] paths: the repo's plugins/
    print(f"{'engine' if args.engine_only else 'server'}: plugins {', '.join(sorted(plugins.records))}; answer "
          f"filters {', '.join(n for n, _ in plugins.collect('register_answer_filters')) or 'none'}", flush=True)
    # On CUDA: CUDA graphs and compiled parts, as `glmbot serve` runs (glmbot/serving/factory.py).
    return Engine(model, tok, prefixes=prefixes, router=router, settings=settings,
                  max_len=256 if args.shape == "tiny" else 512, plugins=plugins, **fast_path_options(settings, model))


def bench_settings(args: argparse.Namespace):
    from glmbot.config import settings_from_dict

    words = [w for w in args.sensitive_words.split(",") if w]
    serving = {"max_batch_size": args.rows}
    if args.prefill_wait_steps is not None:
        serving["prefill_wait_steps"] = args.prefill_wait_steps
    return settings_from_dict({"server": {"log_conversations": False}, "serving": serving,
                               "plugins": {"sensitive_words": words}}, root=REPO)



def full_shape(device: str, names: list[str]):
    """Random bf16 weights of ChatGLM2-6B's shape on the GPU with the builtin tokenizer, the output
    layer cut to that tokenizer's vocabulary (so every sampled id streams as text), and random
    prefixes of 16..128 positions."""
    import torch

    from glmbot.model.family import family_named
    from glmbot.model.loading import resolve_base
    from glmbot.model.tokenizer import ChatGLMTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving_bench import family_config, make_prefixes, random_model

    if not device.startswith("cuda"):
        raise SystemExit("--shape full needs --device cuda (12.5 GB of bf16 weights)")
    tok = ChatGLMTokenizer.from_pretrained(resolve_base("builtin:tiny"))
    config = family_config(family_named("chatglm2"), "full")
    config.padded_vocab_size = -(-tok.vocab_size // 64) * 64
    model = random_model(config, torch.bfloat16, device)
    return model, tok, dict(zip(names, make_prefixes(model, len(names), 128, spread=True).values()))


def serve(args: argparse.Namespace) -> None:
    """Child process: the tiny engine served on loopback."""
    from glmbot.http import create_app, run_server

    fast = {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")}
    print(f"server: uvicorn with {'uvloop' if fast['uvloop'] else 'asyncio'} and "
          f"{'httptools' if fast['httptools'] else 'h11'}", flush=True)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    print(f"server: GIL switch interval {sys.getswitchinterval() * 1e3:g} ms", flush=True)
    if args.engine_process:  # the engine in a process of its own, as `glmbot serve` runs on CUDA
        from glmbot.model.loading import resolve_base
        from glmbot.model.tokenizer import ChatGLMTokenizer
        from glmbot.serving.engine_process import ProcessEngine

        print("server: the engine in its own process", flush=True)
        tokenizer = ChatGLMTokenizer.from_pretrained(resolve_base("builtin:tiny"))  # both shapes use it
        with ProcessEngine(bench_engine, (args,), tokenizer) as engine:
            run_server(create_app(engine, settings=bench_settings(args)), "127.0.0.1", args.port, log_level="warning")
        return
    with bench_engine(args) as engine:
        run_server(create_app(engine, settings=engine.settings), "127.0.0.1", args.port, log_level="warning")


def engine_only(args: argparse.Namespace) -> None:
    """Child process: the concurrent scenario's requests straight into the same engine, no HTTP
    (what the HTTP layer is compared with); prints one JSON line of its figures."""
    from glmbot.serving.requests import GenerationRequest

    target = Target("", list(DOMAINS)[:args.domains], keywords=True)

    def requests(n: int) -> list:
        return [GenerationRequest(query=c.text, domain=None if c.model == "auto" else c.model,
                                  max_new_tokens=args.max_tokens, do_sample=False, ignore_eos=True)
                for c in plan_clients(n, target, 0)]
    if args.duration > 0:
        with bench_engine(args) as engine:
            engine.generate_many(requests(4))  # warm-up
            print(json.dumps(steady_engine_alone(engine, requests(args.clients), args)), flush=True)
        return
    with bench_engine(args) as engine:
        engine.generate_many(requests(4))  # warm-up
        before = engine.stats()
        started = time.perf_counter()
        results = engine.generate_many(requests(args.clients))
        seconds = time.perf_counter() - started
        after = engine.stats()
    tokens = sum(r.usage.completion_tokens for r in results)
    print(json.dumps({"tokens": tokens, "seconds": seconds,
                      "prefill_forwards": after.prefill_forwards - before.prefill_forwards,
                      "prefill_s": after.prefill_s - before.prefill_s}), flush=True)


def steady_engine_alone(engine, templates: list, args: argparse.Namespace) -> dict:
    """--duration: one thread per client sends its request again as soon as it ends; the engine's
    counters are read at the window's ends, as the HTTP run reads them from /metrics."""
    import dataclasses
    import threading

    start = time.time()
    window = (start + args.warmup, start + args.warmup + args.duration)

    def client(template) -> None:
        while time.time() < window[1]:
            engine.generate(dataclasses.replace(template))

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in templates]
    for t in threads:
        t.start()
    time.sleep(max(0.0, window[0] - time.time()))
    before, t0 = engine.stats(), time.time()
    time.sleep(max(0.0, window[1] - time.time()))
    after, t1 = engine.stats(), time.time()
    for t in threads:
        t.join()
    decode_s = lambda s: s.mean_decode_step_ms * s.decode_steps / 1e3  # noqa: E731
    return {"tokens": after.decode_tokens - before.decode_tokens, "seconds": t1 - t0,
            "prefill_forwards": after.prefill_forwards - before.prefill_forwards,
            "prefill_s": after.prefill_s - before.prefill_s, "idle_s": after.idle_s - before.idle_s,
            "decode_s": decode_s(after) - decode_s(before), "decode_steps": after.decode_steps - before.decode_steps}


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The options a child process (server or engine alone) needs to build the same engine."""
    flags = ["--domains", str(args.domains), "--rows", str(args.rows), "--sensitive-words", args.sensitive_words,
             "--device", args.device, "--shape", args.shape]
    flags += ["--prefill-wait-steps", str(args.prefill_wait_steps)] if args.prefill_wait_steps is not None else []
    flags += ["--engine-process"] if args.engine_process else []
    return flags + (["--switch-interval-ms", str(args.switch_interval_ms)] if args.switch_interval_ms is not None
                    else [])


def run_engine_alone(args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, __file__, "--engine-only", "--clients", str(args.clients), "--max-tokens",
                          str(args.max_tokens), "--duration", str(args.duration), "--warmup", str(args.warmup),
                          *engine_flags(args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_engine(args: argparse.Namespace, measured: Measured) -> None:
    """The engine alone at the same concurrency (a child process like the server's) beside the HTTP figure."""
    alone = run_engine_alone(args)
    engine_rate = alone["tokens"] / alone["seconds"]
    http_rate = sum(c.tokens for c in measured.clients if not c.leaves) / measured.load_s
    console.print(f"engine alone, the same {args.clients} requests at once (no HTTP): {engine_rate:,.0f} tokens/s; "
                  f"over HTTP {http_rate:,.0f} tokens/s = {http_rate / engine_rate:.0%} of it; the engine alone ran "
                  f"{alone['prefill_forwards']} prefill forwards, {alone['prefill_s'] / alone['seconds']:.0%} of its time")


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), *engine_flags(args)])
    url = f"http://127.0.0.1:{port}"
    wait = 60 if args.shape == "tiny" else 600  # the full shape compiles and captures its decode steps first
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if child.poll() is not None:  # it failed to start (its error is above): do not wait out the deadline
            raise SystemExit(f"the server process exited with code {child.returncode} before answering /health")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return child, url
        except httpx.TransportError:
            time.sleep(0.2)
    child.kill()
    raise SystemExit(f"the server did not start within {wait} s")


# ---- the clients -------------------------------------------------------------------------------------

@dataclass
class Client:
    model: str
    text: str
    expected: str | None  # the domain the route must name (None: the plain base)
    leaves: bool = False
    tokens: int = 0
    chunks: int = 0
    done: bool = False
    route: dict | None = None
    first_token_s: float | None = None
    last_chunk_s: float | None = None
    total_s: float | None = None
    error: str | None = None
    started_at: float = 0.0  # wall clock (time.time()) when the request was sent


@dataclass
class Target:
    """Where the clients go: the URL, its Bearer key, the models they name, and whether 'auto' clients may
    be checked (only on this benchmark's own server, whose keywords are DOMAINS)."""

    url: str
    names: list[str]
    keywords: bool
    api_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def remote_target(args: argparse.Namespace) -> Target:
    """An already running server: its domain models (or 'base' when it has none), up to --domains of them."""
    url = args.url.rstrip("/")
    key = args.api_key or next((k.strip() for k in os.environ.get("GLMBOT_API_KEYS", "").split(",") if k.strip()),
                               None)
    target = Target(url, [], keywords=False, api_key=key)
    cards = httpx.get(url + "/v1/models", headers=target.headers, timeout=30).raise_for_status().json()["data"]
    target.names = [c["id"] for c in cards if c.get("glmbot", {}).get("kind") == "domain"][:args.domains] or ["base"]
    return target


def plan_clients(n: int, target: Target, disconnect_every: int) -> list[Client]:
    clients = []
    for i in range(n):
        domain, question = target.names[i % len(target.names)], QUESTIONS[i % len(QUESTIONS)]
        if target.keywords and i % 4 == 3:  # routed: the keyword must send it to its domain
            clients.append(Client("auto", f"{DOMAINS[domain]}：{question}", domain))
        else:
            clients.append(Client(domain, question, None if domain == "base" else domain))
        clients[-1].leaves = disconnect_every > 0 and i % disconnect_every == disconnect_every - 1
    return clients


async def run_client(http: httpx.AsyncClient, url: str, client: Client, max_tokens: int) -> None:
    client.started_at = time.time()
    body = {"model": client.model, "messages": [{"role": "user", "content": client.text}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            client.error = f"{response.status_code}: {(await response.aread())[:200]!r}"
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                client.done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                client.error = event["error"]["message"]
                return
            client.route = event.get("glmbot", client.route)
            client.tokens = (event.get("usage") or {}).get("completion_tokens", client.tokens)
            if any(c["delta"].get("content") for c in event["choices"]):
                client.chunks += 1
                client.last_chunk_s = time.perf_counter() - started
                client.first_token_s = client.first_token_s or client.last_chunk_s
                if client.leaves and client.chunks >= 3:
                    break  # leaving the block closes the connection mid-stream
    client.total_s = time.perf_counter() - started


@dataclass
class HealthLog:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def poll_health(http: httpx.AsyncClient, url: str, stop: asyncio.Event, log: HealthLog) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = await http.get(url + "/health", timeout=10)
            if response.status_code != 200:
                log.failures.append(str(response.status_code))
        except httpx.HTTPError as exc:
            log.failures.append(type(exc).__name__)
        log.latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.2)


def run_load_in_processes(target: Target, clients: list[Client], max_tokens: int, timeout: float,
                          procs: int) -> tuple[float, HealthLog]:
    """The concurrent load from `procs` client processes (one event loop each, so that a fast server is
    not measured against one Python process's parsing speed); every process starts at the same moment."""
    import concurrent.futures
    import multiprocessing

    slices = [clients[i::procs] for i in range(procs)]
    start_at = time.time() + 2.0  # past the processes' start-up
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_load_slice, [target] * procs, slices, [max_tokens] * procs, [timeout] * procs,
                             [start_at] * procs, [i == 0 for i in range(procs)]))
    for part, (finished, _, health) in zip(slices, done):
        for mine, theirs in zip(part, finished):
            mine.__dict__.update(theirs.__dict__)
    return max(end for _, end, _ in done) - start_at, done[0][2]


def _load_slice(target: Target, clients: list[Client], max_tokens: int, timeout: float, start_at: float,
                poll: bool) -> tuple[list[Client], float, HealthLog]:
    time.sleep(max(0.0, start_at - time.time()))
    _, health = asyncio.run(run_load(target, clients, max_tokens, timeout, concurrent=True, poll=poll))
    return clients, time.time(), health


async def run_load(target: Target, clients: list[Client], max_tokens: int, timeout: float,
                   concurrent: bool, poll: bool = True) -> tuple[float, HealthLog]:
    url = target.url
    limits = httpx.Limits(max_connections=len(clients) + 4, max_keepalive_connections=len(clients) + 4)
    health, stop = HealthLog(), asyncio.Event()
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=target.headers) as http:
        poller = asyncio.create_task(poll_health(http, url, stop, health) if poll else stop.wait())
        started = time.perf_counter()
        if concurrent:
            await asyncio.wait_for(asyncio.gather(*(run_client(http, url, c, max_tokens) for c in clients)), timeout)
        else:
            for c in clients:
                await asyncio.wait_for(run_client(http, url, c, max_tokens), timeout)
        seconds = time.perf_counter() - started
        stop.set()
        await poller
    return seconds, health


# ---- steady state (--duration) ------------------------------------------------------------------------

async def run_steady(target: Target, templates: list[Client], max_tokens: int, end_at: float,
                     timeout: float) -> list[Client]:
    """Each template is one client that sends its request again as soon as the last one ended,
    until end_at; returns every request sent."""
    sent: list[Client] = []
    limits = httpx.Limits(max_connections=len(templates) + 4, max_keepalive_connections=len(templates) + 4)

    async def loop(http: httpx.AsyncClient, template: Client) -> None:
        while time.time() < end_at:
            client = Client(template.model, template.text, template.expected)
            sent.append(client)
            await run_client(http, target.url, client, max_tokens)

    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=target.headers) as http:
        await asyncio.wait_for(asyncio.gather(*(loop(http, t) for t in templates)),
                               end_at - time.time() + timeout)
    return sent


def _steady_slice(target: Target, templates: list[Client], max_tokens: int, start_at: float, end_at: float,
                  timeout: float) -> list[Client]:
    time.sleep(max(0.0, start_at - time.time()))
    return asyncio.run(run_steady(target, templates, max_tokens, end_at, timeout))


@dataclass
class Steady:
    requests: list[Client]
    window: tuple[float, float]
    engine: dict[str, float]  # counter deltas over the window

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]


def measure_steady(args: argparse.Namespace, target: Target) -> Steady:
    """--clients clients, each sending its request back to back; the engine's decode tokens over
    the window [start + --warmup, start + --warmup + --duration] from /metrics."""
    import concurrent.futures
    import multiprocessing
    import threading

    asyncio.run(run_load(target, plan_clients(4, target, 0), args.max_tokens, args.timeout, True))  # warm-up
    templates = plan_clients(args.clients, target, 0)
    start_at = time.time() + (2.0 if args.client_procs > 1 else 0.2)  # past the client processes' start-up
    end_at = start_at + args.warmup + args.duration
    samples: list[tuple[float, dict[str, float]]] = []

    def sample() -> None:
        for at in (start_at + args.warmup, end_at):
            time.sleep(max(0.0, at - time.time()))
            samples.append((time.time(), engine_counters(target)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    procs = max(1, args.client_procs)
    slices = [templates[i::procs] for i in range(procs)]
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_steady_slice, [target] * procs, slices, [args.max_tokens] * procs,
                              [start_at] * procs, [end_at] * procs, [args.timeout] * procs))
    sampler.join()
    (t0, c0), (t1, c1) = samples
    return Steady([c for part in parts for c in part], (t0, t1), {k: c1[k] - c0[k] for k in c1})


def report_steady(args: argparse.Namespace, m: Steady) -> tuple[float, list[str]]:
    """Print the window's figures; returns the HTTP tokens/s and the failed checks."""
    e, seconds = m.engine, m.seconds
    rate = e["glmbot_engine_decode_tokens_total"] / seconds
    inside = [c for c in m.requests if m.window[0] <= c.started_at and c.done and c.first_token_s is not None]
    first = [c.first_token_s for c in inside]
    steps = max(e["glmbot_engine_decode_steps_total"], 1)
    where = f"{'builtin:tiny' if args.shape == 'tiny' else 'ChatGLM2-6B shape (random bf16)'} on {args.device}" + \
            (', the engine in its own process' if args.engine_process else '')
    console.print(f"steady state over HTTP ({where}, {args.clients} clients back to back, {args.rows} rows, "
                  f"{args.max_tokens} tokens per answer, prefill_wait_steps "
                  f"{'as glmbot.toml' if args.prefill_wait_steps is None else args.prefill_wait_steps}), "
                  f"{seconds:.1f} s window: {rate:,.0f} tokens/s; {len(m.requests)} requests sent in all")
    if first:
        console.print(f"  TTFT of the {len(first)} requests sent in the window: p50 {percentile(first, 50) * 1e3:.0f} "
                      f"ms, p99 {percentile(first, 99) * 1e3:.0f} ms")
    console.print(f"  engine: {steps:.0f} decode steps, {e['glmbot_engine_decode_tokens_total'] / steps:.1f} rows per "
                  f"step, {1e3 * e['glmbot_engine_decode_seconds_total'] / steps:.2f} ms per step; share of the "
                  f"window: decode {e['glmbot_engine_decode_seconds_total'] / seconds:.0%}, prefill "
                  f"{e['glmbot_engine_prefill_seconds_total'] / seconds:.0%} "
                  f"({e['glmbot_engine_prefill_forwards_total'] / seconds:.1f} forwards/s), idle "
                  f"{e['glmbot_engine_idle_seconds_total'] / seconds:.0%}")
    return rate, check([c for c in m.requests if c.done or c.error], args.max_tokens, HealthLog())


def compare_steady(args: argparse.Namespace, http_rate: float) -> None:
    a = run_engine_alone(args)
    rate, seconds = a["tokens"] / a["seconds"], a["seconds"]
    steps = max(a["decode_steps"], 1)
    console.print(f"engine alone, the same {args.clients} clients back to back (no HTTP): {rate:,.0f} tokens/s; "
                  f"{1e3 * a['decode_s'] / steps:.2f} ms per step; share: decode {a['decode_s'] / seconds:.0%}, "
                  f"prefill {a['prefill_s'] / seconds:.0%} ({a['prefill_forwards'] / seconds:.1f} forwards/s), idle "
                  f"{a['idle_s'] / seconds:.0%}")
    console.print(f"over HTTP: {http_rate:,.0f} tokens/s = [bold]{http_rate / rate:.0%}[/] of the engine alone")


# ---- checks and report -------------------------------------------------------------------------------

def check(clients: list[Client], max_tokens: int, health: HealthLog) -> list[str]:
    problems = [f"{c.model} {c.text!r}: {c.error}" for c in clients if c.error]
    stayed = [c for c in clients if not c.leaves and not c.error]
    problems += [f"{c.model} {c.text!r}: ended without [DONE]" for c in stayed if not c.done]
    problems += [f"{c.model}: {c.tokens} tokens, not {max_tokens}" for c in stayed if c.tokens != max_tokens]
    problems += [f"{c.model} {c.text!r}: routed to {c.route and c.route['domain']}, not {c.expected}"
                 for c in stayed if not c.route or c.route["domain"] != c.expected]
    problems += [f"{c.model} {c.text!r}: {c.tokens} tokens came in {c.chunks} chunk(s): the stream was held back"
                 for c in stayed if c.chunks == 1 and c.tokens > 8]
    problems += [f"/health failed {len(health.failures)} time(s): {health.failures[:3]}"] if health.failures else []
    return problems


def wait_rows_freed(url: str, cancelled_before: int, leavers: int, timeout: float = 30) -> tuple[int, float]:
    """(requests cancelled during the run, seconds until every row was free)."""
    started = time.monotonic()
    while True:
        health = httpx.get(url + "/health", timeout=10).json()
        cancelled = health["finished"].get("cancelled", 0) - cancelled_before
        if (health["active_rows"] == 0 and health["queued"] == 0 and cancelled >= leavers) \
                or time.monotonic() - started > timeout:
            return cancelled, time.monotonic() - started
        time.sleep(0.1)


def engine_counters(target: Target) -> dict[str, float]:
    """The engine's decode counters from /metrics."""
    names = ("glmbot_engine_decode_steps_total", "glmbot_engine_decode_tokens_total",
             "glmbot_engine_decode_seconds_total", "glmbot_engine_prefill_forwards_total",
             "glmbot_engine_prefill_seconds_total", "glmbot_engine_idle_seconds_total")
    lines = httpx.get(target.url + "/metrics", headers=target.headers, timeout=10).text.splitlines()
    return {name: float(line.split()[1]) for line in lines for name in names if line.startswith(name + " ")}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def row(table: Table, name: str, clients: list[Client], seconds: float, base_rps: float | None) -> float:
    stayed = [c for c in clients if not c.leaves and c.done]
    tokens = sum(c.tokens for c in stayed)
    rps = len(stayed) / seconds
    first = [c.first_token_s for c in stayed if c.first_token_s is not None]
    spread = [c.last_chunk_s - c.first_token_s for c in stayed if c.first_token_s is not None]
    total = [c.total_s for c in stayed]
    table.add_row(name, str(len(clients)), str(len(stayed)), str(tokens), f"{seconds:.2f}", f"{rps:.1f}",
                  f"{tokens / seconds:.0f}", f"{percentile(first, 50) * 1e3:.0f}", f"{percentile(first, 99) * 1e3:.0f}",
                  f"{percentile(total, 50):.2f}", f"{percentile(total, 99):.2f}",
                  f"{statistics.mean(c.chunks for c in stayed):.1f}", f"{percentile(spread, 50) * 1e3:.0f}",
                  "1.00x" if base_rps is None else f"{rps / base_rps:.2f}x")
    return rps


@dataclass
class Measured:
    baseline: list[Client]
    base_s: float
    base_health: HealthLog
    clients: list[Client]
    load_s: float
    health: HealthLog
    leavers: int
    cancelled: int
    freed_s: float
    engine: dict[str, float]


def measure(args: argparse.Namespace, target: Target) -> Measured:
    """Warm-up, the one-at-a-time baseline, then the concurrent load, against a running server."""
    baseline = plan_clients(args.baseline, target, 0)
    asyncio.run(run_load(target, plan_clients(4, target, 0), args.max_tokens, args.timeout, True))  # warm-up
    base_s, base_health = asyncio.run(run_load(target, baseline, args.max_tokens, args.timeout, concurrent=False))
    clients = plan_clients(args.clients, target, args.disconnect_every)
    cancelled_before = httpx.get(target.url + "/health").json()["finished"].get("cancelled", 0)
    engine_before = engine_counters(target)
    if args.client_procs > 1:
        load_s, health = run_load_in_processes(target, clients, args.max_tokens, args.timeout, args.client_procs)
    else:
        load_s, health = asyncio.run(run_load(target, clients, args.max_tokens, args.timeout, concurrent=True))
    leavers = sum(c.leaves and not c.error for c in clients)
    cancelled, freed_s = wait_rows_freed(target.url, cancelled_before, leavers)
    engine = {k: v - engine_before[k] for k, v in engine_counters(target).items()}
    return Measured(baseline, base_s, base_health, clients, load_s, health, leavers, cancelled, freed_s, engine)


def report(args: argparse.Namespace, target: Target, m: Measured) -> list[str]:
    """Print the table and the engine's figures; returns the failed checks."""
    where = f"{target.url}, models {', '.join(target.names)}" if args.url else \
        f"{'builtin:tiny' if args.shape == 'tiny' else 'ChatGLM2-6B shape (random bf16)'} on {args.device}, {args.domains} domains, {args.rows} rows, default plugins" + \
        (f", sensitive words {args.sensitive_words}" if args.sensitive_words else "")
    table = Table("scenario", "clients", "completed", "tokens", "s", "req/s", "tokens/s", "TTFT p50 ms",
                  "TTFT p99 ms", "latency p50 s", "latency p99 s", "chunks/answer", "1st→last chunk p50 ms",
                  "vs one at a time", title=f"glmbot HTTP API, {where}, {args.max_tokens} tokens per answer")
    base_rps = row(table, "one at a time", m.baseline, m.base_s, None)
    row(table, "concurrent", m.clients, m.load_s, base_rps)
    console.print(table)
    console.print(f"left mid-stream: {m.leavers} clients; cancelled in the engine: {m.cancelled}; all rows free "
                  f"{m.freed_s:.2f} s after the last client ended")
    steps = max(m.engine["glmbot_engine_decode_steps_total"], 1)
    console.print(f"engine during the load: {m.engine['glmbot_engine_decode_steps_total']:.0f} decode steps, "
                  f"{m.engine['glmbot_engine_decode_tokens_total'] / steps:.1f} rows per step on average, "
                  f"{1e3 * m.engine['glmbot_engine_decode_seconds_total'] / steps:.1f} ms per step, "
                  f"{m.engine['glmbot_engine_decode_seconds_total'] / m.load_s:.0%} of the wall time in decode steps; "
                  f"{m.engine['glmbot_engine_prefill_forwards_total']:.0f} prefill forwards, "
                  f"{m.engine['glmbot_engine_prefill_seconds_total'] / m.load_s:.0%} of the wall time")
    lat = m.health.latencies
    console.print(f"/health during the load: {len(lat)} polls, all 200: {not m.health.failures}, "
                  f"p50 {percentile(lat, 50) * 1e3:.0f} ms, max {max(lat) * 1e3:.0f} ms")
    problems = check(m.clients, args.max_tokens, m.health) + check(m.baseline, args.max_tokens, m.base_health)
    if m.cancelled != m.leavers:
        problems.append(f"{m.leavers} clients left mid-stream but the engine cancelled {m.cancelled} requests")
    return problems


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args)
        return
    if args.engine_only:
        engine_only(args)
        return
    if args.compare_engine and args.url:
        raise SystemExit("--compare-engine builds this benchmark's own tiny engine, which is not what --url serves: "
                         "drop one of them")
    server = None
    if args.url:
        target = remote_target(args)
    else:
        server, url = start_server(args)
        target = Target(url, list(DOMAINS)[:args.domains], keywords=True)
    try:
        if args.duration > 0:
            steady = measure_steady(args, target)
        else:
            measured = measure(args, target)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    if args.duration > 0:
        http_rate, problems = report_steady(args, steady)
        if args.compare_engine:
            compare_steady(args, http_rate)
        finish(problems, "routes, token counts, streamed chunks, [DONE]")
        return
    problems = report(args, target, measured)
    if args.compare_engine:
        compare_engine(args, measured)
    finish(problems, "routes, token counts, streamed chunks, [DONE], freed rows, /health")


def finish(problems: list[str], checked: str) -> None:
    for problem in problems[:20]:
        console.print(f"[red]FAIL[/] {problem}")
    if problems:
        raise SystemExit(f"{len(problems)} check(s) failed")
    console.print(f"[green]all checks passed[/]: {checked}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent streaming clients")
    parser.add_argument("--domains", type=int, default=4, choices=range(1, len(DOMAINS) + 1))
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (eos ignored)")
    parser.add_argument("--disconnect-every", type=int, default=10, help="every N-th client leaves mid-stream")
    parser.add_argument("--baseline", type=int, default=20, help="requests of the one-at-a-time baseline")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="client processes for the concurrent load (on a many-core GPU host: 4-8, so one "
                             "Python process parsing every stream does not cap what is measured)")
    parser.add_argument("--rows", type=int, default=64, help="engine batch rows ([serving] max_batch_size)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds the whole load may take")
    parser.add_argument("--sensitive-words", default="", help="comma-separated words for the sensitive-word "
                        "plugin of the server this starts (default none: the plugin registers no filter)")
    parser.add_argument("--url", help="load this running glmbot server (e.g. http://127.0.0.1:8000) instead of "
                                      "starting one")
    parser.add_argument("--api-key", help="Bearer key for --url (default: the first of $GLMBOT_API_KEYS)")
    parser.add_argument("--compare-engine", action="store_true",
                        help="then run the concurrent requests straight into the same engine (no HTTP) and print "
                             "the HTTP figure as a share of it; use with --disconnect-every 0 (all clients stay)")
    parser.add_argument("--device", default="cpu", help="the engine's device (cuda: the server on the GPU)")
    parser.add_argument("--shape", choices=("tiny", "full"), default="tiny",
                        help="tiny: the builtin base; full: random bf16 ChatGLM2-6B weights (needs --device cuda)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="steady state: each client sends its request again as soon as it ends, and the "
                             "engine's decode tokens are counted over this many seconds (after --warmup); 0 = "
                             "the one-burst scenarios above")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the --duration window")
    parser.add_argument("--prefill-wait-steps", type=int, default=None,
                        help="[serving] prefill_wait_steps of the engine (default: glmbot.toml's)")
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="the server process's GIL switch interval (sys.setswitchinterval; default: its own)")
    parser.add_argument("--engine-process", action="store_true",
                        help="the server's engine in a process of its own ([serving] engine_process, the default on "
                             "CUDA); without it the engine shares the server's process")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)  # the child of --compare-engine
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
