"""A check of the engine's decode path that can fail: teacher-forced logits vs a plain forward.

    cases = mixed_cases(prefixes, rows=64, new_tokens=16, vocab=(3, tok.sp_size))
    with Engine(model, tok, prefixes=prefixes, cuda_graph=True, ...) as engine:
        report = verify_engine(engine, cases, prefixes)                      # report.passed
        broken = verify_engine(engine, cases, prefixes, fault=StaleSlot(5))  # must not pass

Comparing greedy tokens cannot fail usefully: on random weights near-tied logits flip tokens
between two correct kernels. Here every row's completion is GIVEN (teacher forcing through
`Scheduler.probe`), so both sides see the same tokens whatever the logits say, and the logits
the engine computed for every token of every row (prefill and each decode step, with its batch
mix, slots, masks, CUDA graphs and compiled parts) are compared with one eager forward of
prompt + tokens over the row's own prefix. A wrong prefix row, a stale or misplaced KV slot, a
bad mask or position shows as an error far above rounding; `SwappedPrefixes` and `StaleSlot`
inject two such bugs into the engine's state so that the check is seen to fail.

Tolerance: errors are measured per logit vector relative to its scale, the RMS of the reference
logits (a relative error d of the final hidden state moves every logit by about d times that).
`tolerance` derives the bound from the dtype's rounding; see its docstring.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

from glmbot.errors import GenerationError
from glmbot.model.prefix import PrefixKV
from glmbot.serving.kv_slots import KVSlots
from glmbot.serving.requests import GenerationRequest
from glmbot.serving.scheduler import Row

# Headroom of the tolerance over the rounding estimate (see `tolerance`).
ROUNDING_HEADROOM = 4.0


@dataclass(frozen=True)
class ForcedCase:
    """One row of the check: its prompt, its prefix (a domain of the engine, or None: plain base)
    and the completion it is made to take, token by token."""

    prompt_ids: list[int]
    tokens: list[int]
    domain: str | None = None


def mixed_cases(prefixes: Mapping[str, torch.Tensor], rows: int = 64, new_tokens: int = 16,
                prompt_lens: Sequence[int] = (5, 23, 48, 11, 36), vocab: tuple[int, int] = (3, 600),
                seed: int = 0) -> list[ForcedCase]:
    """`rows` cases over every domain of `prefixes` and the plain base (one row in len+1), prompt
    lengths cycling through `prompt_lens` (so lengths and prefixes mix), ids drawn from [vocab)."""
    g = torch.Generator().manual_seed(seed)
    domains: list[str | None] = [*prefixes, None]
    cases = []
    for i in range(rows):
        n = prompt_lens[i % len(prompt_lens)]
        ids = torch.randint(*vocab, (n + new_tokens,), generator=g).tolist()
        cases.append(ForcedCase(ids[:n], ids[n:], domains[i % len(domains)]))
    return cases


def random_prefixes(config, lengths: Sequence[int], device: torch.device | str = "cpu",  # noqa: ANN001
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random prefix KV (2L, G, P, D) for domains d0, d1, ... of the given lengths P."""
    g = torch.Generator().manual_seed(seed)
    return {f"d{i}": torch.randn(2 * config.num_layers, config.kv_groups, p, config.kv_channels, generator=g)
            .to(device, dtype) for i, p in enumerate(lengths)}


# ---- faults: bugs put into the engine's state on purpose, which the check must catch -----------------


class Fault:
    """A bug injected into the KV slots once the rows it needs have been prefilled."""

    name = "fault"

    def inject(self, slots: KVSlots, live: Mapping[int, Row], cases: Sequence[ForcedCase]) -> bool:
        """live: case index -> its row (prefilled, not finished). Returns True once injected."""
        raise NotImplementedError


@dataclass(frozen=True)
class SwappedPrefixes(Fault):
    """Cases a and b (different domains, prefixes of one length) read each other's prefix from
    their first decode step on, as if admission had copied the wrong adapter into a row."""

    a: int
    b: int

    @property
    def name(self) -> str:
        return f"prefixes of rows {self.a} and {self.b} swapped"

    @classmethod
    def between(cls, cases: Sequence[ForcedCase], prefixes: Mapping[str, torch.Tensor]) -> SwappedPrefixes:
        """The first two cases whose domains differ but whose prefixes have the same length."""
        for i, x in enumerate(cases):
            for j, y in enumerate(cases[i + 1:], i + 1):
                if x.domain and y.domain and x.domain != y.domain \
                        and prefixes[x.domain].shape[2] == prefixes[y.domain].shape[2]:
                    return cls(i, j)
        raise ValueError("no two cases have different domains with prefixes of one length; give two domains "
                         "prefixes of the same length to inject a swap")

    def inject(self, slots, live, cases) -> bool:  # noqa: ANN001 - see Fault
        if self.a not in live or self.b not in live:
            return False
        ra, rb, p = live[self.a].slot, live[self.b].slot, live[self.a].job.prefix_len
        if live[self.b].job.prefix_len != p:
            raise ValueError(f"rows {self.a} and {self.b} have prefixes of {p} and {live[self.b].job.prefix_len} "
                             "positions; SwappedPrefixes.between picks two of one length")
        first = slots.kv[:, ra, :, :, :p].clone()  # (L, 2, G, P, D)
        slots.kv[:, ra, :, :, :p] = slots.kv[:, rb, :, :, :p]
        slots.kv[:, rb, :, :, :p] = first
        return True


