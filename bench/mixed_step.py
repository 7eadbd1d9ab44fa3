"""What a prompt costs the running streams: one decode step, a prefill forward of its own, and a
decode step with the prompt chunks inside it ([serving] prefill_with_decode), each timed alone.

    python bench/mixed_step.py --compile                 # ChatGLM2-6B shape, random bf16, CUDA
    python bench/mixed_step.py --shape tiny --device cpu # the script itself, on the builtin shape

    python bench/mixed_step.py --compile --prompts 1x64,2x64,4x64 --real --reach 384 --interleave 2

For each kind of forward: the host's time to queue it (the call returning, no sync), the wall time
with the device synchronised (median of --repeat), and, on CUDA, the kernels' own time in it
(torch.profiler) and how many kernels ran. Wall far above kernel time is host-bound: Python and
kernel launches, what a CUDA graph removes. Inputs are idle rows (padding tokens writing to the
scratch slot): the shapes and kernels are a real step's. --real gives inputs as in a running
engine instead: decode rows writing and reading their own slots, up to --reach slots (the rows'
slot length, so the graphs read what a closed loop's do), prompt chunks in rows of their own.
--kernels prints the kernel tables of the eager decode step and the first mixed step; --interleave
N times each graphed mixed step after N graphed decode steps, without syncs, as an engine runs them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_table import print_kernel_table  # noqa: E402
from serving_bench import add_blas, add_slot_attention, apply_blas, build_model  # noqa: E402

from glmbot.config import Settings  # noqa: E402
from glmbot.serving.engine import Engine  # noqa: E402
from glmbot.serving.kv_slots import forward_mixed, forward_slots, round_up, set_slot_attention  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="full", choices=("tiny", "full"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", type=int, default=64, help="decoding rows")
    ap.add_argument("--prompts", default="1x64,4x64,8x64,1x512,4x512", help="prompt chunks: COUNTxLENGTH,...")
    ap.add_argument("--prefix-len", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--kernels", type=int, default=12,
                    help="on CUDA, the top kernels of the eager decode step and of the first mixed step")
    ap.add_argument("--interleave", type=int, default=0,
                    help="on CUDA: also time each graphed mixed step after this many graphed decode steps")
    ap.add_argument("--real", action="store_true",
                    help="inputs as in a running engine: decode rows at positions up to --reach slots, each writing "
                         "its own slot and seeing its own; prompt chunks in the last rows, at their own slots (else "
                         "idle rows: padding written to scratch, seeing slot 0)")
    ap.add_argument("--reach", type=int, default=0, help="with --real: the rows' slot length, which the decode "
                    "rows reach (default prefix + the longest prompt + 128)")
    ap.add_argument("--deterministic", action="store_true",
                    help="as [serving] deterministic = true: decode attention with the query heads folded onto "
                         "the groups (default: cuDNN grouped KV, as glmbot serve and serving_bench.py run on CUDA)")
    add_slot_attention(ap)
    add_blas(ap)
    args = ap.parse_args()
    args.model, args.family = "", "chatglm2"
    set_slot_attention(args.slot_attention)
    cuda = args.device.startswith("cuda")
    model, tok = build_model(args)
    blas = apply_blas(args, model, args.rows)
    model.set_deterministic_decode(args.deterministic)  # its sdpa_kernel context shapes the prompts' kernel too
    if args.compile:
        model.compile_dense()
    chunks = [tuple(map(int, c.split("x"))) for c in args.prompts.split(",")]
    longest = max(t for _, t in chunks)
    reach = check_real(args, chunks, longest)
    console = Console()
    settings = Settings()
    settings.serving.prefill_with_decode = True  # the engine captures decode steps with prompts inside too
    with Engine(model, tok, settings=settings, max_batch_size=max(args.rows, max(k for k, _ in chunks)),
                max_len=reach - args.prefix_len, max_prefix_len=args.prefix_len, cuda_graph=cuda,
                warm_up=True) as engine:
        s = engine.scheduler
        dev = s.device

        def idle(batch: int, length: int, reach: int) -> tuple:
            ids, pos, write, limit = (torch.full((batch, length), v, dtype=torch.long, device=dev)
                                      for v in (s.pad, 0, s.slots.scratch, 1))
            return ids, pos, write, limit, round_up(reach)

        g = torch.Generator().manual_seed(0)

        def decode_part(prompts: int = 0) -> tuple:
            if not args.real:
                ids, pos, write, limit, kv_len = idle(args.rows, 1, args.prefix_len + 64)
                return ids, pos, write, limit, None, kv_len
            # rows 0..rows-prompts-1 decode at positions up to reach; the last `prompts` rows prefill (idle here)
            live = args.rows - prompts
            pos = torch.randint(max(1, reach - args.prefix_len - 128), reach - args.prefix_len, (args.rows, 1),
                                generator=g)
            ids = torch.randint(3, 60000, (args.rows, 1), generator=g)
            write, limit = pos + args.prefix_len, pos + args.prefix_len + 1
            ids[live:], pos[live:], write[live:], limit[live:] = s.pad, 0, s.slots.scratch, 1
            return (*(x.to(dev) for x in (ids, pos, write, limit)), None, round_up(reach))

        def chunk_part(k: int, t: int) -> tuple:
            if not args.real:
                ids, pos, write, limit, kv_len = idle(k, t, args.prefix_len + t)
                return ids, pos, write, limit, torch.arange(k, device=dev), kv_len
            pos = torch.arange(t).repeat(k, 1)
            ids = torch.randint(3, 60000, (k, t), generator=g)
            write, limit = pos + args.prefix_len, pos + args.prefix_len + 1
            rows = torch.arange(args.rows - k, args.rows)
            return (*(x.to(dev) for x in (ids, pos, write, limit, rows)), round_up(args.prefix_len + t))

        runs: list[tuple[str, callable]] = []
        ids, pos, write, limit, _, kv_len = decode_part()  # all rows decoding
        if s.graphed is not None:
            runs.append((f"decode step, {args.rows} rows, CUDA graph",
                         lambda: s.graphed(ids, pos, write, limit, reach=kv_len)))
        runs.append((f"decode step, {args.rows} rows, eager", lambda: s._decode(ids, pos, write, limit, kv_len)))
        for k, t in chunks:
            part = chunk_part(k, t)
            runs.append((f"prefill forward, {k} x {t} tokens", lambda p=part: forward_slots(
                model, s.slots, p[0], p[1], p[2], p[3], p[5], rows=p[4])))
            shape = s._prefill_shape(k, t, part[5])
            if s.graphed_prefill is not None and shape in s.graphed_prefill.graphs:
                padded = (*idle(shape[0], shape[1], shape[2])[:4], torch.zeros(shape[0], dtype=torch.long, device=dev))
                runs.append((f"prefill forward, {k} x {t} tokens, CUDA graph {shape[0]} x {shape[1]}",
                             lambda shape=shape, padded=padded: s.graphed_prefill(shape, *padded)))
            beside = decode_part(k)
            runs.append((f"decode step of {args.rows} rows + {k} x {t} prompt tokens",
                         lambda p=part, d=beside: forward_mixed(model, s.slots, [d, p])))
            # both parts read one KV length: the longest either needs (Scheduler._mixed_shape)
            shape = min((m for m in s.mixed_shapes if m[0] >= k and m[1] >= t and m[2] >= max(part[5], beside[5])),
                        key=lambda m: (m[0] * m[1], m[2]), default=None)
            if s.graphed_mixed is not None and shape is not None and args.rows == s.buckets[-1]:
                padded = ((*beside[:4], *part[:5]) if args.real else
                          (*decode_part()[:4], *idle(shape[0], shape[1], shape[2])[:4],
                           torch.zeros(shape[0], dtype=torch.long, device=dev)))
                runs.append((f"decode step of {args.rows} rows + {k} x {t} prompt tokens, CUDA graph "
                             f"{shape[0]} x {shape[1]}, KV {shape[2]}",
                             lambda shape=shape, padded=padded: s.graphed_mixed(shape, *padded)))
        blas_note = f", {escape(blas)}" if blas else ""
        what = f"{model.config.num_layers} layers, {str(model.dtype)[6:]}, {dev}{blas_note}"
        table = Table(title=f"One forward alone ({what})",
                      header_style="bold")
        for column in ("forward", "host queues it ms", "wall ms", "kernels ms", "kernels"):
            table.add_column(column, justify="right" if column != "forward" else "left")
        with torch.no_grad():
            for name, fn in runs:
                queue, wall = [], []
                for i in range(args.repeat + 2):
                    sync(cuda)
                    start = time.perf_counter()
                    fn()
                    queued = time.perf_counter()
                    sync(cuda)
                    if i >= 2:  # the first two warm caches
                        queue.append(queued - start)
                        wall.append(time.perf_counter() - start)
                kernels_ms, count = kernel_time(fn, cuda)
                table.add_row(name, f"{1e3 * statistics.median(queue):.2f}", f"{1e3 * statistics.median(wall):.2f}",
                              "-" if kernels_ms is None else f"{kernels_ms:.2f}", "-" if count is None else str(count))
            profiles = []
            if cuda and args.kernels:  # what the prompt adds: the eager decode step's kernels, then the mixed step's
                for name, fn in (next((n, f) for n, f in runs if "eager" in n),
                                 next((n, f) for n, f in runs if "prompt tokens" in n)):
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        for _ in range(3):
                            fn()
                        torch.cuda.synchronize()
                    profiles.append((name, prof))
            if cuda and args.interleave:
                interleaved = interleave(runs, args.interleave)
    console.print(table)
    if cuda and args.interleave:
        print(f"\nInterleaved as in a running engine (each graphed mixed step after {args.interleave} graphed "
              "decode steps, no sync between; CUDA events around each replay, mean ms):")
        for name, alone, among in interleaved:
            print(f"  {name}: {among:.2f} interleaved against {alone:.2f} back to back")
    for name, prof in profiles:
        print(f"\n{name}:")
        print_kernel_table(prof, 3, "step", args.kernels)


def check_real(args: argparse.Namespace, chunks: list[tuple[int, int]], longest: int) -> int:
    """The rows' slot length; --real's and --reach's values checked (SystemExit naming the bad one)."""
    if not args.real:
        if args.reach:
            raise SystemExit(f"--reach {args.reach} sets the decode rows' reach with --real only (add --real)")
        return args.prefix_len + longest + 128
    reach = args.reach or args.prefix_len + longest + 128
    if reach < args.prefix_len + longest + 1:
        raise SystemExit(f"--reach {reach} leaves no room for a {longest}-token chunk behind the {args.prefix_len} "
                         f"prefix slots: give at least {args.prefix_len + longest + 1}")
    for k, t in chunks:
        if k > args.rows or k & (k - 1) or t < 16 or t & (t - 1):
            raise SystemExit(f"--real needs prompt chunks of a captured shape, at most --rows {args.rows} rows, a "
                             f"power of two, of 16, 32, 64, ... tokens: got {k}x{t}")
    return reach


def interleave(runs: list, decodes: int, rounds: int = 20) -> list[tuple[str, float, float]]:
    """Each graphed mixed step's mean time replayed back to back, and replayed after `decodes`
    graphed decode steps each round, as the engine alternates them (no sync in between)."""
    decode = next(fn for name, fn in runs if name.startswith("decode step,") and "CUDA graph" in name)
    out = []
    for name, fn in runs:
        if "prompt tokens, CUDA graph" not in name:
            continue
        times = {False: [], True: []}
        for among in (False, True):
            for _ in range(rounds):
                for _ in range(decodes if among else 0):
                    decode()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                times[among].append((start, end))
            torch.cuda.synchronize()
        alone, among = (statistics.mean(a.elapsed_time(b) for a, b in times[k][2:]) for k in (False, True))
        out.append((name, alone, among))
    return out


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def kernel_time(fn, cuda: bool) -> tuple[float | None, int | None]:
    """The CUDA kernels' own time (ms) and count in one call."""
    if not cuda:
        return None, None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time for e in events) / 1e3, len(events)


if __name__ == "__main__":
    main()
