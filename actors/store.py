"""The durable store: what must survive a component crash or a host restart.

One SQLite database (the standard library's ``sqlite3``, WAL journal) in the
runtime's state directory. It holds the sandboxes' desired state (id, app path,
options, profile, work directory), every kept module version (code and source,
what a rollback or a restart loads), the version numbering (never reused), the
version log and the reload journal. The audit log is a JSON-lines file beside it
(``audit.jsonl``), appended by the security controller.

Every change is one transaction, so a host killed with SIGKILL at any moment
leaves either the state before the change or the state after it; the next open
needs no repair. ``synchronous=NORMAL`` with WAL keeps every committed transaction
across a process kill (a power loss may drop the last few; say ``durable=True``
to sync each commit).

The schema is versioned (``PRAGMA user_version``): :data:`MIGRATIONS` takes a
database of any older version up to :data:`SCHEMA_VERSION`, each step in its own
transaction; a database written by a newer version is refused with a clear error.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> st = Store.open(os.path.join(d, "state.db"))
>>> st.schema_version() == SCHEMA_VERSION
True
>>> st.put_sandbox(StoredSandbox("s1", {"id": "s1", "path": "/app"}, "/tmp/w", 0.0))
>>> [s.id for s in st.sandboxes()]
['s1']
>>> st.close()
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from runtime.errors import SandboxError

__all__ = [
    "Store",
    "StoreError",
    "StoredSandbox",
    "StoredVersion",
    "JournalEntry",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "DB_NAME",
]

DB_NAME = "state.db"


class StoreError(SandboxError):
    """The state directory's database cannot be used (newer schema, not a database, ...)."""


@dataclass(frozen=True)
class StoredSandbox:
    """A sandbox's desired state: its configuration (``SandboxConfig.as_dict()``)."""

    id: str
    config: dict[str, Any]
    workdir: str
    created_at: float


@dataclass(frozen=True)
class StoredVersion:
    """One kept module version, as stored (see ``actors.versions.ModuleVersion``)."""

    sandbox: str
    module: str
    version: int
    source_sha256: str
    code_sha256: str
    loaded_at: float
    dependencies: tuple[str, ...]
    size: int
    file: str
    is_package: bool
    code: bytes
    source: bytes


@dataclass(frozen=True)
class JournalEntry:
    """One reload or rollback: ``pending`` until the host learns the sandbox's verdict,
    then ``committed``, ``failed`` or (found pending at the next start) ``abandoned``."""

    id: str
    sandbox: str
    kind: str
    state: str
    versions: dict[str, int]
    started_at: float
    finished_at: float | None
    error: str | None


def _script(db: sqlite3.Connection, sql: str) -> None:
    # Statement by statement: executescript() would commit the migration's transaction.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    _script(db, 
        """
        CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY, config TEXT NOT NULL, workdir TEXT NOT NULL,
            created_at REAL NOT NULL);
        CREATE TABLE modules (
            sandbox TEXT NOT NULL, module TEXT NOT NULL,
            current INTEGER NOT NULL, last INTEGER NOT NULL,
            PRIMARY KEY (sandbox, module));
        CREATE TABLE versions (
            sandbox TEXT NOT NULL, module TEXT NOT NULL, version INTEGER NOT NULL,
            source_sha256 TEXT NOT NULL, code_sha256 TEXT NOT NULL, loaded_at REAL NOT NULL,
            dependencies TEXT NOT NULL, size INTEGER NOT NULL, file TEXT NOT NULL,
            is_package INTEGER NOT NULL, code BLOB NOT NULL, source BLOB NOT NULL,
            PRIMARY KEY (sandbox, module, version));
        CREATE TABLE version_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, sandbox TEXT NOT NULL, at REAL NOT NULL,
            module TEXT NOT NULL, action TEXT NOT NULL, version INTEGER NOT NULL,
            previous INTEGER);
        """
    )


def _v2(db: sqlite3.Connection) -> None:
    # The reload journal came with the prepare/commit reload protocol.
    _script(db, 
        """
        CREATE TABLE journal (
            id TEXT PRIMARY KEY, sandbox TEXT NOT NULL, kind TEXT NOT NULL,
            state TEXT NOT NULL, versions TEXT NOT NULL, started_at REAL NOT NULL,
            finished_at REAL, error TEXT);
        CREATE INDEX journal_sandbox ON journal (sandbox, started_at);
        CREATE INDEX version_log_sandbox ON version_log (sandbox, seq);
        """
    )