@dataclass(frozen=True)
class StaleSlot(Fault):
    """One KV slot of case `case` (its prompt token `position`, default the middle one) keeps the
    key/value of the token before it in every layer, as after a write to the wrong slot."""

    case: int
    position: int | None = None

    @property
    def name(self) -> str:
        return f"stale KV slot in row {self.case}"

    def inject(self, slots, live, cases) -> bool:  # noqa: ANN001 - see Fault
        if self.case not in live:
            return False
        row = live[self.case]
        n = len(cases[self.case].prompt_ids)
        position = n // 2 if self.position is None else self.position
        if not 0 < position < n:
            raise ValueError(f"StaleSlot position must be in [1, {n}) (the prompt of case {self.case}), "
                             f"got {position}")
        slot = row.job.prefix_len + position
        slots.kv[:, row.slot, :, :, slot] = slots.kv[:, row.slot, :, :, slot - 1]
        return True


# ---- the engine side: teacher forcing and logits capture ---------------------------------------------


@dataclass
class TeacherForcing:
    """A `DecodeProbe` that makes each case's row take the case's tokens and keeps its logits."""

    cases: Sequence[ForcedCase]
    requests: Mapping[int, int]  # id(GenerationRequest) -> case index
    slots: KVSlots
    fault: Fault | None = None
    fault_injected: bool = False
    logits: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (case, token index) -> (V,)
    live: dict[int, Row] = field(default_factory=dict)

    def observe(self, rows: Sequence[Row], indices: Sequence[int], logits: torch.Tensor) -> list[int | None]:
        given: list[int | None] = []
        for i, (row, index) in enumerate(zip(rows, indices)):
            case = self.requests.get(id(row.job.handle.request))
            tokens = self.cases[case].tokens if case is not None else ()
            if index >= len(tokens):  # not ours, or a step run ahead of a row that has ended
                given.append(None)
                continue
            self.logits[case, index] = logits[i]
            self.live[case] = row
            given.append(tokens[index])
        if self.fault is not None and not self.fault_injected:
            live = {c: r for c, r in self.live.items() if r.sampled < len(self.cases[c].tokens) - 1}
            self.fault_injected = self.fault.inject(self.slots, live, self.cases)
        return given


def engine_logits(engine, cases: Sequence[ForcedCase], fault: Fault | None = None) -> TeacherForcing:  # noqa: ANN001
    """Run every case through `engine` at once with its tokens given; the probe holds the logits
    of every (case, token index). The engine must be idle (its probe slot is taken meanwhile)."""
    requests = [GenerationRequest(prompt_ids=c.prompt_ids, domain=c.domain, max_new_tokens=len(c.tokens),
                                  do_sample=False, ignore_eos=True) for c in cases]
    scheduler = engine.scheduler
    probe = TeacherForcing(cases, {id(r): i for i, r in enumerate(requests)}, scheduler.slots, fault)
    scheduler.probe = probe
    try:
        results = engine.generate_many(requests)
    finally:
        scheduler.probe = None
    for i, (case, result) in enumerate(zip(cases, results)):
        if list(result.token_ids) != case.tokens:
            raise GenerationError(f"case {i}: the engine took {list(result.token_ids)[:8]}... instead of the given "
                                  f"{case.tokens[:8]}...: teacher forcing did not hold (is the probe set on the "
                                  "scheduler that runs the rows?)")
    return probe


# ---- the reference side ------------------------------------------------------------------------------


@contextlib.contextmanager
def eager_dense(model: torch.nn.Module) -> Iterator[None]:
    """The model's blocks run their eager dense parts meanwhile (compile_dense undone, then restored)."""
    layers = model.transformer.encoder.layers
    kept = [layer.kernels for layer in layers]
    model.uncompile_dense()
    try:
        yield
    finally:
        for layer, kernels in zip(layers, kept):
            layer.kernels = kernels


@torch.no_grad()
def reference_logits(model: torch.nn.Module, case: ForcedCase, prefix: torch.Tensor | None) -> torch.Tensor:
    """One eager forward of prompt + tokens (but the last) over `prefix` (2L, G, P, D) -> the logits
    (N, V) that choose each of the N tokens (positions len(prompt) - 1 ...)."""
    ids = torch.tensor([case.prompt_ids + case.tokens[:-1]], device=model.device)
    kv = None if prefix is None else PrefixKV.stack([prefix.to(model.device, model.dtype)])
    out = model(input_ids=ids, prefix=kv, use_cache=False)
    return out.logits[0, len(case.prompt_ids) - 1:]


# ---- the check ---------------------------------------------------------------------------------------


