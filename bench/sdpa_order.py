"""Which SDPA kernel a serving prompt's attention gets, and what the choice costs (CUDA only).

    python bench/sdpa_order.py [--rows 1,2,4 --tokens 64 --slots 384]

A prompt part of the engine's mixed step: `--tokens` queries per row, 32 query heads over 2 KV
groups, keys and values gathered from the slot buffer, an additive mask tensor. Torch puts cuDNN
first on Hopper at the process's first SDPA call, unless that call runs inside
`sdpa_kernel(..., set_priority=True)` (grouped decode's, in the engine): the order restored when it
exits ends in the math kernel, the only one left for grouped KV with a mask. Prints the order and
choice in both kinds of fresh process, then microseconds per layer (replayed from a CUDA graph, as
the engine runs it) for math, cuDNN and `SelfAttention.attend` under the engine's order.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's glmbot, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_decode import timed  # noqa: E402  (µs per call, replayed from a CUDA graph of 10 calls)

from glmbot.model import ChatGLMConfig  # noqa: E402
from glmbot.model.modeling import SelfAttention  # noqa: E402

# What a process is left with once an sdpa_kernel(set_priority=True) exits before torch's own first pick.
ENGINE_ORDER = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
                SDPBackend.CUDNN_ATTENTION]

PROBE = """
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
ALL = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
names = {{int(b.value): b.name for b in ALL + [getattr(SDPBackend, "OVERRIDEABLE", SDPBackend.MATH)]}}
q = torch.randn(1, 32, {tokens}, 128, device="cuda", dtype=torch.bfloat16)
kv = torch.randn(1, 2, {slots}, 128, device="cuda", dtype=torch.bfloat16)
mask = torch.zeros(1, 1, {tokens}, {slots}, device="cuda", dtype=torch.bfloat16)
start = [names.get(i, i) for i in torch._C._get_sdp_priority_order()]
first = lambda: torch.nn.functional.scaled_dot_product_attention(q[:, :, :1], kv, kv, attn_mask=mask[:, :, :1],
                                                                  enable_gqa=True)
if {inside}:
    with sdpa_kernel(ALL, set_priority=True):  # cuDNN first, as grouped decode asks
        first()
else:
    first()
order = [names.get(i, i) for i in torch._C._get_sdp_priority_order()]
choice = torch._fused_sdp_choice(q, kv, kv, mask, 0.0, False, scale=None, enable_gqa=True)
print(start, "->", order, "| prompt gets", names.get(int(choice), choice))
"""


def probe(inside: bool, tokens: int, slots: int) -> str:
    """Order and choice in a fresh process whose first SDPA call runs inside a set_priority context or not."""
    code = PROBE.format(tokens=tokens, slots=slots, inside=inside)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the probe failed:\n{done.stderr}")
    return done.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4", help="prompt rows (comma-separated)")
    ap.add_argument("--tokens", type=int, default=64, help="prompt tokens per row")
    ap.add_argument("--slots", type=int, default=384, help="KV slots each row reads")
    ap.add_argument("--layers", type=int, default=28, help="layers per step, for the per-step column")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/sdpa_order.py needs a CUDA device")
    console = Console()
    console.print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    console.print(f"first SDPA call outside any context: {probe(False, args.tokens, args.slots)}")
    console.print(f"first SDPA call inside sdpa_kernel(set_priority=True), as in the engine: "
                  f"{probe(True, args.tokens, args.slots)}")

    config = ChatGLMConfig(num_layers=1, hidden_size=4096, kv_channels=128, num_attention_heads=32,
                           multi_query_group_num=2)
    attention = SelfAttention(config, 0)
    table = Table(title=f"One layer's prompt attention: {args.tokens} tokens a row over {args.slots} slots, "
                        f"grouped KV, mask tensor (µs, from a CUDA graph)")
    for column in ("rows", "math", "cuDNN", "attend, engine's order", f"math - cuDNN, x{args.layers} (ms)",
                   "cuDNN same bits x20"):
        table.add_column(column, justify="right")
    for rows in (int(r) for r in args.rows.split(",")):
        q = torch.randn(rows, args.tokens, 32, 128, device="cuda", dtype=torch.bfloat16)
        slots = torch.randn(rows, 2, 2, args.slots, 128, device="cuda", dtype=torch.bfloat16)
        k, v = slots[:, 0], slots[:, 1]  # (B, G, slots, D) views, as the engine's gather gives them
        visible = torch.arange(args.slots, device="cuda") < args.slots - args.tokens + 1 + torch.arange(
            args.tokens, device="cuda")[:, None]
        mask = torch.zeros(rows, 1, args.tokens, args.slots, device="cuda", dtype=torch.bfloat16)
        mask.masked_fill_(~visible, torch.finfo(torch.bfloat16).min)
        qt = q.transpose(1, 2)

        def sdpa():
            return F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, enable_gqa=True)

        with sdpa_kernel(SDPBackend.MATH):
            math = timed(sdpa)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn = timed(sdpa)
            outs = [sdpa() for _ in range(20)]
        same = all(torch.equal(outs[0], o) for o in outs[1:])
        kv = torch.stack((k, v), 2).transpose(1, 3)  # (B, slots, 2, G, D), as attend takes new tokens' KV
        with sdpa_kernel(ENGINE_ORDER, set_priority=True):
            engine = timed(lambda: attention.attend(q, kv, mask, None, None))
        table.add_row(str(rows), f"{math:.1f}", f"{cudnn:.1f}", f"{engine:.1f}",
                      f"{args.layers * (math - cudnn) / 1000:.2f}", str(same))
    console.print(table)


if __name__ == "__main__":
    main()
