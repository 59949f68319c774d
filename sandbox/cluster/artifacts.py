"""An app directory as plain data, to ship it to another node through Ray's object store.

The head packs the app's source files (what the compiler reads) into an
:class:`AppArtifact`; a node agent writes it into the sandbox's own directory on
its node. Writing is in place: changed files are replaced atomically and files
the new artifact no longer has are removed, so a node's hot reload sees exactly
the head's sources.

>>> art = pack_app("examples/counter")
>>> sorted(art.files)
['app.py', 'counter.py']
>>> art == pack_app("examples/counter"), len(art.digest)
(True, 64)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ConfigError

__all__ = ["AppArtifact", "pack_app", "write_app", "MAX_APP_BYTES"]

#: Largest app (sum of its source files) shipped to a node; a bigger one is refused.
MAX_APP_BYTES = 16 * 1024 * 1024
#: What is shipped: the sources the compiler reads, nothing of caches or VCS.
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"}


@dataclass(frozen=True)
class AppArtifact:
    """The files of an app, by path relative to the app directory, and their digest."""

    files: Mapping[str, bytes] = field(default_factory=dict)
    digest: str = ""

    def with_sources(self, source: Mapping[str, str]) -> AppArtifact:
        """A copy where module ``m`` (``source={"m": text}``) has the given text.

        >>> art = pack_app("examples/counter").with_sources({"counter": "x = 1\\n"})
        >>> art.files["counter.py"]
        b'x = 1\\n'
        """
        files = dict(self.files)
        for module, text in source.items():
            files[module.replace(".", "/") + ".py"] = text.encode()
        return _artifact(files)


def _artifact(files: dict[str, bytes]) -> AppArtifact:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return AppArtifact(files=files, digest=h.hexdigest())


def pack_app(path: str | os.PathLike[str]) -> AppArtifact:
    """Read the ``.py`` files under ``path`` (the app directory) into an artifact.

    Raises :class:`~runtime.errors.ConfigError` if ``path`` is not a directory or the
    app is larger than :data:`MAX_APP_BYTES`.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError("path", os.fspath(path), "an existing directory holding the app's modules")
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            full = Path(dirpath) / name
            data = full.read_bytes()
            total += len(data)
            if total > MAX_APP_BYTES:
                raise ConfigError("path", os.fspath(path),
                                  f"an app of at most {MAX_APP_BYTES} bytes of sources to ship")
            files[full.relative_to(root).as_posix()] = data
    return _artifact(files)


def write_app(artifact: AppArtifact, dest: str | os.PathLike[str]) -> None:
    """Make ``dest`` hold exactly the artifact's files (replacing each atomically)."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in artifact.files.items():
        target = (root / rel).resolve()
        if root.resolve() not in target.parents:
            raise ConfigError("artifact", rel, "a path inside the app directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.read_bytes() == data:
            continue
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    wanted = set(artifact.files)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if name.endswith(".py") and rel not in wanted:
                os.unlink(Path(dirpath) / name)
