"""Where a runtime keeps its durable state, and who may use it.

``sandbox.start(state_dir=...)`` names the directory. Without one, a named runtime
(``sandbox.start(name="billing")``) uses ``$XDG_DATA_HOME/sandbox/<name>`` (by
default ``~/.local/share/sandbox/<name>``), kept across stops and host restarts;
an unnamed one gets a temporary directory, removed at stop. The directory holds
``state.db`` (the store, :mod:`actors.store`), ``audit.jsonl`` (the audit log) and
``lock``: one running runtime per directory, so two hosts never write one store.

>>> import tempfile
>>> sd = StateDir.resolve(tempfile.mkdtemp(), None)
>>> sd.temporary
False
>>> store = sd.open()
>>> StateDir.resolve(sd.path, None).open()
Traceback (most recent call last):
...
runtime.errors.ConfigError: invalid state_dir=...: expected a directory no other running runtime uses (...)
>>> sd.close()
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from actors.store import DB_NAME, Store
from runtime.errors import ConfigError

__all__ = ["StateDir", "default_state_dir"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def default_state_dir(name: str) -> Path:
    """The per-user state directory of the runtime called ``name``.

    >>> default_state_dir("billing").parts[-2:]
    ('sandbox', 'billing')
    """
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(
            "name", name, "letters, digits, '.', '_' and '-' (a named runtime keeps its state "
            "in a directory of that name); or pass state_dir= explicitly")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sandbox" / name


@dataclass
class StateDir:
    """A runtime's state directory: its path, whether it is temporary, its lock."""

    path: str
    temporary: bool
    store: Store | None = None
    _lock: IO[bytes] | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, state_dir: str | os.PathLike[str] | None, name: str | None) -> StateDir:
        """The directory for ``state_dir`` (given), else the runtime's ``name``, else a
        temporary one. Created if missing; raises ConfigError if it cannot be."""
        if state_dir is None and name is None:
            return cls(tempfile.mkdtemp(prefix="sandbox-state-"), temporary=True)
        path = Path(os.fspath(state_dir)) if state_dir is not None else default_state_dir(str(name))
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError("state_dir", str(path),
                              f"a directory that can be created and written ({exc.strerror})") from None
        return cls(str(path.resolve()), temporary=False)

    @property
    def audit_path(self) -> str:
        """The audit log (JSON lines) inside the directory."""
        return os.path.join(self.path, "audit.jsonl")

    def open(self) -> Store:
        """Lock the directory for this runtime and open its store (idempotent)."""
        if self.store is not None:
            return self.store
        lock = open(os.path.join(self.path, "lock"), "wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(
                "state_dir", self.path,
                "a directory no other running runtime uses (another runtime holds its lock; "
                "stop it, or pass another state_dir or name)") from None
        try:
            self.store = Store.open(os.path.join(self.path, DB_NAME))
        except BaseException:
            lock.close()
            raise
        self._lock = lock
        return self.store

    def close(self) -> None:
        """Close the store and release the lock; a temporary directory is removed."""
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)