def tolerance(model: torch.nn.Module) -> float:
    """Largest error allowed in a logit, relative to the RMS of its row's reference logits.

    Both sides compute the same function in the model's dtype with different kernels (batched
    decode GEMMs, slot attention, fused compiled norms vs one eager full forward), so they round
    differently. A sublayer's output carries a relative rounding error of about
    u = eps/2 (storing it in the dtype) + eps32/2 * sqrt(K) (its K-term sums, K = ffn_hidden_size,
    accumulated in fp32 in another order): bf16 is dominated by the first (0.0039), fp32 by the
    second. With 2L + 1 sublayers (attention and MLP of every layer, the output layer), errors
    independent between the two sides, the final hidden states differ by about u * sqrt(2 (2L + 1))
    relative, which moves every logit by that fraction of the logits' RMS; the largest of V such
    (roughly normal) errors is sqrt(2 ln V) times that. ROUNDING_HEADROOM covers what the estimate
    leaves out (residual growth across layers, the logits' own rounding).
    """
    cfg = model.config
    u = torch.finfo(model.dtype).eps / 2 + torch.finfo(torch.float32).eps / 2 * math.sqrt(cfg.ffn_hidden_size)
    sublayers = 2 * cfg.num_layers + 1
    return ROUNDING_HEADROOM * u * math.sqrt(2 * sublayers) * math.sqrt(2 * math.log(cfg.padded_vocab_size))


@dataclass(frozen=True)
class VerifyReport:
    run: str  # what was compared: the engine as is, with a fault, or the rounding baseline
    rows: int  # cases checked
    logits: int  # (case, token) logit vectors compared
    max_abs: float  # largest |engine - reference| of any logit
    max_rel: float  # largest of max|engine - reference| / RMS(reference) per logit vector
    worst: tuple[int, int]  # (case, token index) of max_rel
    tolerance: float
    fault: str | None = None
    fault_injected: bool = False

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance


@dataclass
class ErrorTally:
    """The largest errors of logit vectors compared so far (see VerifyReport)."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: tuple[int, int] = (0, 0)

    def add(self, case: int, got: torch.Tensor, ref: torch.Tensor) -> None:
        """got, ref: (N, V) logits of one case's N tokens."""
        got, ref = got.float(), ref.float()
        diff = (got - ref).abs().amax(dim=-1)  # (N,)
        rel = diff / ref.pow(2).mean(dim=-1).sqrt()
        i = int(rel.argmax())
        self.max_abs = max(self.max_abs, float(diff.max()))
        if float(rel[i]) > self.max_rel or not math.isfinite(float(rel[i])):  # NaN stays: it fails the check
            self.max_rel, self.worst = float(rel[i]), (case, i)


def verify_engine(engine, cases: Sequence[ForcedCase], prefixes: Mapping[str, torch.Tensor],  # noqa: ANN001
                  fault: Fault | None = None, tol: float | None = None) -> VerifyReport:
    """Teacher-force `cases` through `engine` (whose prefixes are `prefixes`) and compare every
    logit vector with `reference_logits`; `fault` injects a bug first (the report must then fail)."""
    probe = engine_logits(engine, cases, fault)
    model, tally = engine.model, ErrorTally()
    with eager_dense(model):
        for c, case in enumerate(cases):
            missing = [i for i in range(len(case.tokens)) if (c, i) not in probe.logits]
            if missing:
                raise GenerationError(f"case {c}: the engine chose tokens {missing} without the probe seeing them")
            got = torch.stack([probe.logits[c, i] for i in range(len(case.tokens))])
            tally.add(c, got, reference_logits(model, case, prefix_of(case, prefixes)))
    return VerifyReport("engine as is" if fault is None else fault.name, len(cases), sum(len(c.tokens) for c in cases),
                        tally.max_abs, tally.max_rel, tally.worst, tolerance(model) if tol is None else tol,
                        None if fault is None else fault.name, probe.fault_injected)


def rounding_noise(model: torch.nn.Module, cases: Sequence[ForcedCase],
                   prefixes: Mapping[str, torch.Tensor]) -> VerifyReport:
    """The same comparison between two eager forwards, the model's dtype and fp32: what rounding
    alone does, a baseline for the engine's errors (the tolerance bounds both). Holds an fp32 copy
    of the model meanwhile (25 GB at the 6B shape)."""
    tally = ErrorTally()
    with torch.device("meta"):  # no second random init: the weights come from `model`
        exact = type(model)(model.config)
    exact.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, assign=True)
    exact.eval()
    with eager_dense(model):
        for c, case in enumerate(cases):
            prefix = prefix_of(case, prefixes)
            tally.add(c, reference_logits(model, case, prefix), reference_logits(exact, case, prefix))
    del exact
    return VerifyReport(f"eager {str(model.dtype).removeprefix('torch.')} vs eager float32 (rounding alone)",
                        len(cases), sum(len(c.tokens) for c in cases), tally.max_abs, tally.max_rel, tally.worst,
                        tolerance(model))


def prefix_of(case: ForcedCase, prefixes: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    return None if case.domain is None else prefixes[case.domain]