#: ``MIGRATIONS[n]`` takes a database from schema version ``n`` to ``n + 1``.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """The state database of one runtime; thread-safe (one connection, one lock).

    Open it with :meth:`open`; every write method is one transaction.

    >>> st = Store.open(":memory:")
    >>> st.journal_begin("r1", "sb", "reload", {"m": 2})
    >>> [(e.id, e.state) for e in st.journal("sb")]
    [('r1', 'pending')]
    >>> st.close()
    """

    def __init__(self, db: sqlite3.Connection, path: str) -> None:
        self._db = db
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, durable: bool = False,
             upto: int = SCHEMA_VERSION) -> Store:
        """Open (creating or migrating) the database at ``path``.

        ``durable=True`` syncs every commit to disk (survives a power loss, slower);
        ``upto`` stops migrating at that schema version (tests of the migration path).

        >>> Store.open(":memory:").schema_version() == SCHEMA_VERSION
        True
        """
        path = os.fspath(path)
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                 timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.execute("PRAGMA foreign_keys=ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"state database {path} cannot be opened ({exc}); move it away to start "
                "with an empty state, or pass another state_dir"
            ) from None
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"state database {path} has schema version {version}, newer than this "
                f"version of sandbox knows ({SCHEMA_VERSION}); upgrade sandbox, or pass "
                "another state_dir"
            )
        for step in range(version, min(upto, SCHEMA_VERSION)):
            # One transaction per step: a kill mid-migration leaves the previous version.
            db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version={step + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return cls(db, path)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._db.close()

    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- sandboxes -----------------------------------------------------------------
    def put_sandbox(self, sb: StoredSandbox) -> None:
        """Record (or replace) a sandbox's desired state."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO sandboxes VALUES (?, ?, ?, ?)",
                       (sb.id, json.dumps(sb.config), sb.workdir, sb.created_at))

    def delete_sandbox(self, sandbox_id: str) -> None:
        """Forget a sandbox: desired state, versions, log and journal, in one transaction."""
        self.delete_sandboxes([sandbox_id])

    def delete_sandboxes(self, sandbox_ids: Iterable[str]) -> None:
        """Forget sandboxes (a batch destroy): each one's desired state, versions, log
        and journal, all in one transaction (one commit, one sync, for the batch)."""
        rows = [(sid,) for sid in sandbox_ids]
        with self.transaction() as db:
            for table in ("modules", "versions", "version_log", "journal"):
                db.executemany(f"DELETE FROM {table} WHERE sandbox = ?", rows)
            db.executemany("DELETE FROM sandboxes WHERE id = ?", rows)

    def sandboxes(self) -> list[StoredSandbox]:
        """Every sandbox's desired state, oldest first."""
        return [StoredSandbox(i, json.loads(c), w, t) for i, c, w, t in
                self._rows("SELECT * FROM sandboxes ORDER BY created_at, id")]

    def prune(self) -> list[str]:
        """Drop versions, log and journal of sandboxes with no desired state (a host
        killed mid-create, before the sandbox was stored); returns their ids."""
        with self.transaction() as db:
            ghosts = [r[0] for r in db.execute(
                "SELECT DISTINCT sandbox FROM modules WHERE sandbox NOT IN (SELECT id FROM sandboxes) "
                "UNION SELECT DISTINCT sandbox FROM journal WHERE sandbox NOT IN "
                "(SELECT id FROM sandboxes)")]
            for ghost in ghosts:
                for table in ("modules", "versions", "version_log", "journal"):
                    db.execute(f"DELETE FROM {table} WHERE sandbox = ?", (ghost,))
        return ghosts

    # -- versions ------------------------------------------------------------------
    def record_versions(
        self,
        sandbox_id: str,
        versions: Iterable[StoredVersion],
        *,
        keep: int,
        journal: str | None = None,
        removed: Iterable[str] = (),
    ) -> None:
        """Make ``versions`` current (each is a new number), evict beyond ``keep`` per
        module, mark the ``removed`` modules no longer current, log it all, and mark
        ``journal`` committed: one transaction."""
        now = time.time()
        with self.transaction() as db:
            self._remove(db, sandbox_id, removed, now)
            for v in versions:
                prev = db.execute("SELECT current FROM modules WHERE sandbox=? AND module=?",
                                  (sandbox_id, v.module)).fetchone()
                db.execute(
                    "INSERT OR REPLACE INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (sandbox_id, v.module, v.version, v.source_sha256, v.code_sha256,
                     v.loaded_at, json.dumps(list(v.dependencies)), v.size, v.file,
                     int(v.is_package), v.code, v.source))
                db.execute(
                    "INSERT INTO modules VALUES (?,?,?,?) ON CONFLICT (sandbox, module) DO "
                    "UPDATE SET current=excluded.current, last=MAX(last, excluded.last)",
                    (sandbox_id, v.module, v.version, v.version))
                db.execute(
                    "DELETE FROM versions WHERE sandbox=? AND module=? AND version NOT IN "
                    "(SELECT version FROM versions WHERE sandbox=? AND module=? "
                    "ORDER BY version DESC LIMIT ?)",
                    (sandbox_id, v.module, sandbox_id, v.module, keep))
                db.execute(
                    "INSERT INTO version_log (sandbox, at, module, action, version, previous) "
                    "VALUES (?,?,?,?,?,?)",
                    (sandbox_id, v.loaded_at, v.module, "recorded", v.version,
                     prev[0] if prev else None))
            if journal is not None:
                self._finish(db, journal, "committed", None, now)

    def set_current(self, sandbox_id: str, module: str, version: int, *,
                    journal: str | None = None) -> None:
        """Make a kept version current (a committed rollback), logged; one transaction."""
        now = time.time()
        with self.transaction() as db:
            prev = db.execute("SELECT current FROM modules WHERE sandbox=? AND module=?",
                              (sandbox_id, module)).fetchone()
            db.execute("UPDATE modules SET current=? WHERE sandbox=? AND module=?",
                       (version, sandbox_id, module))
            if prev is not None and prev[0] != version:
                db.execute(
                    "INSERT INTO version_log (sandbox, at, module, action, version, previous) "
                    "VALUES (?,?,?,?,?,?)", (sandbox_id, now, module, "current", version, prev[0]))
            if journal is not None:
                self._finish(db, journal, "committed", None, now)

    def modules(self) -> list[tuple[str, str, int, int]]:
        """``(sandbox, module, current, last)`` of every module ever recorded."""
        return [(s, m, c, n) for s, m, c, n in self._rows("SELECT * FROM modules")]

    def versions(self) -> list[StoredVersion]:
        """Every kept version (all sandboxes), oldest first per module."""
        return [
            StoredVersion(s, m, v, ss, cs, t, tuple(json.loads(d)), n, f, bool(p), c, src)
            for s, m, v, ss, cs, t, d, n, f, p, c, src in self._rows(
                "SELECT * FROM versions ORDER BY sandbox, module, version")
        ]

    def version_log(self, sandbox_id: str, limit: int = 1000) -> list[tuple[float, str, str, int, int | None]]:
        """``(at, module, action, version, previous)`` of a sandbox, oldest first."""
        rows = self._rows(
            "SELECT at, module, action, version, previous FROM version_log WHERE sandbox=? "
            "ORDER BY seq DESC LIMIT ?", (sandbox_id, limit))
        return [(t, m, a, v, p) for t, m, a, v, p in reversed(rows)]

    # -- reload journal --------------------------------------------------------------
    def journal_begin(self, entry_id: str, sandbox_id: str, kind: str,
                      versions: dict[str, int]) -> None:
        """Record a reload as ``pending`` before the sandbox is asked to swap."""
        with self.transaction() as db:
            db.execute("INSERT INTO journal VALUES (?,?,?,?,?,?,NULL,NULL)",
                       (entry_id, sandbox_id, kind, "pending", json.dumps(versions), time.time()))

    def journal_fail(self, entry_id: str, error: str) -> None:
        """The sandbox kept its old code: the reload is ``failed``."""
        with self.transaction() as db:
            self._finish(db, entry_id, "failed", error, time.time())

    def journal_abandon_pending(self) -> list[str]:
        """At start: reloads left ``pending`` by a host that died are ``abandoned``
        (their sandbox died with the host and boots the recorded code)."""
        with self.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM journal WHERE state='pending'")]
            db.execute("UPDATE journal SET state='abandoned', finished_at=?, error=? "
                       "WHERE state='pending'", (time.time(), "the host stopped mid-reload"))
        return ids

    def journal(self, sandbox_id: str | None = None, limit: int = 100) -> list[JournalEntry]:
        """The latest reload journal entries, oldest first."""
        where, args = ("WHERE sandbox=?", [sandbox_id]) if sandbox_id else ("", [])
        rows = self._rows(f"SELECT * FROM journal {where} ORDER BY started_at DESC LIMIT ?",
                          [*args, limit])
        return [JournalEntry(i, s, k, st, json.loads(v), t0, t1, e)
                for i, s, k, st, v, t0, t1, e in reversed(rows)]

    @staticmethod
    def _remove(db: sqlite3.Connection, sandbox_id: str, modules: Iterable[str], now: float) -> None:
        for m in modules:
            db.execute("INSERT INTO version_log (sandbox, at, module, action, version, previous) "
                       "SELECT sandbox, ?, module, 'removed', 0, current FROM modules "
                       "WHERE sandbox=? AND module=?", (now, sandbox_id, m))
            db.execute("UPDATE modules SET current=0 WHERE sandbox=? AND module=?",
                       (sandbox_id, m))

    @staticmethod
    def _finish(db: sqlite3.Connection, entry_id: str, state: str, error: str | None,
                now: float) -> None:
        db.execute("UPDATE journal SET state=?, finished_at=?, error=? WHERE id=?",
                   (state, now, error, entry_id))
