"""Ray Serve replicas vs `glmbot serve`: the same streaming load on one registry, three servers.

    python bench/ray_serve.py                            # builtin:tiny on CPU, 64 clients, 4 domains
    python bench/ray_serve.py --replicas 1,2,4 --base /models/chatglm2-6b --device cuda --rows 64 \
        --clients 256 --max-tokens 128 --replica-cpus 4  # one GPU per replica on a GPU machine

Each server is the real command in a child process, started from a throwaway glmbot.toml whose
registry holds --domains random prefixes (keywords as bench/http_load.py's): `glmbot serve`, then
`glmbot serve --ray` with [ray] replicas = each of --replicas (a local Ray started by the command,
[ray] num_gpus = auto: one GPU per replica where there are GPUs). Every server gets a warm-up
(each domain twice) and then the same load: --clients streaming clients at once, a quarter on
'auto' (routed by keyword), greedy, exactly --max-tokens tokens each (bench/http_load.py's
clients and checks). Reported: requests/s, tokens/s and the ratio to `glmbot serve`, time to the
first content chunk at the client p50/p99, latency p50, and (Ray) requests per replica by domain.

On the 2-core CPU machine every process shares the same two cores: replicas cannot add compute
there, so the table shows Ray's overhead and the routing, not scaling. Check `uptime` first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import DOMAINS, Client, Target, check, percentile, plan_clients, run_load

console = Console(width=None if sys.stdout.isatty() else 160)


def project(folder: Path, args: argparse.Namespace) -> None:
    """glmbot.toml + a registry with --domains random prefixes (P=16) for args.base."""
    import torch

    from glmbot.config import load_settings
    from glmbot.model import load_base
    from glmbot.model.fingerprint import architecture, base_fingerprint
    from glmbot.model.prefix import PrefixEncoder
    from glmbot.model.prefix_io import encoder_state
    from glmbot.registry import Registry

    db = args.db_url or f"sqlite:///{folder / 'adapters' / 'registry.db'}"
    (folder / "glmbot.toml").write_text(
        f'[model]\nbase_model = "{args.base}"\ndevice = "{args.device}"\n'
        f'[registry]\ndb_url = "{db}"\nadapters_dir = "adapters"\n'
        f'[generation]\nmax_length = {args.max_len}\ndo_sample = false\n'
        f'[serving]\nmax_batch_size = {args.rows}\n[server]\nlog_conversations = false\n[plugins]\npaths = []\n'
        f'[ray]\nnum_cpus = {args.replica_cpus}\nreplicas = 1\n', encoding="utf-8")
    model, _ = load_base(args.base, device="cpu")
    with Registry.from_settings(load_settings(folder / "glmbot.toml")) as registry:
        for seed, name in enumerate(list(DOMAINS)[:args.domains]):
            registry.add_domain(name, keywords=[DOMAINS[name]])
            torch.manual_seed(seed)
            encoder = PrefixEncoder(model.config, 16)
            with torch.no_grad():
                encoder.embedding.weight.normal_(0, 1.0)
            info = registry.register_adapter(name, encoder_state(encoder), base_model=args.base,
                                             base_fingerprint=base_fingerprint(model),
                                             architecture=architecture(model.config))
            registry.promote(info.ref)


def start(folder: Path, replicas: int | None, cpus: float, timeout: float) -> tuple[subprocess.Popen, str]:
    """`glmbot serve` (replicas None) or `glmbot serve --ray` with [ray] replicas = N, once it answers."""
    config = folder / "glmbot.toml"
    if replicas is not None:
        text = config.read_text(encoding="utf-8").split("[ray]")[0]
        config = folder / f"glmbot-ray{replicas}.toml"
        config.write_text(text + f"[ray]\nnum_cpus = {cpus}\nreplicas = {replicas}\n", encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "glmbot", "serve", "--no-log", "--port", str(port), *(["--ray"] if replicas
                                                                                         else [])]
    env = {**os.environ, "GLMBOT_CONFIG": str(config)}
    child = subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        if ready(url, replicas):
            return child, url
        time.sleep(0.5)
    stop(child)
    raise SystemExit(f"{' '.join(command)} did not answer within {timeout:.0f} s (exit code {child.returncode})")


def ready(url: str, replicas: int | None) -> bool:
    """/health answers, and with Ray every replica reports (the proxy answers 5xx text while deploying)."""
    try:
        if httpx.get(url + "/health", timeout=2).status_code != 200:
            return False
        if replicas is None:
            return True
        response = httpx.get(url + "/v1/replicas", timeout=10)
        return response.status_code == 200 and len(response.json()["data"]) == replicas
    except (httpx.HTTPError, ValueError):
        return False


def stop(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGTERM)  # glmbot serve --ray then deletes its app and stops its Ray
    try:
        child.wait(60)
    except subprocess.TimeoutExpired:
        child.kill()


def measure(url: str, args: argparse.Namespace) -> tuple[list[Client], float, list[str]]:
    target = Target(url, list(DOMAINS)[:args.domains], keywords=True)
    asyncio.run(run_load(target, plan_clients(2 * args.domains, target, 0), args.max_tokens, args.timeout, True))
    clients = plan_clients(args.clients, target, 0)
    seconds, health = asyncio.run(run_load(target, clients, args.max_tokens, args.timeout, concurrent=True))
    return clients, seconds, check(clients, args.max_tokens, health)


def per_replica(url: str) -> str:
    data = httpx.get(url + "/v1/replicas", timeout=30).json()["data"]
    return "; ".join(" ".join(f"{k or 'base'}:{n}" for k, n in sorted(r["requests"].items())) for r in data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--domains", type=int, default=4, choices=range(1, len(DOMAINS) + 1))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rows", type=int, default=64, help="[serving] max_batch_size of every engine")
    parser.add_argument("--max-len", type=int, default=256, help="[generation] max_length")
    parser.add_argument("--replicas", default="1,2", help="Ray scenarios: comma-separated replica counts")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="[ray] num_cpus per replica")
    parser.add_argument("--base", default="builtin:tiny")
    parser.add_argument("--device", default="cpu", help="[model] device: cpu, or auto/cuda on a GPU machine")
    parser.add_argument("--db-url", default="", help="registry URL (default: SQLite in the throwaway project)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",") if n.strip()]
    load = os.getloadavg()[0]
    table = Table("server", "req/s", "tokens/s", "vs glmbot serve", "TTFT p50 ms", "TTFT p99 ms", "latency p50 s",
                  "failed checks", title=f"{args.clients} streaming clients, {args.domains} domains, {args.max_tokens} "
                  f"tokens each, {args.base} on {args.device}, {args.rows} rows per engine "
                  f"(load average {load:.1f} at start, {os.cpu_count()} CPUs)")
    spread, base_rate = {}, None
    with tempfile.TemporaryDirectory(prefix="glmbot-ray-bench-") as tmp:
        folder = Path(tmp)
        project(folder, args)
        for replicas in [None, *counts]:
            name = "glmbot serve" if replicas is None else f"serve --ray, {replicas} replica(s)"
            child, url = start(folder, replicas, args.replica_cpus, args.start_timeout)
            try:
                clients, seconds, problems = measure(url, args)
                if replicas is not None:
                    spread[name] = per_replica(url)
            finally:
                stop(child)
            done = [c for c in clients if c.done and not c.error]
            first = [c.first_token_s for c in done if c.first_token_s is not None]
            rate = sum(c.tokens for c in done) / seconds
            base_rate = base_rate or rate
            table.add_row(name, f"{len(done) / seconds:.1f}", f"{rate:.0f}", f"{rate / base_rate:.2f}x",
                          f"{percentile(first, 50) * 1e3:.0f}", f"{percentile(first, 99) * 1e3:.0f}",
                          f"{statistics.median(c.total_s for c in done):.2f}", str(len(problems)))
            for problem in problems[:3]:
                console.print(f"[red]{name}: {problem}")
    console.print(table)
    for name, text in spread.items():
        console.print(f"{name}: requests per replica by domain (warm-up included): {text}")


if __name__ == "__main__":
    main()
