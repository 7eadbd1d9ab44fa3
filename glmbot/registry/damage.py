"""Damaged adapters: the part of `Registry` that records which versions' files failed their check.

A version whose files fail their sha256 check (or cannot be read) when it is loaded, promoted,
rolled back to or verified is marked in its row (`damage`, `damaged_at`); `verify` clears the mark
once the files are intact again. Serving reads the mark: a routed request skips a marked version
for an earlier intact one of its domain (`earlier_active`), and an explicit one fails with
`damaged_error`. A mixin like RecordsMixin; it uses the host's `_db` and `_domain_row`.
"""

from __future__ import annotations

import logging

from sqlmodel import select

from glmbot.errors import AdapterIntegrityError, DatabaseError
from glmbot.registry.info import AdapterInfo, FileProblem
from glmbot.registry.refs import check_domain_name
from glmbot.registry.tables import ACTIVE, PROMOTE, ROLLBACK, ActivationRow, AdapterRow, utcnow

log = logging.getLogger(__name__)


class DamageMixin:
    """Marks on damaged versions, and the versions a domain can fall back to."""

    def earlier_active(self, domain: str) -> list[AdapterInfo]:
        """The domain's versions that were active before its current one, most recently active first
        (still registered, not marked damaged): what a request can fall back to."""
        with self._db.read() as s:
            dom = self._domain_row(s, check_domain_name(domain))
            events = s.exec(select(ActivationRow.adapter_id).where(
                ActivationRow.domain_id == dom.id, ActivationRow.action.in_((PROMOTE, ROLLBACK)))
                .order_by(ActivationRow.id.desc())).all()
            found: list[AdapterInfo] = []
            for adapter_id in dict.fromkeys(events):
                row = s.get(AdapterRow, adapter_id)
                if row is not None and row.status != ACTIVE and row.damage is None:
                    found.append(self._info(s, row, dom.name))
            return found

    def record_check(self, info: AdapterInfo, problems: list[FileProblem]) -> None:
        """Mark `info` damaged (problems found) or clear its mark (none found); best effort: a registry
        that cannot be written keeps serving, and the check itself still refuses the files."""
        damage = "; ".join(p.summary() for p in problems) or None
        if damage == info.damage:
            return
        try:
            with self._db.write() as s:
                row = s.get(AdapterRow, info.id)
                if row is None:
                    return
                row.damage, row.damaged_at = damage, (utcnow() if damage else None)
                s.add(row)
        except DatabaseError as exc:
            log.warning("could not record in the registry that %s is %s: %s", info.ref,
                        f"damaged ({damage})" if damage else "intact again", exc)
            return
        # INFO: whoever asked for the check reports the damage itself (an error, verify's output, the
        # engine's fallback warning); this only records that the mark changed.
        log.info("adapter %s: %s", info.ref, f"marked damaged ({damage})" if damage else "damage mark cleared")


def integrity_error(info: AdapterInfo, problems: list[FileProblem]) -> AdapterIntegrityError:
    """One error naming the adapter, every damaged file (expected and actual sha256) and the fix."""
    what = "; ".join(p.describe() for p in problems)
    summary = "; ".join(p.summary() for p in problems)
    return AdapterIntegrityError(f"adapter {info.ref} (id {info.id}) in {info.path} is damaged: {what}. "
                                 f"{_fix(info)}", ref=info.ref, damage=summary)


def damaged_error(info: AdapterInfo) -> AdapterIntegrityError:
    """The error of a version already marked damaged (its files are not read again)."""
    when = f" since {info.damaged_at:%Y-%m-%d %H:%M:%S} UTC" if info.damaged_at else ""
    return AdapterIntegrityError(f"adapter {info.ref} (id {info.id}) in {info.path} is marked damaged{when}: "
                                 f"{info.damage}. {_fix(info)}", ref=info.ref, damage=info.damage)


def _fix(info: AdapterInfo) -> str:
    first = f"serve the previous version: glmbot adapters rollback {info.domain}; or " if info.is_active else ""
    return (f"Fix: {first}restore the files from an export and check them with: glmbot adapters verify {info.ref} "
            f"(clears the mark); or remove this version (glmbot adapters rm {info.ref} --force) and register it "
            "again")
