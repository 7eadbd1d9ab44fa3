"""Prefix-only training loop: the base stays frozen, only a PrefixEncoder learns.

Reads top to bottom: setup (encoder, optimizer, schedule) -> resume -> micro-batches with
gradient accumulation -> checkpoints -> final prefix + loss curve. Progress goes to a callback;
the loop never prints. Checkpoints keep the prefix as safetensors and the optimizer/scheduler/RNG
state beside it, so `resume` continues the same loss curve.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import math
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from glmbot.config import TrainSettings
from glmbot.errors import GlmbotError
from glmbot.fileio import atomic_write_text
from glmbot.model.modeling import ChatGLMForConditionalGeneration, answer_loss
from glmbot.model.prefix import PrefixEncoder, PrefixKV
from glmbot.model.prefix_io import encoder_state
from glmbot.training.data import Encoded, collate, length_grouped_batches

log = logging.getLogger(__name__)
PREFIX_FILE = "adapter_model.safetensors"
STATE_FILE = "trainer_state.pt"
PREFIX_INIT_STD = 0.02  # small keys/values: the base's attention is barely disturbed at step 0
# Training attention on CUDA (ChatGLMForConditionalGeneration.set_training_attention), chosen by
# bench/train_bench.py on an H200 (docs/PERFORMANCE.md).
TRAINING_ATTENTION_CUDA = "cudnn"
ETA_STEPS = 3        # steps after the first before a progress display shows time left
RECENT_STEPS = 16    # ... at the median of this many latest steps



@dataclass
class StepInfo:
    """What a progress display needs after each optimizer step."""

    step: int
    total_steps: int
    loss: float
    lr: float
    tokens_per_s: float
    elapsed_s: float
    recent_step_s: tuple[float, ...] = ()  # the last few steps' seconds, this run's first one (start-up) left out

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the median of the last few steps. The first step pays for start-up (on the
        2-core CPU it made an 81 s run say 12 minutes) and the next ones can still be slow (a newcomer's
        demo said 27 minutes at step 2 of a 2-minute run), so None until ETA_STEPS steps after the first."""
        if self.step >= self.total_steps:
            return 0.0
        if len(self.recent_step_s) < ETA_STEPS:
            return None
        return statistics.median(self.recent_step_s) * (self.total_steps - self.step)


@dataclass
class TrainResult:
    encoder: PrefixEncoder
    steps: int
    losses: list[float]
    real_tokens: int
    seconds: float
    run_dir: Path
    resumed_from: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / max(self.seconds, 1e-9)


class TrainingInterrupted(GlmbotError):
    """Training stopped early (Ctrl-C); the last checkpoint can be resumed."""


def total_steps(settings: TrainSettings, n_examples: int, world_size: int = 1) -> int:
    if settings.max_steps:
        return settings.max_steps
    micro_per_epoch = math.ceil(n_examples / (settings.batch_size * world_size))
    return max(1, math.ceil(settings.epochs * micro_per_epoch / settings.grad_accum))


