"""The content-addressed compile cache: one checksummed file per compiled module.

The key is a sha256 of everything that decides the compiled output: the source
bytes, the interpreter (bytecode magic and version), the security profile and
scanner, the filename baked into the code object, and the optimisation level.
Nothing is keyed on mtimes or ``__pycache__``: an edit of the same size within the
same second is a different key.

Each entry carries its own checksum (sha256, or HMAC-sha256 when the cache is
given a secret) over its whole payload, and is validated before use: checksum,
key, bytecode magic, source checksum, code checksum, and that the code unmarshals
to a code object for the expected file. An entry that fails any check is deleted
and reported as ``None``, so the caller recompiles; a damaged entry is never loaded.

An entry validated once is kept in memory (the last :data:`MEMO_SIZE`), with the
identity of the file it was read from (inode, size, mtime): while the file is
that same file, a later load takes the entry from memory (one ``stat`` instead of
a read, a checksum, two hashes and an unmarshal: 60-100 us per module measured,
every create of an app loads each of its modules). A file replaced or rewritten
since is read and validated again. The entry in memory is right for its key
whatever happens to the file (the key is the content's), so a damaged file that
kept its identity costs nothing but its discovery, at the next real read.

Note: a plain checksum catches corruption and careless edits, not an attacker who
can write the cache directory and recompute it; keep the directory private to the
host (it is created 0700), or pass a ``secret``.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     cache = CompileCache(d)
...     key = cache.key(source=b"x = 1", filename="/a/m.py", profile="medium")
...     cache.load(key, source=b"x = 1", filename="/a/m.py") is None
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import OrderedDict
import marshal
import os
import struct
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.compilation import MAGIC
from runtime import telemetry

__all__ = ["CompileCache", "CacheEntry", "FORMAT"]

log = logging.getLogger("runtime.compiler.cache")

FORMAT = b"SBXCACHE1\n"
#: Validated entries kept in memory per cache (the most recently loaded).
MEMO_SIZE = 256
_HLEN = struct.Struct("!I")
_DIGEST = 32


@dataclass
class CacheEntry:
    """A cached compile outcome: ``status`` ``ok`` (with code) or ``error`` (diagnostics)."""

    status: str
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    imports: list[dict[str, Any]] = field(default_factory=list)
    code: bytes = b""


class CompileCache:
    """Entries under ``directory`` (created 0700 if missing), one file per key.

    Writes are atomic (temp file + rename), so concurrent compilers sharing a
    directory never see half an entry. One thread uses an instance (the compiler's).
    """

    def __init__(self, directory: str | os.PathLike[str], *, secret: bytes | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._secret = secret
        self.corrupt = 0  # entries found damaged and removed
        # key -> (identity of the file it was validated from, the entry)
        self._memo: OrderedDict[str, tuple[tuple[int, int, int], CacheEntry]] = OrderedDict()

    def key(
        self,
        *,
        source: bytes,
        filename: str,
        profile: str,
        scanner_token: str = "none",
        optimize: int = 0,
    ) -> str:
        """The cache key for one module compile (hex sha256).

        >>> c = CompileCache.__new__(CompileCache)
        >>> c.key(source=b"a", filename="f", profile="p") != c.key(
        ...     source=b"a", filename="f", profile="q")
        True
        """
        h = hashlib.sha256()
        for part in (
            b"sandbox-compile/1",
            MAGIC,
            sys.version.encode(),
            profile.encode(),
            scanner_token.encode(),
            filename.encode(),
            str(optimize).encode(),
            hashlib.sha256(source).digest(),
        ):
            h.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity
            h.update(part)
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.sbxc"

    def _digest(self, payload: bytes) -> bytes:
        if self._secret is not None:
            return hmac.new(self._secret, payload, hashlib.sha256).digest()
        return hashlib.sha256(payload).digest()

    def store(
        self, key: str, entry: CacheEntry, *, source: bytes, filename: str, recreate: bool = True
    ) -> None:
        """Write an entry atomically. A failure to write is logged, not raised: a
        cache that cannot be written only costs a recompile next time.

        ``recreate=False``: if the directory has gone, write nothing (a write made
        after the compile's caller went on must not bring back the cache of a
        sandbox destroyed meanwhile; :meth:`ensure_directory` recreates it when a
        compile starts)."""
        header = {
            "key": key,
            "python_magic": MAGIC.hex(),
            "python": sys.version.split()[0],
            "filename": filename,
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "status": entry.status,
            "diagnostics": entry.diagnostics,
            "imports": entry.imports,
            "code_sha256": hashlib.sha256(entry.code).hexdigest(),
        }
        h = json.dumps(header, separators=(",", ":")).encode()
        payload = _HLEN.pack(len(h)) + h + entry.code
        data = FORMAT + self._digest(payload) + payload
        try:
            if recreate:
                self.ensure_directory()
            try:
                fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".sbxc")
            except FileNotFoundError:
                if recreate:
                    raise
                return
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path(key))
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not write compile cache entry %s: %s", self.path(key), exc)

    def ensure_directory(self) -> None:
        """Create the directory if it has gone since (a destroyed sandbox's cache,
        used again by a sandbox of the same id). Raises OSError."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def load(self, key: str, *, source: bytes, filename: str) -> CacheEntry | None:
        """The validated entry for ``key``, or None (missing, or damaged and removed)."""
        p = self.path(key)
        memo = self._memo.get(key)
        try:
            if memo is not None:
                st = os.stat(p)
                if (st.st_ino, st.st_size, st.st_mtime_ns) == memo[0]:
                    self._memo.move_to_end(key)
                    return memo[1]
            with open(p, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            self._memo.pop(key, None)
            return None
        except OSError as exc:
            log.warning("could not read compile cache entry %s: %s", p, exc)
            return None
        try:
            entry = self._validate(data, key, source, filename)
        except _Damaged as exc:
            self._memo.pop(key, None)
            self.corrupt += 1
            log.warning("compile cache entry %s is damaged (%s); rebuilding it", p, exc)
            telemetry.execute(
                "compile.cache_corrupt", {"count": 1}, {"entry": str(p), "reason": str(exc)}
            )
            try:
                p.unlink()
            except OSError:
                pass
            return None
        self._memo[key] = ((st.st_ino, st.st_size, st.st_mtime_ns), entry)
        self._memo.move_to_end(key)
        if len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        return entry

    def _validate(self, data: bytes, key: str, source: bytes, filename: str) -> CacheEntry:
        if not data.startswith(FORMAT):
            raise _Damaged("not a cache entry of this format")
        digest = data[len(FORMAT): len(FORMAT) + _DIGEST]
        payload = data[len(FORMAT) + _DIGEST:]
        if not hmac.compare_digest(digest, self._digest(payload)):
            raise _Damaged("checksum mismatch")
        try:
            (hlen,) = _HLEN.unpack_from(payload)
            header = json.loads(payload[_HLEN.size: _HLEN.size + hlen])
            code = payload[_HLEN.size + hlen:]
        except (struct.error, ValueError) as exc:
            raise _Damaged(f"unreadable header: {exc}") from None
        expect = {
            "key": key,
            "python_magic": MAGIC.hex(),
            "filename": filename,
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "code_sha256": hashlib.sha256(code).hexdigest(),
        }
        for name, value in expect.items():
            if header.get(name) != value:
                raise _Damaged(f"{name} mismatch")
        status = header.get("status")
        if status == "ok":
            try:
                obj = marshal.loads(code)
            except (EOFError, ValueError, TypeError) as exc:
                raise _Damaged(f"code does not unmarshal: {exc}") from None
            if not isinstance(obj, types.CodeType) or obj.co_filename != filename:
                raise _Damaged("not a code object for this file")
        elif status != "error":
            raise _Damaged(f"unknown status {status!r}")
        return CacheEntry(status, header.get("diagnostics", []), header.get("imports", []), code)

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        self._memo.clear()
        n = 0
        for p in self.directory.glob("*.sbxc"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n


class _Damaged(Exception):
    pass
