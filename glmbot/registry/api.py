"""`Registry`: the one entry point to adapters, domains, evaluations and training runs.

The trainer, engine, hub and CLI use only this class. It returns frozen records (`AdapterInfo`,
...), never ORM rows. Each operation is one transaction; operations that change which adapter a
domain serves, or allocate a version number, first lock the domain (BEGIN IMMEDIATE on SQLite,
SELECT ... FOR UPDATE elsewhere).

Only the operations that handle prefix tensors (register, import, load) import torch, when they
run: listing, promoting and the other metadata commands start in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import exc as sa_exc
from sqlmodel import Session, delete, func, select

from glmbot.errors import (
    AdapterIntegrityError,
    RegistryError,
    UnknownAdapterError,
    UnknownDomainError,
    unknown_domain,
)
from glmbot.registry import checks, store
from glmbot.registry.card import (
    AdapterDescription,
    adapter_config,
    glmbot_version,
    json_bytes,
    model_card,
)
from glmbot.registry.conversations import ConversationsMixin
from glmbot.registry.damage import DamageMixin, integrity_error
from glmbot.registry.database import Database
from glmbot.registry.info import (
    ActivationInfo,
    AdapterInfo,
    DomainInfo,
    FileProblem,
    VerifyResult,
)
from glmbot.registry.records import RecordsMixin
from glmbot.registry.refs import check_domain_name, parse_ref
from glmbot.registry.tables import (
    ACTIVE,
    ARCHIVED,
    DEACTIVATE,
    PROMOTE,
    ROLLBACK,
    STATUSES,
    ActivationRow,
    AdapterRow,
    DomainRow,
    EvaluationRow,
    TrainingRunRow,
    utcnow,
)

if TYPE_CHECKING:  # only for annotations: importing torch and transformers costs seconds
    import torch

    from glmbot.model.configuration import ChatGLMConfig
    from glmbot.registry.registration import Registration


class Registry(RecordsMixin, ConversationsMixin, DamageMixin):
    """Adapters of every domain: files under `adapters_dir`, rows in the database at `db_url`."""

    def __init__(self, db_url: str, adapters_dir: str | Path, *, busy_timeout_s: float = 30.0):
        self.adapters_dir = Path(adapters_dir).expanduser().resolve()
        self.db_url = db_url
        self._db = Database(db_url, busy_timeout_s=busy_timeout_s)

    @classmethod
    def from_settings(cls, settings) -> Registry:  # noqa: ANN001 - glmbot.config.Settings
        """The registry that glmbot.toml (and GLMBOT_DB_URL) configure."""
        return cls(settings.db_url, settings.adapters_dir)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- domains -------------------------------------------------------------------------------

    def add_domain(self, name: str, description: str = "", keywords=(), patterns=()) -> DomainInfo:
        """Create a domain; refuses a bad or taken name."""
        check_domain_name(name)
        row = DomainRow(name=name, description=str(description or ""),
                        keywords=checks.check_strings(keywords, "keywords"), patterns=checks.check_patterns(patterns))
        try:
            with self._db.write() as s:
                if s.exec(select(DomainRow.id).where(DomainRow.name == name)).first() is not None:
                    raise RegistryError(f"domain {name!r} already exists; see it with: glmbot domains show {name}")
                s.add(row)
        except sa_exc.IntegrityError:  # created concurrently by another process (PostgreSQL)
            raise RegistryError(f"domain {name!r} already exists; see it with: glmbot domains show {name}") from None
        return self.get_domain(name)

    def ensure_domain(self, name: str, description: str = "") -> DomainInfo:
        """The domain `name`, created if missing (safe when several processes race to create it)."""
        check_domain_name(name)
        try:
            return self.get_domain(name)
        except UnknownDomainError:
            pass
        try:
            return self.add_domain(name, description)
        except RegistryError:
            return self.get_domain(name)

    def get_domain(self, name: str) -> DomainInfo:
        check_domain_name(name)
        with self._db.read() as s:
            return self._domain_info(s, self._domain_row(s, name))

    def remove_domain(self, name: str) -> None:
        """Delete a domain that has no adapter versions (with its activation history and training runs)."""
        with self._db.write() as s:
            dom = self._domain_row(s, name, lock=True)
            versions = s.exec(select(AdapterRow.version).where(AdapterRow.domain_id == dom.id)
                              .order_by(AdapterRow.version)).all()
            if versions:
                refs = ", ".join(f"{name}@v{v}" for v in versions)
                raise RegistryError(f"domain {name!r} still has adapters ({refs}); remove them first with: glmbot "
                                    f"adapters rm {name}@vN (--force for the active one)")
            running = s.exec(select(TrainingRunRow.id).where(TrainingRunRow.domain_id == dom.id,
                                                             TrainingRunRow.status == "running")).all()
            if running:
                raise RegistryError(f"domain {name!r} is being trained (run {', '.join(map(str, running))}); wait for "
                                    "it to end, or stop it, then remove the domain")
            s.exec(delete(ActivationRow).where(ActivationRow.domain_id == dom.id))
            s.exec(delete(TrainingRunRow).where(TrainingRunRow.domain_id == dom.id))
            s.delete(dom)

    def list_domains(self) -> list[DomainInfo]:
        with self._db.read() as s:
            return [self._domain_info(s, row) for row in s.exec(select(DomainRow).order_by(DomainRow.name))]

    # ---- registering and reading adapters -------------------------------------------------------

    def register_adapter(self, domain: str, prefix_state: dict[str, torch.Tensor], *, base_model: str,
                         base_fingerprint: str, architecture: dict[str, int], source: str = "trained",
                         hyperparams: dict | None = None, dataset_sha256: str | None = None,
                         sample_count: int | None = None, metrics: dict[str, float] | None = None,
                         provenance: dict | None = None, routing_prompts: list[str] | None = None,
                         create_domain: bool = False) -> AdapterInfo:
        """Store a prefix as the next version of `domain` (status candidate) and return it.

        `prefix_state` uses the official keys (`transformer.prefix_encoder.*`). Everything is
        checked before anything is written; files are complete on disk before the row commits.
        """
        from glmbot.registry.registration import check_registration

        request = check_registration(
            domain, prefix_state, base_model=base_model, base_fingerprint=base_fingerprint, architecture=architecture,
            source=source, hyperparams=hyperparams, dataset_sha256=dataset_sha256, sample_count=sample_count,
            metrics=metrics, provenance=provenance, routing_prompts=routing_prompts)
        self.ensure_domain(domain) if create_domain else self.get_domain(domain)
        try:
            staged = store.stage(self.adapters_dir, request.files)
        except OSError as exc:
            raise self._write_error(exc) from None
        try:
            with self._db.write() as s:
                return self._commit_version(s, staged, request)
        except OSError as exc:  # disk full, permissions: the transaction was rolled back
            raise self._write_error(exc) from None
        finally:
            store.discard(staged.path)  # nothing left there once published

    def resolve(self, ref: str | int) -> AdapterInfo:
        """REF ('support', 'support@v3', an id) -> the adapter it names."""
        with self._db.read() as s:
            row, dom = self._resolve_row(s, ref)
            return self._info(s, row, dom.name)

    def list_adapters(self, domain: str | None = None, status: str | None = None) -> list[AdapterInfo]:
        """Adapters ordered by domain and version, optionally of one domain and/or status."""
        if status is not None and status not in STATUSES:
            raise RegistryError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        with self._db.read() as s:
            if domain is not None:
                self._domain_row(s, check_domain_name(domain))
            stmt = select(AdapterRow, DomainRow.name).join(DomainRow, AdapterRow.domain_id == DomainRow.id)
            evals = select(EvaluationRow).join(AdapterRow, EvaluationRow.adapter_id == AdapterRow.id)
            evals = evals.join(DomainRow, AdapterRow.domain_id == DomainRow.id)
            if domain is not None:
                stmt, evals = stmt.where(DomainRow.name == domain), evals.where(DomainRow.name == domain)
            if status is not None:
                stmt, evals = stmt.where(AdapterRow.status == status), evals.where(AdapterRow.status == status)
            by_adapter: dict[int, list[EvaluationRow]] = {}
            for evaluation in s.exec(evals):
                by_adapter.setdefault(evaluation.adapter_id, []).append(evaluation)
            rows = s.exec(stmt.order_by(DomainRow.name, AdapterRow.version)).all()
            return [AdapterInfo.from_row(row, name, self.adapters_dir, by_adapter.get(row.id, []))
                    for row, name in rows]

    def load_prefix_state(self, ref: str | int) -> tuple[dict[str, torch.Tensor], AdapterInfo]:
        """The adapter's prefix tensors (official keys, fp32), after checking every file's sha256.

        Files that fail the check (or cannot be read) raise AdapterIntegrityError and mark the
        version damaged in the registry (`adapters list` shows it; `verify` clears it once intact).
        """
        info = self.resolve(ref)
        weights, problems = b"", []
        for name, expected in sorted(info.files.items()):
            data, problem = store.read_checked(info.path, name, expected)
            if problem is not None:
                problems.append(problem)
            if name == store.WEIGHTS:
                weights = data
        if not problems:
            from safetensors.torch import load as load_safetensors

            try:
                return load_safetensors(weights), info
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                problems.append(FileProblem(store.WEIGHTS, info.files.get(store.WEIGHTS, ""), None,
                                            f"not a safetensors file: {exc}"))
        self.record_check(info, problems)
        raise integrity_error(info, problems)

    def verify(self, ref: str | int | None = None) -> list[VerifyResult]:
        """Re-hash the files of one adapter (or all) against the recorded sha256; marks the damaged
        versions in the registry and clears the mark of those found intact again."""
        infos = [self.resolve(ref)] if ref is not None else self.list_adapters()
        results = [VerifyResult(info, tuple(store.check_files(info.path, info.files))) for info in infos]
        for result in results:
            self.record_check(result.adapter, list(result.problems))
        return results

    def history(self, domain: str) -> list[ActivationInfo]:
        """The domain's activation log, oldest first."""
        with self._db.read() as s:
            dom = self._domain_row(s, check_domain_name(domain))
            rows = s.exec(select(ActivationRow).where(ActivationRow.domain_id == dom.id).order_by(ActivationRow.id))
            return [ActivationInfo.from_row(row, dom.name) for row in rows]

    # ---- lifecycle ------------------------------------------------------------------------------

    def promote(self, ref: str | int) -> AdapterInfo:
        """Make REF its domain's active adapter; the one it replaces is archived (one transaction)."""
        info = self.resolve(ref)
        problems = store.check_files(info.path, info.files)
        self.record_check(info, problems)
        if problems:  # never start serving a damaged adapter
            raise integrity_error(info, problems)
        with self._db.write() as s:
            row, dom = self._resolve_row(s, ref, lock=True)
            if row.status == ACTIVE:
                return self._info(s, row, dom.name)
            current = self._active_row(s, dom.id)
            self._activate(s, dom, row, current, PROMOTE, current.id if current else None)
            return self._info(s, row, dom.name)

    def rollback(self, domain: str) -> AdapterInfo:
        """Re-activate the version that was active before the current one (one transaction); a target
        whose files fail their check is refused (and marked damaged), as promote refuses one."""
        with self._db.write() as s:
            dom = self._domain_row(s, check_domain_name(domain), lock=True)
            current = self._active_row(s, dom.id)
            if current is None:
                raise RegistryError(f"domain {domain!r} has no active adapter to roll back from; promote a version: "
                                    f"glmbot adapters promote {domain}@vN")
            made_current = self._last_activation(s, dom.id, current.id)
            target_id = made_current.previous_adapter_id if made_current else None
            if target_id is None:
                raise RegistryError(f"{domain}@v{current.version} has no earlier active version to roll back to; "
                                    f"promote one explicitly: glmbot adapters promote {domain}@vN")
            target = s.get(AdapterRow, target_id)
            if target is None:
                raise RegistryError(f"the adapter active before {domain}@v{current.version} (id {target_id}) was "
                                    f"removed; promote a version explicitly: glmbot adapters promote {domain}@vN")
            info = self._info(s, target, dom.name)
            problems = store.check_files(info.path, info.files)
            if not problems:
                before_target = self._last_activation(s, dom.id, target.id, before=made_current.id)
                previous = before_target.previous_adapter_id if before_target else None
                self._activate(s, dom, target, current, ROLLBACK, previous)
                info = self._info(s, target, dom.name)
        if not problems:
            if info.damage:  # its files pass now: clear an old mark, as promote does
                self.record_check(info, [])
                info = self.resolve(info.id)
            return info
        self.record_check(info, problems)  # outside the transaction, which changed nothing
        error = integrity_error(info, problems)
        raise AdapterIntegrityError(f"cannot roll back {domain!r} to {info.ref}: {error}", ref=info.ref,
                                    damage=error.damage)

    def archive(self, ref: str | int) -> AdapterInfo:
        """Retire a version (kept on disk); archiving the active one leaves its domain without one."""
        with self._db.write() as s:
            row, dom = self._resolve_row(s, ref, lock=True)
            if row.status != ARCHIVED:
                if row.status == ACTIVE:
                    s.add(ActivationRow(domain_id=dom.id, action=DEACTIVATE, adapter_id=row.id))
                row.status = ARCHIVED
                s.add(row)
                s.flush()
            return self._info(s, row, dom.name)

    def remove(self, ref: str | int, force: bool = False) -> AdapterInfo:
        """Delete a version's row, evaluations and files; the active one only with force=True."""
        with self._db.write() as s:
            row, dom = self._resolve_row(s, ref, lock=True)
            info = self._info(s, row, dom.name)
            if row.status == ACTIVE:
                if not force:
                    raise RegistryError(
                        f"{info.ref} is the active adapter of {dom.name!r}; promote another version first "
                        f"(glmbot adapters promote {dom.name}@vN) or remove it anyway with: glmbot adapters rm "
                        f"{info.ref} --force")
                s.add(ActivationRow(domain_id=dom.id, action=DEACTIVATE, adapter_id=row.id))
            s.exec(delete(EvaluationRow).where(EvaluationRow.adapter_id == row.id))
            s.delete(row)
        # After the commit: version numbers are never reused, so nobody else writes this folder;
        # a crash here leaves a folder that gc removes.
        store.remove_tree(info.path)
        return info

    def gc(self) -> list[Path]:
        """Remove folders no row points to (crash leftovers, abandoned temp folders); returns them."""
        with self._db.write() as s:
            self._db.lock_everything(s)
            live = set(s.exec(select(AdapterRow.path)).all())
            return store.collect_garbage(self.adapters_dir, live)

    # ---- transfer -------------------------------------------------------------------------------

    def import_path(self, path: str | Path, domain: str, *, config: ChatGLMConfig, base_model: str,
                    base_fingerprint: str, create_domain: bool = False,
                    allow_base_mismatch: bool = False, source: str = "imported",
                    provenance: dict | None = None) -> AdapterInfo:
        """Register an official `checkpoint-N` folder or a glmbot/PEFT-style adapter folder.

        `config` is the configured base's ChatGLMConfig: the prefix must fit it. `source` and
        `provenance` (merged over what the folder says) let callers such as the Hub pull say where
        the folder came from.
        """
        from glmbot.registry import transfer

        return transfer.import_path(self, path, domain, config=config, base_model=base_model,
                                    base_fingerprint=base_fingerprint, create_domain=create_domain,
                                    allow_base_mismatch=allow_base_mismatch, source=source, provenance=provenance)

    def export(self, ref: str | int, dest: str | Path) -> Path:
        """Copy REF's verified files into a new folder `dest` that `import_path` accepts back."""
        info = self.resolve(ref)
        problems = store.check_files(info.path, info.files)
        if problems:
            raise integrity_error(info, problems)
        dest = Path(dest).expanduser()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise RegistryError(f"export destination {dest} already exists and is not an empty folder; "
                                "choose a new folder")
        return store.copy_out(info.path, sorted(info.files), dest)

    # ---- internals ------------------------------------------------------------------------------

    def _commit_version(self, s: Session, staged: store.StagedAdapter,
                        request: Registration) -> AdapterInfo:
        """Inside the write transaction: take the next version, finish and publish the files, add the row."""
        dom = self._domain_row(s, request.domain, lock=True)
        version, dom.next_version = dom.next_version, dom.next_version + 1
        s.add(dom)
        d = AdapterDescription(domain=dom.name, version=version, created=utcnow(),
                               weights_sha256=staged.files[store.WEIGHTS], **request.description)
        staged.add(store.CONFIG, json_bytes(adapter_config(d)))
        staged.add(store.CARD, model_card(d).encode("utf-8"))
        relative = store.version_dir(dom.name, version)
        final = store.publish(staged, self.adapters_dir, relative)
        try:
            row = AdapterRow(domain_id=dom.id, version=version, base_model=d.base_model,
                             base_fingerprint=d.base_fingerprint, architecture=d.architecture,
                             pre_seq_len=d.pre_seq_len, prefix_projection=d.prefix_projection, path=relative,
                             files=dict(staged.files), size_bytes=staged.size_bytes, created_at=d.created,
                             source=d.source, provenance=d.provenance, hyperparams=d.hyperparams,
                             dataset_sha256=d.dataset_sha256, sample_count=d.sample_count, metrics=d.metrics,
                             glmbot_version=glmbot_version())
            s.add(row)
            s.flush()
        except BaseException:
            store.remove_tree(final)  # still under the lock: nobody else can be using this version
            raise
        return AdapterInfo.from_row(row, dom.name, self.adapters_dir)

    def _write_error(self, exc: OSError) -> RegistryError:
        return RegistryError(f"cannot write adapter files under {self.adapters_dir} ({exc}); make the folder "
                             "writable (and check free space) or set [registry] adapters_dir in glmbot.toml")

    def _domain_row(self, s: Session, name: str, lock: bool = False) -> DomainRow:
        stmt = select(DomainRow).where(DomainRow.name == name)
        if lock:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        row = s.exec(stmt).first()
        if row is None:
            raise unknown_domain(name, s.exec(select(DomainRow.name).order_by(DomainRow.name)).all())
        return row

    def _resolve_row(self, s: Session, ref: str | int, lock: bool = False) -> tuple[AdapterRow, DomainRow]:
        parsed = parse_ref(ref)
        if parsed.id is not None:
            row = s.get(AdapterRow, parsed.id)
            if row is None:
                raise UnknownAdapterError(f"no adapter with id {parsed.id}; list them with: glmbot adapters list")
            dom = s.get(DomainRow, row.domain_id)
            if lock:
                dom = self._domain_row(s, dom.name, lock=True)
                row = s.get(AdapterRow, parsed.id, populate_existing=True)
                if row is None:
                    raise UnknownAdapterError(f"adapter id {parsed.id} was just removed by another process")
            return row, dom
        dom = self._domain_row(s, parsed.domain, lock=lock)
        stmt = select(AdapterRow).where(AdapterRow.domain_id == dom.id)
        if parsed.version is None:
            row = s.exec(stmt.where(AdapterRow.status == ACTIVE)).first()
        else:
            row = s.exec(stmt.where(AdapterRow.version == parsed.version)).first()
        if row is None:
            raise self._no_such_version(s, dom, parsed.version)
        return row, dom

    def _no_such_version(self, s: Session, dom: DomainRow, version: int | None) -> UnknownAdapterError:
        rows = s.exec(select(AdapterRow.version, AdapterRow.status).where(AdapterRow.domain_id == dom.id)
                      .order_by(AdapterRow.version)).all()
        existing = ", ".join(f"v{v} ({status})" for v, status in rows) or "none"
        if version is None:
            hint = (f"promote one: glmbot adapters promote {dom.name}@v{rows[-1][0]}" if rows
                    else f"train one first: glmbot train --domain {dom.name}")
            return UnknownAdapterError(f"domain {dom.name!r} has no active adapter (versions: {existing}); {hint}")
        return UnknownAdapterError(f"domain {dom.name!r} has no version v{version}; existing versions: {existing}")

    def _active_row(self, s: Session, domain_id: int) -> AdapterRow | None:
        stmt = select(AdapterRow).where(AdapterRow.domain_id == domain_id, AdapterRow.status == ACTIVE)
        return s.exec(stmt.execution_options(populate_existing=True)).first()

    def _last_activation(self, s: Session, domain_id: int, adapter_id: int,
                         before: int | None = None) -> ActivationRow | None:
        """The latest promote/rollback event that made `adapter_id` active (before event id `before`)."""
        stmt = select(ActivationRow).where(ActivationRow.domain_id == domain_id, ActivationRow.adapter_id == adapter_id,
                                           ActivationRow.action.in_((PROMOTE, ROLLBACK)))
        if before is not None:
            stmt = stmt.where(ActivationRow.id < before)
        return s.exec(stmt.order_by(ActivationRow.id.desc())).first()

    def _activate(self, s: Session, dom: DomainRow, row: AdapterRow, current: AdapterRow | None, action: str,
                  previous_id: int | None) -> None:
        now = utcnow()
        if current is not None:
            current.status = ARCHIVED
            s.add(current)
            s.flush()  # before the new one becomes active: the partial unique index checks each statement
        row.status, row.activated_at = ACTIVE, now
        s.add(row)
        s.add(ActivationRow(domain_id=dom.id, action=action, adapter_id=row.id, previous_adapter_id=previous_id,
                            at=now))
        s.flush()

    def _info(self, s: Session, row: AdapterRow, domain: str) -> AdapterInfo:
        evaluations = s.exec(select(EvaluationRow).where(EvaluationRow.adapter_id == row.id)).all()
        return AdapterInfo.from_row(row, domain, self.adapters_dir, list(evaluations))

    def _domain_info(self, s: Session, row: DomainRow) -> DomainInfo:
        count = s.exec(select(func.count()).select_from(AdapterRow).where(AdapterRow.domain_id == row.id)).one()
        active = s.exec(select(AdapterRow.version).where(AdapterRow.domain_id == row.id,
                                                         AdapterRow.status == ACTIVE)).first()
        return DomainInfo.from_row(row, active, count)