def lr_lambda(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up then linear decay to 0 (the official schedule after warm-up)."""
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class PrefixTrainer:
    """Trains one prefix on a frozen base; rank 0 writes checkpoints when distributed."""

    def __init__(self, model: ChatGLMForConditionalGeneration, settings: TrainSettings, run_dir: Path,
                 pad_id: int = 0, on_step: Callable[[StepInfo], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.model = model
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.pad_id = pad_id
        self.on_step = on_step
        self.should_stop = should_stop or (lambda: False)
        self.device = next(model.parameters()).device
        # On CUDA, lengths padded to a multiple of 8 (aligned kernels; the compiled parts take any length).
        self.pad_multiple = 8 if self.device.type == "cuda" else 1
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self, n_examples: int):
        s = self.settings
        torch.manual_seed(s.seed)
        encoder = PrefixEncoder(self.model.config, s.pre_seq_len, s.prefix_projection).to(self.device)
        with torch.no_grad():
            encoder.embedding.weight.normal_(0.0, PREFIX_INIT_STD)
        self.model.requires_grad_(False)
        if s.gradient_checkpointing:
            self.model.set_checkpointing(True)
        if self.device.type == "cuda":
            self.model.set_training_attention(TRAINING_ATTENTION_CUDA)
            if s.compile:
                self.model.compile_dense()
        total = total_steps(s, n_examples, self.world_size)
        opt = torch.optim.AdamW(encoder.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, s.warmup_ratio))
        return encoder, opt, sched, total

    def _micro_batches(self, encoded: list[Encoded], start_micro: int):
        """Endless (example indices, batch) stream; epoch e uses seed + e, so a resume sees the same order."""
        lengths = [len(e.input_ids) for e in encoded]
        micro, epoch = 0, 0
        while True:
            batches = length_grouped_batches(lengths, self.settings.batch_size, self.settings.seed + epoch)
            # Each rank takes every world_size-th batch: different data per rank, same step count.
            batches = batches[self.rank::self.world_size] or batches[:1]
            for batch in batches:
                if micro >= start_micro:
                    yield batch, collate([encoded[i] for i in batch], self.pad_id, self.pad_multiple)
                micro += 1
            epoch += 1

    def _loss(self, encoder: PrefixEncoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        B = batch["input_ids"].shape[0]
        use_bf16 = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            kv = encoder.kv(torch.bfloat16 if use_bf16 else self.model.dtype)
            prefix = PrefixKV.repeat(kv, B)
            prefix = PrefixKV(torch.nn.functional.dropout(prefix.kv, 0.1, training=True))  # official dropout
            return answer_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], prefix)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, encoded: list[Encoded], resume: bool = False) -> TrainResult:
        s = self.settings
        encoder, opt, sched, total = self._setup(len(encoded))
        step, losses, real_tokens, resumed_from = 0, [], 0, 0
        if resume:
            step, losses = self._load_checkpoint(encoder, opt, sched)
            resumed_from = step
        self.model.train()  # dropouts of the base are 0; train() only matters for checkpointing
        start = time.perf_counter()
        recent: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)
        last = None  # when this run's previous step ended (a resumed run's first step pays for start-up too)
        stream = self._micro_batches(encoded, step * s.grad_accum)
        seen: set[int] = set()  # example indices this rank trained on (a manifest per rank)
        try:
            while step < total:
                if self.should_stop():
                    raise TrainingInterrupted(f"stopped at step {step}")
                window_loss, window_tokens = 0.0, 0
                for _ in range(s.grad_accum):
                    indices, batch = next(stream)
                    seen.update(indices)
                    loss = self._loss(encoder, batch) / s.grad_accum
                    loss.backward()
                    window_loss += loss.item()
                    window_tokens += int(batch["attention_mask"].sum())
                if self.distributed:
                    for p in encoder.parameters():
                        dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                losses.append(window_loss)
                real_tokens += window_tokens * self.world_size
                now = time.perf_counter()
                elapsed = now - start
                if last is not None:
                    recent.append(now - last)
                last = now
                if self.on_step is not None:
                    self.on_step(StepInfo(step, total, window_loss, sched.get_last_lr()[0],
                                          real_tokens / max(elapsed, 1e-9), elapsed, tuple(recent)))
                if s.checkpoint_every and step % s.checkpoint_every == 0 and step < total:
                    self._save_checkpoint(encoder, opt, sched, step, losses)
        finally:
            self.model.eval()
            if s.gradient_checkpointing:
                self.model.set_checkpointing(False)
        seconds = time.perf_counter() - start
        encoder.eval()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / f"data-rank{self.rank}.json",
                          json.dumps({"rank": self.rank, "world_size": self.world_size, "examples": sorted(seen)}))
        if self.rank == 0:
            self._save_final(encoder, losses)
        return TrainResult(encoder, step, losses, real_tokens, seconds, self.run_dir, resumed_from)

    # -- files ---------------------------------------------------------------------------------
    def _save_checkpoint(self, encoder, opt, sched, step: int, losses: list[float]) -> None:
        if self.rank != 0:
            return
        final = self.run_dir / f"checkpoint-{step}"
        tmp = self.run_dir / f".tmp-checkpoint-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(encoder_state(encoder), str(tmp / PREFIX_FILE))
        torch.save({"step": step, "losses": losses, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                    "settings": asdict(self.settings)}, tmp / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint folder is complete or absent
        for old in sorted(self.run_dir.glob("checkpoint-*"), key=_checkpoint_step)[:-2]:
            shutil.rmtree(old, ignore_errors=True)  # keep the last two

    def _load_checkpoint(self, encoder, opt, sched) -> tuple[int, list[float]]:
        checkpoints = sorted(self.run_dir.glob("checkpoint-*"), key=_checkpoint_step)
        if not checkpoints:
            raise GlmbotError(f"nothing to resume in {self.run_dir}: it has no checkpoint-N folder; "
                              "start without --resume")
        last = checkpoints[-1]
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        saved = state.get("settings", {})
        for key in ("pre_seq_len", "prefix_projection", "batch_size", "grad_accum", "seed"):
            if key in saved and saved[key] != getattr(self.settings, key):
                raise GlmbotError(f"cannot resume {last}: it was trained with {key}={saved[key]}, now "
                                  f"{getattr(self.settings, key)}; use the same settings or start a new run")
        prefix = load_file(str(last / PREFIX_FILE))
        encoder.load_state_dict({k.split("prefix_encoder.", 1)[1]: v for k, v in prefix.items()})
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        log.info("resumed %s at step %d", last, state["step"])
        return int(state["step"]), list(state["losses"])

    def _save_final(self, encoder: PrefixEncoder, losses: list[float]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_file(encoder_state(encoder), str(self.run_dir / PREFIX_FILE))
        write_loss_curve(self.run_dir, losses)


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def write_loss_curve(run_dir: Path, losses: list[float]) -> None:
    """loss.csv (step, loss) and loss.png beside it."""
    rows = ["step,loss"] + [f"{i},{v:.6f}" for i, v in enumerate(losses, start=1)]
    atomic_write_text(run_dir / "loss.csv", "\n".join(rows) + "\n")
    import matplotlib  # imported here: it is slow to import and only the end of a run needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("prefix training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png")
    plt.close(fig)


def read_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "loss.csv", encoding="utf-8") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def save_run_info(run_dir: Path, info: dict) -> None:
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, ensure_ascii=False, default=str))
