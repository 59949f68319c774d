"""Which files of a watched directory count as sources, and which saves changed anything.

Pure logic for the watcher (:mod:`actors.watcher`), independent of watchdog:

- :class:`WatchFilter` says whether a path is a source to watch: it matches the
  sandbox's patterns (default ``*.py``) and lies in no ignored directory
  (``__pycache__``, ``.git``, hidden directories, the compile cache, ...) and is no
  editor temporary (vim's ``.x.py.swp`` and ``4913`` probe, emacs' ``.#x.py`` lock
  and ``#x.py#`` autosave, ``x.py~`` backups, ...).
- :meth:`WatchFilter.scan` lists the sources under the root (pruning ignored
  directories), for the initial content hashes and the file cap.
- :class:`FileHashes` keeps the sha256 of each source as last seen, so a save that
  did not change the content (``touch``, an editor writing the same bytes) is
  dropped, and a deleted source is told apart from a temporary file that never
  counted.

>>> f = WatchFilter("/app")
>>> [f.matches(p) for p in ("/app/m.py", "/app/.m.py.swp", "/app/__pycache__/m.py",
...                         "/app/pkg/m.py", "/app/m.py~", "/other/m.py", "/app/4913")]
[True, False, False, True, False, False, False]
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "DEFAULT_IGNORE",
    "DEFAULT_IGNORE_DIRS",
    "DEFAULT_PATTERNS",
    "FileHashes",
    "TooManyFiles",
    "WatchFilter",
    "sha256_file",
]

DEFAULT_PATTERNS: tuple[str, ...] = ("*.py",)

#: File names never worth a reload: editors' swap, lock, backup and probe files.
DEFAULT_IGNORE: tuple[str, ...] = (
    ".*",  # hidden files, as the compiler skips them: vim swap files (.x.py.swp, .swo,
    # .swx), emacs lock files (.#x.py), editors' hidden temporaries
    "*.sw[a-p]",
    "*~",  # vim/emacs backups
    "#*#",  # emacs autosave
    "4913",  # vim's probe that the directory is writable
    "*.tmp",
    "*.bak",
    "*.orig",
    "*.rej",
    "*___jb_tmp___",  # JetBrains safe write
    "*___jb_old___",
)

#: Directory names whose content is never watched (hidden directories are skipped too).
DEFAULT_IGNORE_DIRS: tuple[str, ...] = (
    "__pycache__",
    ".git",
    ".hg",
    ".svn",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
    ".venv",
    "venv",
    "node_modules",
)


class TooManyFiles(Exception):
    """A scan found more sources than the cap allows (``found`` is how many it had seen)."""

    def __init__(self, root: str, limit: int, found: int) -> None:
        self.root = root
        self.limit = limit
        self.found = found
        super().__init__(
            f"{root} has more than {limit} files to watch (stopped counting at {found})"
        )


class WatchFilter:
    """Decides whether a path under ``root`` is a source to watch.

    ``patterns`` are globs matched against the file name; ``ignore`` are more globs
    matched against the file name and every directory name between ``root`` and
    the file, added to :data:`DEFAULT_IGNORE`; ``exclude`` are directories whose
    whole content is skipped (the compile cache, the sandbox's work directory,
    when they lie inside the app).

    >>> f = WatchFilter("/app", patterns=["*.py", "*.toml"], ignore=["generated"])
    >>> f.matches("/app/conf.toml"), f.matches("/app/generated/x.py"), f.matches("/app/x.pyc")
    (True, False, False)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        patterns: Iterable[str] = DEFAULT_PATTERNS,
        ignore: Iterable[str] = (),
        exclude: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.patterns = tuple(patterns)
        self.ignore = DEFAULT_IGNORE + tuple(ignore)
        self.ignore_dirs = DEFAULT_IGNORE_DIRS + tuple(ignore)
        self.exclude = tuple(os.path.abspath(os.fspath(e)) for e in exclude)
        self._prefix = self.root.rstrip(os.sep) + os.sep

    def _name_matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.ignore
        )

    def dir_ignored(self, name: str) -> bool:
        """Whether a directory called ``name`` is skipped with everything in it.

        >>> WatchFilter("/a").dir_ignored("__pycache__"), WatchFilter("/a").dir_ignored("pkg")
        (True, False)
        """
        return name.startswith(".") or any(fnmatch.fnmatchcase(name, p) for p in self.ignore_dirs)

    def _excluded(self, path: str) -> bool:
        return any(path == e or path.startswith(e.rstrip(os.sep) + os.sep) for e in self.exclude)

    def inside(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` lies under the root (and in no excluded or ignored directory)."""
        p = os.fspath(path)
        if not p.startswith(self._prefix):
            return False
        if self._excluded(p):
            return False
        dirs = p[len(self._prefix):].split(os.sep)[:-1]
        return not any(self.dir_ignored(d) for d in dirs)

    def matches(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` (absolute) is a source file to watch."""
        p = os.fspath(path)
        return self.inside(p) and self._name_matches(os.path.basename(p))

    def scan(self, limit: int | None = None) -> list[str]:
        """Every source under the root, sorted; raises :class:`TooManyFiles` past ``limit``.

        Symlinked directories are not followed (no loops, no escaping the app).
        """
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = [
                d for d in dirnames
                if not self.dir_ignored(d) and not self._excluded(os.path.join(dirpath, d))
            ]
            for fn in filenames:
                if self._name_matches(fn):
                    found.append(os.path.join(dirpath, fn))
                    if limit is not None and len(found) > limit:
                        raise TooManyFiles(self.root, limit, len(found))
        found.sort()
        return found

    def directories(self) -> Iterator[str]:
        """The root and every directory under it that :meth:`scan` descends into."""
        for dirpath, dirnames, _ in os.walk(self.root, followlinks=False):
            dirnames[:] = [
                d for d in dirnames
                if not self.dir_ignored(d) and not self._excluded(os.path.join(dirpath, d))
            ]
            yield dirpath


def sha256_file(path: str) -> str:
    """The hex sha256 of a file's content (raises OSError like ``open``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


class FileHashes:
    """The sha256 of every known source, as last seen; not thread-safe (one owner).

    :meth:`changed` takes the paths of a batch of events and returns those whose
    content differs from what was last seen (new, edited or deleted sources),
    recording the new hashes. A path that is gone and was never known (an
    editor's temporary file) is dropped.

    >>> contents = {"/a/m.py": b"x = 1"}
    >>> def read(p):
    ...     if p not in contents: raise FileNotFoundError(p)
    ...     return contents[p]
    >>> h = FileHashes(reader=read); h.add_baseline(["/a/m.py"])
    >>> h.changed(["/a/m.py"])             # touched, same bytes
    []
    >>> contents["/a/m.py"] = b"x = 2"; h.changed(["/a/m.py"])
    ['/a/m.py']
    >>> del contents["/a/m.py"]; h.changed(["/a/m.py", "/a/tmp.py"])  # deleted; never known
    ['/a/m.py']
    """

    def __init__(self, reader: Callable[[str], bytes] | None = None) -> None:
        self._read = reader
        self._known: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, path: object) -> bool:
        return path in self._known

    def paths(self) -> list[str]:
        return sorted(self._known)

    def _hash(self, path: str) -> str:
        if self._read is not None:
            return hashlib.sha256(self._read(path)).hexdigest()
        return sha256_file(path)

    def add_baseline(self, paths: Iterable[str]) -> None:
        """Record the current hash of each path (unreadable ones are skipped)."""
        for p in paths:
            try:
                self._known[p] = self._hash(p)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                self._known.pop(p, None)
            except OSError:
                continue

    def forget(self, paths: Iterable[str]) -> None:
        """Drop what is known of ``paths``: their next event counts as a change."""
        for p in paths:
            self._known.pop(p, None)

    def under(self, directory: str) -> list[str]:
        """Known paths inside ``directory`` (for a directory deleted or moved away)."""
        prefix = directory.rstrip(os.sep) + os.sep
        return [p for p in self._known if p.startswith(prefix)]

    def changed(self, paths: Iterable[str]) -> list[str]:
        """The paths whose content changed since last seen (in the order given)."""
        out: list[str] = []
        for p in dict.fromkeys(paths):
            try:
                digest = self._hash(p)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                if self._known.pop(p, None) is not None:
                    out.append(p)  # a source was deleted or moved away
                continue
            except OSError:
                # Unreadable now (permissions, a race with the writer): let the
                # reload find out and report it; look again at the next event.
                self._known.pop(p, None)
                out.append(p)
                continue
            if self._known.get(p) != digest:
                self._known[p] = digest
                out.append(p)
        return out


def relative(root: str, paths: Iterable[str]) -> list[str]:
    """``paths`` relative to ``root`` where possible (for logs and telemetry).

    >>> relative("/app", ["/app/m.py", "/elsewhere/x.py"])
    ['m.py', '/elsewhere/x.py']
    """
    out = []
    for p in paths:
        try:
            out.append(str(Path(p).relative_to(root)))
        except ValueError:
            out.append(p)
    return out
