"""Evaluations, training runs and Hub pushes: the part of `Registry` that records what happened to adapters.

A mixin so the Registry keeps one flat API while this module stays small; it uses the host's
`_db`, `_resolve_row` and `_domain_row`.
"""

from __future__ import annotations

from sqlmodel import select

from glmbot.errors import RegistryError
from glmbot.registry import checks
from glmbot.registry.info import EvaluationInfo, PushInfo, RunInfo
from glmbot.registry.refs import check_domain_name
from glmbot.registry.tables import RUN_STATUSES, DomainRow, EvaluationRow, HubPushRow, TrainingRunRow, utcnow

RUNNING = "running"


class RecordsMixin:
    """Evaluations and Hub pushes per adapter, training runs per domain."""

    # ---- evaluations ----------------------------------------------------------------------------

    def add_evaluation(self, ref: str | int, metrics: dict[str, float], dataset_sha256: str | None,
                       kind: str = "dev") -> EvaluationInfo:
        """Record `metrics` ({name: value}) of REF on the evaluation set with this sha256."""
        metrics = checks.check_metrics(metrics, "evaluation metrics")
        if not metrics:
            raise RegistryError("an evaluation needs at least one metric, e.g. {'rouge-l': 41.2}")
        if not isinstance(kind, str) or not kind.strip() or len(kind) > 32:
            raise RegistryError(f"evaluation kind must be a short name such as 'dev' or 'test', got {kind!r}")
        sha = checks.check_sha256(dataset_sha256, "dataset_sha256")
        with self._db.write() as s:
            row, _ = self._resolve_row(s, ref)
            evaluation = EvaluationRow(adapter_id=row.id, kind=kind, metrics=metrics, dataset_sha256=sha)
            s.add(evaluation)
            s.flush()
            return EvaluationInfo.from_row(evaluation)

    def evaluations(self, ref: str | int) -> list[EvaluationInfo]:
        """REF's evaluations, oldest first."""
        with self._db.read() as s:
            row, _ = self._resolve_row(s, ref)
            rows = s.exec(select(EvaluationRow).where(EvaluationRow.adapter_id == row.id).order_by(EvaluationRow.id))
            return [EvaluationInfo.from_row(r) for r in rows]

    # ---- Hub pushes -----------------------------------------------------------------------------

    def record_push(self, ref: str | int, *, repo: str, revision: str, commit_sha: str, tag: str | None = None,
                    endpoint: str = "") -> PushInfo:
        """Record that REF was pushed to the Hub repo `repo` as commit `commit_sha` on branch `revision`."""
        for name, value in (("repo", repo), ("revision", revision), ("commit_sha", commit_sha)):
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"a push record needs a non-empty {name}, got {value!r}")
        if tag is not None and (not isinstance(tag, str) or not tag.strip()):
            raise RegistryError(f"a push record's tag must be a non-empty string or None, got {tag!r}")
        with self._db.write() as s:
            row, _ = self._resolve_row(s, ref)
            push = HubPushRow(adapter_id=row.id, repo=repo, revision=revision, commit_sha=commit_sha, tag=tag,
                              endpoint=str(endpoint or ""))
            s.add(push)
            s.flush()
            return PushInfo.from_row(push)

    def pushes(self, ref: str | int | None = None) -> list[PushInfo]:
        """Hub pushes of REF (all adapters' when None), oldest first."""
        with self._db.read() as s:
            stmt = select(HubPushRow)
            if ref is not None:
                stmt = stmt.where(HubPushRow.adapter_id == self._resolve_row(s, ref)[0].id)
            return [PushInfo.from_row(r) for r in s.exec(stmt.order_by(HubPushRow.id))]

    # ---- training runs --------------------------------------------------------------------------

    def start_run(self, domain: str, *, hyperparams: dict | None = None, log_path: str | None = None) -> RunInfo:
        """Record that a training run of `domain` started (status running)."""
        hyperparams = checks.check_json_dict(hyperparams, "hyperparams")
        with self._db.write() as s:
            dom = self._domain_row(s, check_domain_name(domain))
            run = TrainingRunRow(domain_id=dom.id, hyperparams=hyperparams,
                                 log_path=None if log_path is None else str(log_path))
            s.add(run)
            s.flush()
            return RunInfo.from_row(run, dom.name)

    def update_run(self, run_id: int, *, last_checkpoint: str) -> RunInfo:
        """Record the run's latest checkpoint folder (what a resume starts from)."""
        with self._db.write() as s:
            run = self._running(s, run_id)
            run.last_checkpoint = str(last_checkpoint)
            s.add(run)
            s.flush()
            return RunInfo.from_row(run, s.get(DomainRow, run.domain_id).name)

    def finish_run(self, run_id: int, *, status: str = "succeeded", adapter: str | int | None = None,
                   error: str | None = None, last_checkpoint: str | None = None) -> RunInfo:
        """Close a running run: succeeded (optionally with the adapter it registered), failed or cancelled."""
        if status not in RUN_STATUSES or status == RUNNING:
            done = [s for s in RUN_STATUSES if s != RUNNING]
            raise RegistryError(f"a run finishes as one of {', '.join(done)}, got {status!r}")
        with self._db.write() as s:
            run = self._running(s, run_id)
            if adapter is not None:
                run.adapter_id = self._resolve_row(s, adapter)[0].id
            run.status, run.finished_at, run.error = status, utcnow(), error
            if last_checkpoint is not None:
                run.last_checkpoint = str(last_checkpoint)
            s.add(run)
            s.flush()
            return RunInfo.from_row(run, s.get(DomainRow, run.domain_id).name)

    def get_run(self, run_id: int) -> RunInfo:
        with self._db.read() as s:
            run = self._run_row(s, run_id)
            return RunInfo.from_row(run, s.get(DomainRow, run.domain_id).name)

    def list_runs(self, domain: str | None = None) -> list[RunInfo]:
        """Training runs, newest first."""
        with self._db.read() as s:
            stmt = select(TrainingRunRow, DomainRow.name).join(DomainRow, TrainingRunRow.domain_id == DomainRow.id)
            if domain is not None:
                self._domain_row(s, check_domain_name(domain))
                stmt = stmt.where(DomainRow.name == domain)
            return [RunInfo.from_row(run, name) for run, name in s.exec(stmt.order_by(TrainingRunRow.id.desc()))]

    def _run_row(self, s, run_id: int) -> TrainingRunRow:  # noqa: ANN001 - Session
        run = s.get(TrainingRunRow, run_id) if isinstance(run_id, int) else None
        if run is None:
            raise RegistryError(f"no training run with id {run_id!r}; see Registry.list_runs()")
        return run

    def _running(self, s, run_id: int) -> TrainingRunRow:  # noqa: ANN001 - Session
        run = self._run_row(s, run_id)
        if run.status != RUNNING:
            raise RegistryError(f"training run {run_id} already finished ({run.status}); start a new run instead")
        return run
