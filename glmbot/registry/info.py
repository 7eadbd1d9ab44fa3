"""Plain frozen records the Registry returns, so callers never hold ORM rows or sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from glmbot.registry.tables import (ACTIVE, ActivationRow, AdapterRow, DomainRow, EvaluationRow, HubPushRow,
                                    TrainingRunRow)


def aware(when: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; the registry always stores UTC."""
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class DomainInfo:
    id: int
    name: str
    description: str
    keywords: tuple[str, ...]
    patterns: tuple[str, ...]
    created_at: datetime
    active_version: int | None = None
    adapter_count: int = 0

    @classmethod
    def from_row(cls, row: DomainRow, active_version: int | None = None, adapter_count: int = 0) -> DomainInfo:
        return cls(row.id, row.name, row.description, tuple(row.keywords or ()), tuple(row.patterns or ()),
                   aware(row.created_at), active_version, adapter_count)


@dataclass(frozen=True)
class AdapterInfo:
    """One registered adapter version; `path` is its folder, `files` maps file name -> sha256."""

    id: int
    domain: str
    version: int
    status: str
    path: Path
    files: dict[str, str]
    size_bytes: int
    pre_seq_len: int
    prefix_projection: bool
    dtype: str
    base_model: str
    base_fingerprint: str
    architecture: dict[str, int]
    source: str
    provenance: dict = field(default_factory=dict)
    hyperparams: dict = field(default_factory=dict)
    dataset_sha256: str | None = None
    sample_count: int | None = None
    # Registration metrics, updated by later evaluations (latest value per metric name).
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: datetime | None = None
    activated_at: datetime | None = None
    glmbot_version: str = ""
    damage: str | None = None  # what a check found wrong with its files; None = intact as far as known
    damaged_at: datetime | None = None

    @property
    def ref(self) -> str:
        """'support@v3'."""
        return f"{self.domain}@v{self.version}"

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE

    @classmethod
    def from_row(cls, row: AdapterRow, domain: str, adapters_dir: Path,
                 evaluations: list[EvaluationRow] = ()) -> AdapterInfo:
        metrics = dict(row.metrics or {})
        for evaluation in sorted(evaluations, key=lambda e: e.id):
            metrics.update(evaluation.metrics or {})
        return cls(
            id=row.id, domain=domain, version=row.version, status=row.status, path=adapters_dir / row.path,
            files=dict(row.files or {}), size_bytes=row.size_bytes, pre_seq_len=row.pre_seq_len,
            prefix_projection=row.prefix_projection, dtype=row.dtype, base_model=row.base_model,
            base_fingerprint=row.base_fingerprint, architecture=dict(row.architecture or {}), source=row.source,
            provenance=dict(row.provenance or {}), hyperparams=dict(row.hyperparams or {}),
            dataset_sha256=row.dataset_sha256, sample_count=row.sample_count, metrics=metrics,
            created_at=aware(row.created_at), activated_at=aware(row.activated_at),
            glmbot_version=row.glmbot_version, damage=row.damage, damaged_at=aware(row.damaged_at))


@dataclass(frozen=True)
class EvaluationInfo:
    id: int
    adapter_id: int
    kind: str
    metrics: dict[str, float]
    dataset_sha256: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: EvaluationRow) -> EvaluationInfo:
        return cls(row.id, row.adapter_id, row.kind, dict(row.metrics or {}), row.dataset_sha256,
                   aware(row.created_at))


@dataclass(frozen=True)
class ActivationInfo:
    """One entry of a domain's activation history (promote, rollback, archive of the active one)."""

    id: int
    domain: str
    action: str
    adapter_id: int
    previous_adapter_id: int | None
    at: datetime

    @classmethod
    def from_row(cls, row: ActivationRow, domain: str) -> ActivationInfo:
        return cls(row.id, domain, row.action, row.adapter_id, row.previous_adapter_id, aware(row.at))


@dataclass(frozen=True)
class RunInfo:
    id: int
    domain: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    last_checkpoint: str | None
    log_path: str | None
    hyperparams: dict
    adapter_id: int | None
    error: str | None

    @classmethod
    def from_row(cls, row: TrainingRunRow, domain: str) -> RunInfo:
        return cls(row.id, domain, row.status, aware(row.started_at), aware(row.finished_at), row.last_checkpoint,
                   row.log_path, dict(row.hyperparams or {}), row.adapter_id, row.error)


@dataclass(frozen=True)
class PushInfo:
    """One push of an adapter to a Hugging Face Hub repo (`commit_sha` is the commit on `revision`)."""

    id: int
    adapter_id: int
    repo: str
    revision: str
    commit_sha: str
    tag: str | None
    endpoint: str
    pushed_at: datetime

    @classmethod
    def from_row(cls, row: HubPushRow) -> PushInfo:
        return cls(row.id, row.adapter_id, row.repo, row.revision, row.commit_sha, row.tag, row.endpoint,
                   aware(row.pushed_at))


@dataclass(frozen=True)
class FileProblem:
    """A stored file whose sha256 differs from the recorded one (`actual` None: the file is missing,
    or unreadable: then `error` says why)."""

    name: str
    expected: str
    actual: str | None
    error: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.name} is unreadable ({self.error})"
        if self.actual is None:
            return f"{self.name} is missing (expected sha256 {self.expected})"
        return f"{self.name} has sha256 {self.actual}, expected {self.expected}"

    def summary(self) -> str:
        """A few words for the registry's damage mark and route details."""
        what = "unreadable" if self.error is not None else "missing" if self.actual is None else "sha256 mismatch"
        return f"{self.name}: {what}"


@dataclass(frozen=True)
class VerifyResult:
    adapter: AdapterInfo
    problems: tuple[FileProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems
