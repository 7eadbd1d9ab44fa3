"""The registry's files: `<adapters_dir>/<domain>/v<N>/`, written atomically and verified by sha256.

A new version is written into `<adapters_dir>/.tmp-<pid>-<random>-<host>/` (same filesystem),
every file fsync'ed, then renamed into place in one step while the registering transaction holds
its lock; the row is committed after that. A crash before the commit leaves only a folder that no
row points to, which `collect_garbage` (or the next registration of that version) removes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from glmbot.config import DOMAIN_NAME_RE
from glmbot.registry.info import FileProblem

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
CARD = "README.md"
METRICS = "metrics.json"
ROUTING = "routing_prompts.json"
TMP_PREFIX = ".tmp-"
VERSION_DIR_RE = re.compile(r"^v(\d+)$")
# A temp folder made on another machine (shared storage) is only collected after this long.
FOREIGN_TMP_GRACE_S = 24 * 3600
_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def version_dir(domain: str, version: int) -> str:
    """The folder of a version, relative to the adapters folder, with posix separators."""
    return f"{domain}/v{version}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write `data` to a new file and flush it to disk before returning."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def host_tag() -> str:
    """This machine's name as temp folder names carry it (no '-', which separates their fields)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


@dataclass
class StagedAdapter:
    """Files of a version being written, still in their temp folder."""

    path: Path
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    size_bytes: int = 0

    def add(self, name: str, data: bytes) -> None:
        write_durable(self.path / name, data)
        self.files[name] = sha256_bytes(data)
        self.size_bytes += len(data)


def stage(adapters_dir: Path, contents: dict[str, bytes]) -> StagedAdapter:
    """A new temp folder under `adapters_dir` holding `contents` ({file name: bytes}), fsync'ed."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    path = adapters_dir / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{host_tag()}"
    path.mkdir()
    staged = StagedAdapter(path)
    try:
        for name, data in contents.items():
            staged.add(name, data)
    except BaseException:
        discard(path)
        raise
    return staged


def publish(staged: StagedAdapter, adapters_dir: Path, relative: str) -> Path:
    """Move the staged folder to `adapters_dir/relative` in one rename; returns the final folder.

    Call it only while holding the lock that guards this version number: a folder already at the
    target is then a leftover of a crashed registration (no row points to it) and is replaced.
    """
    final = adapters_dir / relative
    _fsync_dir(staged.path)
    if not final.parent.is_dir():
        final.parent.mkdir(parents=True)
        _fsync_dir(final.parent.parent)
    if final.exists():
        remove_tree(final)
    os.rename(staged.path, final)
    _fsync_dir(final.parent)
    return final


def discard(path: Path) -> None:
    """Remove a temp folder of ours (best effort: gc removes what is left)."""
    shutil.rmtree(path, ignore_errors=True)


def remove_tree(path: Path) -> None:
    """Remove a version folder: first renamed aside, so a half-deleted folder never sits at its name."""
    aside = path.parent.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{host_tag()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # already gone (removed by gc, or never published)
        return
    shutil.rmtree(aside)


def check_files(folder: Path, files: dict[str, str]) -> list[FileProblem]:
    """The files of `folder` whose sha256 is not the recorded one (missing files included)."""
    problems = []
    for name, expected in sorted(files.items()):
        path = folder / name
        try:
            actual = sha256_file(path) if path.is_file() else None
        except OSError as exc:  # permissions, I/O errors
            problems.append(FileProblem(name, expected, None, f"{type(exc).__name__}: {exc.strerror or exc}"))
            continue
        if actual != expected:
            problems.append(FileProblem(name, expected, actual))
    return problems


def read_checked(folder: Path, name: str, expected: str) -> tuple[bytes, FileProblem | None]:
    """A file's bytes and, when its sha256 differs from `expected`, the problem (hashed once)."""
    path = folder / name
    if not path.is_file():
        return b"", FileProblem(name, expected, None)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return b"", FileProblem(name, expected, None, f"{type(exc).__name__}: {exc.strerror or exc}")
    actual = sha256_bytes(data)
    return data, None if actual == expected else FileProblem(name, expected, actual)


def _tmp_is_abandoned(path: Path, now: float) -> bool:
    """True for a temp folder whose writer is gone: a dead pid on this host, or old on another host."""
    parts = path.name[len(TMP_PREFIX):].split("-", 2)
    if len(parts) == 3 and parts[0].isdigit():
        pid, host = int(parts[0]), parts[2]
        if host == host_tag():
            if pid == os.getpid():
                return False
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # alive, owned by another user
                return False
            return False
    try:
        return now - path.stat().st_mtime > FOREIGN_TMP_GRACE_S
    except FileNotFoundError:
        return False


def collect_garbage(adapters_dir: Path, live: set[str]) -> list[Path]:
    """Remove abandoned temp folders and version folders no row points to; returns what was removed.

    `live` holds the relative paths of every registered version. Call it while holding the lock
    that blocks registrations (a version folder exists without its row only inside one).
    """
    removed: list[Path] = []
    if not adapters_dir.is_dir():
        return removed
    now = time.time()
    for entry in sorted(adapters_dir.iterdir()):
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir():
            if _tmp_is_abandoned(entry, now):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        elif entry.is_dir() and DOMAIN_NAME_RE.fullmatch(entry.name):
            for child in sorted(entry.iterdir()):
                if child.is_dir() and VERSION_DIR_RE.match(child.name) and f"{entry.name}/{child.name}" not in live:
                    remove_tree(child)
                    removed.append(child)
    return removed


def copy_out(folder: Path, names: list[str], dest: Path) -> Path:
    """Copy `names` from `folder` into a new folder `dest` (built aside, then renamed into place)."""
    dest = dest.expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}{TMP_PREFIX}{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        for name in names:
            write_durable(work / name, (folder / name).read_bytes())
        if dest.is_dir():
            dest.rmdir()  # only an empty folder reaches here (the caller checked)
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest
