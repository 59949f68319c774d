"""Plain-data results of the compiler: diagnostics, compiled modules, compilation results.

These travel between components (compiler -> version manager -> sandbox), so they
hold only plain values: strings, ints, bytes, tuples. This module imports nothing
beyond the standard library and the runtime's errors, because the compile worker
process imports it too.

>>> d = Diagnostic("app.py", 3, 5, "error", "syntax-error", "expected ':'")
>>> str(d)
"app.py:3:5: syntax-error expected ':'"
>>> r = CompilationResult(root="/app", errors=[d])
>>> r.ok
False
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import CompileError

__all__ = [
    "Diagnostic",
    "CompiledModule",
    "CompilationResult",
    "MAGIC",
    "SEVERITIES",
    "syntax_hint",
]

#: The bytecode magic of this interpreter; a compiled module records the one it was
#: compiled for, and loading checks it (marshal data is not portable across versions).
MAGIC: bytes = importlib.util.MAGIC_NUMBER

SEVERITIES = ("error", "warning", "info")
#: A security finding's optional fields beyond the linter line (see :class:`Diagnostic`).
_SOURCE_FIELDS = ("risk", "source_line", "context", "matched")


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a source file, like a linter's: ``file:line:col: code message``.

    ``line`` and ``col`` are 1-based (0 when unknown). ``severity`` is ``error``
    (blocks the module), ``warning`` or ``info``. ``hint`` says what to do, when
    there is something useful to say. Security findings also carry ``risk``
    (``critical`` ... ``info``, see ``actors/scan.py``), ``source_line``,
    ``context`` (the lines around it) and ``matched`` (the text the rule matched).

    >>> d = Diagnostic("m.py", 1, 8, "warning", "unknown-import", "no module named 'jsn'",
    ...                hint="did you mean 'json'?")
    >>> str(d), d.is_error
    ("m.py:1:8: unknown-import no module named 'jsn'", False)
    """

    file: str
    line: int
    col: int
    severity: str
    code: str
    message: str
    hint: str | None = None
    risk: str | None = None
    source_line: str | None = None
    context: str | None = None
    matched: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.code} {self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def format(self) -> str:
        """The linter line plus the hint, if any, on the next line.

        >>> print(Diagnostic("m.py", 2, 1, "error", "x", "bad", "fix it").format())
        m.py:2:1: x bad
            hint: fix it
        """
        return f"{self}\n    hint: {self.hint}" if self.hint else str(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON, msgpack)."""
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "risk": self.risk,
            "source_line": self.source_line,
            "context": self.context,
            "matched": self.matched,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diagnostic:
        return cls(
            str(d["file"]),
            int(d.get("line") or 0),
            int(d.get("col") or 0),
            str(d.get("severity") or "error"),
            str(d.get("code") or "unknown"),
            str(d.get("message") or ""),
            d.get("hint"),
            *(d.get(k) for k in _SOURCE_FIELDS),
        )

    @classmethod
    def coerce(cls, obj: Any, default_file: str) -> Diagnostic:
        """Accept a Diagnostic, a dict, or any object with similar attributes.

        Security scanners may report their own finding type; a ``rule``/``rule_id``
        stands in for ``code`` and ``lineno``/``col_offset`` for ``line``/``col``.

        >>> str(Diagnostic.coerce({"rule_id": "S001", "lineno": 4, "message": "no"}, "a.py"))
        'a.py:4:0: S001 no'
        """
        if isinstance(obj, Diagnostic):
            return obj
        get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))

        def first(*names: str, default: Any = None) -> Any:
            for n in names:
                v = get(n)
                if v is not None:
                    return v
            return default

        severity = str(first("severity", "level", default="error")).lower()
        if severity not in SEVERITIES:
            severity = "error"  # unknown severities from a security hook fail closed
        return cls(
            str(first("file", "filename", default=default_file)),
            int(first("line", "lineno", default=0)),
            int(first("col", "column", "col_offset", default=0)),
            severity,
            str(first("code", "rule_id", "rule", default="security")),
            str(first("message", "msg", default=str(obj))),
            first("hint"),
            *(first(k) for k in _SOURCE_FIELDS),
        )


@dataclass(frozen=True)
class CompiledModule:
    """One module compiled and validated: marshalled code plus what identifies it.

    ``code`` is ``marshal.dumps(code_object)`` for this interpreter (``magic``);
    ``source_sha256`` identifies the source, ``code_sha256`` the code bytes;
    ``dependencies`` are the app modules it imports; ``size`` is the source size in
    bytes; ``from_cache`` says it was not recompiled.

    >>> import marshal
    >>> code = marshal.dumps(compile("x = 1", "m.py", "exec"))
    >>> m = CompiledModule.build("m", "m.py", b"x = 1", code)
    >>> ns = {}; exec(m.code_object(), ns); ns["x"]
    1
    """

    name: str
    file: str
    code: bytes = field(repr=False)
    source_sha256: str
    code_sha256: str
    dependencies: tuple[str, ...] = ()
    from_cache: bool = False
    size: int = 0
    is_package: bool = False
    source: bytes = field(default=b"", repr=False)
    magic: bytes = MAGIC

    @classmethod
    def build(
        cls,
        name: str,
        file: str,
        source: bytes,
        code: bytes,
        *,
        dependencies: tuple[str, ...] = (),
        from_cache: bool = False,
        is_package: bool = False,
    ) -> CompiledModule:
        """Make a module record, computing both checksums."""
        return cls(
            name=name,
            file=file,
            code=code,
            source_sha256=hashlib.sha256(source).hexdigest(),
            code_sha256=hashlib.sha256(code).hexdigest(),
            dependencies=tuple(dependencies),
            from_cache=from_cache,
            size=len(source),
            is_package=is_package,
            source=source,
        )

    def code_object(self) -> types.CodeType:
        """Validate and unmarshal the code: magic, checksum, type. Raises CompileError.

        Call this where the code is about to run (the sandbox), so a module damaged
        on its way is refused rather than executed.
        """
        where = f"compiled module {self.name!r} ({self.file})"
        if self.magic != MAGIC:
            raise CompileError(
                f"{where} was compiled for another Python (magic {self.magic.hex()}, "
                f"this is {MAGIC.hex()}): recompile it"
            )
        if hashlib.sha256(self.code).hexdigest() != self.code_sha256:
            raise CompileError(
                f"{where}: code checksum mismatch, the bytes were damaged: recompile it"
            )
        try:
            code = marshal.loads(self.code)
        except (EOFError, ValueError, TypeError) as exc:
            raise CompileError(f"{where}: code does not unmarshal ({exc}): recompile it") from None
        if not isinstance(code, types.CodeType):
            raise CompileError(f"{where}: code unmarshals to {type(code).__name__}, not code")
        return code

    def info(self) -> dict[str, Any]:
        """Everything but the code and source bytes (for logs and listings)."""
        return {
            "name": self.name,
            "file": self.file,
            "source_sha256": self.source_sha256,
            "code_sha256": self.code_sha256,
            "dependencies": list(self.dependencies),
            "from_cache": self.from_cache,
            "size": self.size,
            "is_package": self.is_package,
        }


@dataclass
class CompilationResult:
    """What one compile produced: modules by name, warnings, errors, duration.

    A module with an error-severity diagnostic (syntax error, blocked by the
    security scan, timed out, ...) is in ``failed`` and not in ``modules``.
    ``removed`` lists modules whose files no longer exist (incremental compiles).

    >>> r = CompilationResult(root="/app")
    >>> r.ok, r.cached, r.recompiled
    (True, [], [])
    >>> r.raise_for_errors() is r
    True
    """

    root: str
    modules: dict[str, CompiledModule] = field(default_factory=dict)
    warnings: list[Diagnostic] = field(default_factory=list)
    errors: list[Diagnostic] = field(default_factory=list)
    duration: float = 0.0
    profile: str = "medium"
    failed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no module has an error."""
        return not self.errors

    @property
    def cached(self) -> list[str]:
        """Names of the modules that came from the cache."""
        return sorted(n for n, m in self.modules.items() if m.from_cache)

    @property
    def recompiled(self) -> list[str]:
        """Names of the modules that were compiled by the worker this time."""
        return sorted(n for n, m in self.modules.items() if not m.from_cache)

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """Errors and warnings, ordered by file, line and column (linter order)."""
        return sorted(self.errors + self.warnings, key=lambda d: (d.file, d.line, d.col, d.code))

    def raise_for_errors(self) -> CompilationResult:
        """Raise CompileError listing every error as ``file:line:col: code message``.

        Returns the result itself when there are none, so calls chain.
        """
        if self.errors:
            lines = [d.format() for d in sorted(self.errors, key=lambda d: (d.file, d.line, d.col))]
            n = len(self.errors)
            raise CompileError(
                f"compiling {self.root} failed with {n} error{'s' if n != 1 else ''}:\n"
                + "\n".join(lines),
                self.errors,
            )
        return self

    def summary(self) -> str:
        """One line for logs.

        >>> CompilationResult(root="/app").summary()
        '/app: 0 modules (0 compiled, 0 cached), 0 errors, 0 warnings in 0.0 ms'
        """
        return (
            f"{self.root}: {len(self.modules)} modules ({len(self.recompiled)} compiled, "
            f"{len(self.cached)} cached), {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings in {self.duration * 1000:.1f} ms"
        )


# Hints for the SyntaxError messages people hit most. Keys are message prefixes;
# CPython's own message often already says "Did you mean ...", then we add nothing.
_HINTS: tuple[tuple[str, str], ...] = (
    ("expected ':'", "a block statement (def, class, if, for, while, with, try) ends with ':'"),
    ("expected an indented block", "indent the body of the block (4 spaces), or write 'pass'"),
    ("unindent does not match", "align this line with the enclosing block; check for a mix "
     "of tabs and spaces"),
    ("unexpected indent", "remove the extra indentation, or check the line above for a "
     "missing ':'"),
    ("inconsistent use of tabs and spaces", "indent with spaces only (4 per level)"),
    ("unterminated string literal", "close the string with the same quote it opens with"),
    ("unterminated triple-quoted string", "close the string with the same triple quote"),
    ("was never closed", "add the matching closing bracket"),
    ("unmatched", "remove the extra closing bracket, or add its opening one"),
    ("does not match opening parenthesis", "make the closing bracket match the opening one"),
    ("invalid syntax. Perhaps you forgot a comma", "separate the items with ','"),
    ("cannot assign to", "the left side of '=' must be a name, attribute, subscript or tuple"),
    ("'return' outside function", "'return' is only allowed inside a def"),
    ("'await' outside", "'await' is only allowed inside an async def"),
    ("source code string cannot contain null bytes", "the file contains NUL bytes: is it "
     "really Python source (not binary, not UTF-16)?"),
    ("(unicode error)", "save the file as UTF-8, or declare its encoding in a "
     "'# -*- coding: ... -*-' line"),
    ("invalid character", "replace the character (a smart quote or dash pasted from a "
     "document?) with its ASCII equivalent"),
    ("invalid non-printable character", "delete the invisible character on this line"),
    ("too many nested parentheses", "split the expression into smaller named parts"),
)


def syntax_hint(kind: str, message: str) -> str | None:
    """A hint for a SyntaxError / IndentationError / TabError message, or None.

    >>> syntax_hint("SyntaxError", "expected ':'")
    "a block statement (def, class, if, for, while, with, try) ends with ':'"
    >>> syntax_hint("SyntaxError", "something new") is None
    True
    """
    for prefix, hint in _HINTS:
        if message.startswith(prefix) or prefix in message:
            return hint
    if kind == "IndentationError":
        return "check the indentation of this line and the one before it"
    return None
