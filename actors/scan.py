"""The static security scan: every module of a sandbox, before it loads.

:func:`scan_source` parses the module's raw bytes and reports what its profile
forbids, each finding with a rule id, a severity and ``file:line:col``::

    >>> for f in scan_source(b"import os\\nos.system('ls')\\n", "app.py", "high"):
    ...     print(f)
    app.py:2:1: SBX205 os.system is not allowed under profile 'high' (starting processes)

Errors block the module (the compiler refuses it, :meth:`check_module` raises
:class:`~runtime.errors.SecurityViolation`); warnings are reported.

The source is not decoded around: a coding cookie naming anything but UTF-8, a
non-ASCII identifier (which Python folds with NFKC, so ``ｅｖａｌ`` *is* ``eval``)
and bidirectional control characters (CVE-2021-42574) are findings themselves.

Rules (see :data:`RULES`): SBX0xx source form, SBX1xx imports, SBX2xx calls,
SBX3xx dunder and frame attributes and names.

A static scan is not a proof: Python is dynamic enough that code the scan cannot
follow (names built at run time, data decoded into code, objects reached through
other objects) can still do what a rule is about. That is what the runtime
guard (:mod:`runtime.child.guard`) and, below it, the process isolation are for. Under
``high`` the scan is deliberately strict (computed ``getattr`` names, dunder
names in strings) to leave such code little room.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import tokenize
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from actors import astparse
from actors.profiles import DEV_FILES, GROUP_MODULES, GROUPS, Profile, get_builtin, python_roots

__all__ = [
    "CONTEXT_LINES",
    "Finding",
    "RISKS",
    "RULES",
    "RULE_RISKS",
    "WARN_HINT",
    "render",
    "risk_of",
    "ProfileScanner",
    "scan_source",
    "scan_to_diagnostics",
]

#: Rule ids and what they are about.
RULES: dict[str, str] = {
    "SBX001": "the module does not parse",
    "SBX002": "source encoding other than UTF-8 (or bytes that are not valid in it)",
    "SBX003": "non-ASCII identifier (NFKC folding hides names such as eval)",
    "SBX004": "bidirectional control character (Trojan Source)",
    "SBX101": "import of a blocked module",
    "SBX102": "dynamic import of a blocked module",
    "SBX103": "dynamic import of a computed name (high, medium) or one the scan cannot work out",
    "SBX104": "loading code from a file or a spec, or changing the import system (bypasses the scan)",
    "SBX201": "eval, exec or compile",
    "SBX202": "write outside the workdir (absolute path or '..')",
    "SBX203": "getattr/setattr/delattr with a dunder or frame attribute name",
    "SBX204": "getattr/setattr/delattr with a computed name",
    "SBX205": "use of a forbidden function",
    "SBX206": "read outside the profile's read roots",
    "SBX301": "dunder attribute used in sandbox escapes",
    "SBX302": "frame, generator, traceback or cell internals",
    "SBX303": "__dict__ of a module or class",
    "SBX304": "dunder name in a string",
    "SBX305": "__builtins__, __import__, __loader__ or __spec__ by name",
}

#: How much harm what each rule is about can do, from ``critical`` (escapes the
#: sandbox's protections, runs arbitrary commands) down to ``info`` (the scan could
#: not look at the module). It does not decide blocking: the profile does (a
#: finding's ``severity`` is ``error`` when it blocks, ``warning`` when reported).
#: A rule missing here is ``medium`` (see :func:`risk_of`).
RISKS: tuple[str, ...] = ("critical", "high", "medium", "low", "info")
RULE_RISKS: dict[str, str] = {
    "SBX001": "info",
    "SBX002": "low",
    "SBX003": "high",
    "SBX004": "high",
    "SBX101": "high",
    "SBX102": "high",
    "SBX103": "medium",
    "SBX104": "high",
    "SBX201": "high",
    "SBX202": "high",
    "SBX203": "critical",
    "SBX204": "medium",
    "SBX205": "critical",
    "SBX206": "medium",
    "SBX301": "critical",
    "SBX302": "critical",
    "SBX303": "medium",
    "SBX304": "low",
    "SBX305": "high",
}


def risk_of(rule: str) -> str:
    """The risk of a rule's findings (:data:`RULE_RISKS`; ``medium`` if unlisted).

    >>> risk_of("SBX205"), risk_of("SBX001")
    ('critical', 'info')
    """
    return RULE_RISKS.get(rule, "medium")


#: Lines of source shown before and after a finding's line.
CONTEXT_LINES = 2

#: The hint of a finding reported only because the profile marks its group ``warn``.
WARN_HINT = "reported, not blocked: profile {profile!r} marks {group} as warn"

#: Changes whenever a rule changes (part of the compiler's cache key).
RULES_VERSION = "5"

ESCAPE_DUNDERS = frozenset(
    {
        "__subclasses__",
        "__globals__",
        "__builtins__",
        "__code__",
        "__closure__",
        "__mro__",
        "__bases__",
        "__base__",
        "__reduce__",
        "__reduce_ex__",
        "__loader__",
        "__spec__",
        "__import__",
        "__self__",
        "__traceback__",
        "__defaults__",
        "__kwdefaults__",
        "__objclass__",
    }
)
FRAME_ATTRS = frozenset(
    {
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "cr_await",
        "ag_frame",
        "ag_code",
        "ag_await",
        "f_back",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_code",
        "f_trace",
        "tb_frame",
        "cell_contents",
    }
)
#: Dunder names that carry no escape by themselves: allowed in strings under high.
HARMLESS_DUNDERS = frozenset(
    {
        "__main__",
        "__name__",
        "__qualname__",
        "__doc__",
        "__module__",
        "__init__",
        "__all__",
        "__version__",
        "__author__",
        "__slots__",
        "__file__",
        "__package__",
        "__annotations__",
        "__future__",
        "__new__",
        "__repr__",
        "__str__",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__hash__",
        "__len__",
        "__iter__",
        "__next__",
        "__contains__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__call__",
        "__enter__",
        "__exit__",
        "__aenter__",
        "__aexit__",
        "__add__",
        "__sub__",
        "__mul__",
        "__truediv__",
        "__bool__",
        "__int__",
        "__float__",
        "__format__",
        "__post_init__",
        "__weakref__",
        "__match_args__",
        "__dataclass_fields__",
        "__slotnames__",
        "__wrapped__",
        "__orig_bases__",
        "__path__",
    }
)
_DUNDER_RE = re.compile(r"__[A-Za-z0-9_]+?__")
_FRAME_RE = re.compile(r"\b(" + "|".join(sorted(FRAME_ATTRS)) + r")\b")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")

_DYNAMIC_IMPORT = frozenset(
    {"__import__", "importlib.import_module", "importlib.__import__", "builtins.__import__"}
)
_CODE_LOADERS = {
    "importlib.util.spec_from_file_location": "loads a module from a file",
    "importlib.util.spec_from_loader": "loads a module from a loader",
    "importlib.util.module_from_spec": "creates a module from a spec",
    "importlib.machinery.SourceFileLoader": "loads a module from a file",
    "importlib.machinery.SourcelessFileLoader": "loads bytecode from a file",
    "importlib.machinery.ExtensionFileLoader": "loads native code",
    "imp.load_source": "loads a module from a file",
    "imp.load_compiled": "loads bytecode from a file",
    "imp.load_dynamic": "loads native code",
    "runpy.run_path": "runs a file",
    "runpy.run_module": "runs a module",
    "zipimport.zipimporter": "imports from an archive",
    "types.CodeType": "builds a code object",
    "types.FunctionType": "builds a function from a code object",
    "marshal.loads": "turns bytes into code",
    "sys.meta_path": "changes where modules are found",
    "sys.path_hooks": "changes where modules are found",
    "sys.path_importer_cache": "changes where modules are found",
}
_DYNAMIC_CODE = frozenset(
    {"eval", "exec", "compile", "builtins.eval", "builtins.exec", "builtins.compile"}
)
#: Dotted names and the group that must be allowed to use them (None: never).
_FORBIDDEN: dict[str, tuple[str | None, str]] = {}
for _n in (
    "system",
    "popen",
    "execv",
    "execve",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "execvp",
    "execvpe",
    "spawnl",
    "spawnle",
    "spawnlp",
    "spawnlpe",
    "spawnv",
    "spawnve",
    "spawnvp",
    "spawnvpe",
    "fork",
    "forkpty",
    "posix_spawn",
    "posix_spawnp",
    "startfile",
):
    _FORBIDDEN[f"os.{_n}"] = ("subprocess", "starting processes")
for _n in ("setsid", "setpgid", "setpgrp"):
    _FORBIDDEN[f"os.{_n}"] = ("subprocess", "leaving the sandbox's process group")
for _n in ("create_subprocess_exec", "create_subprocess_shell"):
    _FORBIDDEN[f"asyncio.{_n}"] = ("subprocess", "starting processes")
for _n in (
    "_getframe",
    "_current_frames",
    "_current_exceptions",
    "settrace",
    "setprofile",
    "call_tracing",
):
    _FORBIDDEN[f"sys.{_n}"] = ("introspection", "frame access and tracing")
for _n in ("settrace", "setprofile"):
    _FORBIDDEN[f"threading.{_n}"] = ("introspection", "tracing")
for _n in ("get_objects", "get_referrers", "get_referents"):
    _FORBIDDEN[f"gc.{_n}"] = ("introspection", "walking the object graph")
for _n in ("walk_stack", "walk_tb"):
    _FORBIDDEN[f"traceback.{_n}"] = ("introspection", "frame access")
_FORBIDDEN.update(
    {
        "breakpoint": ("introspection", "debuggers"),
        "sys.addaudithook": (None, "adding audit hooks"),
        "signal.pidfd_send_signal": ("signal_any", "signals the runtime guard cannot see"),
        "os.pidfd_open": ("signal_any", "signals the runtime guard cannot see"),
        "os.mknod": ("file_write_any", "creating device files"),
        "asyncio.open_connection": ("network_client", "network connections"),
        "asyncio.open_unix_connection": ("network_client", "network connections"),
        "asyncio.start_server": ("network_server", "listening sockets"),
        "asyncio.start_unix_server": ("network_server", "listening sockets"),
    }
)
#: Method names that mean the same on any receiver (event loops).
_FORBIDDEN_METHODS: dict[str, tuple[str, str]] = {
    "subprocess_exec": ("subprocess", "starting processes"),
    "subprocess_shell": ("subprocess", "starting processes"),
    "create_connection": ("network_client", "network connections"),
    "sock_connect": ("network_client", "network connections"),
    "create_datagram_endpoint": ("network_client", "network sockets"),
    "create_server": ("network_server", "listening sockets"),
    "create_unix_server": ("network_server", "listening sockets"),
}
_KILL = frozenset({"os.kill", "os.killpg"})
_ATTR_FUNCS = frozenset(
    {
        "getattr",
        "setattr",
        "delattr",
        "hasattr",
        "builtins.getattr",
        "builtins.setattr",
        "builtins.delattr",
        "operator.attrgetter",
    }
)
_OPENERS = frozenset({"open", "io.open", "builtins.open", "codecs.open", "os.open", "os.fdopen"})
_PATH_WRITERS = frozenset(
    {
        "write_text",
        "write_bytes",
        "touch",
        "mkdir",
        "unlink",
        "rmdir",
        "rename",
        "replace",
        "symlink_to",
        "hardlink_to",
        "chmod",
        "link_to",
    }
)
_FS_WRITERS = {  # dotted name -> indexes of the path arguments written
    "os.remove": (0,),
    "os.unlink": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.makedirs": (0,),
    "os.rename": (0, 1),
    "os.replace": (0, 1),
    "os.renames": (0, 1),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.mkfifo": (0,),
    "os.removedirs": (0,),
    "shutil.rmtree": (0,),
    "shutil.copy": (1,),
    "shutil.copy2": (1,),
    "shutil.copyfile": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
    "shutil.chown": (0,),
}
_WRITE_FLAGS = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"})
_STR_METHODS = frozenset(
    {"lower", "upper", "strip", "lstrip", "rstrip", "title", "capitalize", "casefold", "swapcase"}
)


@dataclass(frozen=True)
class Finding:
    """One finding of the scan.

    ``severity``: ``error`` (blocks the module) or ``warning`` (reported);
    ``risk``: the rule's risk (:data:`RULE_RISKS`); ``source_line``: the line
    found; ``context``: it and up to :data:`CONTEXT_LINES` lines either side, each
    ``"  12 | text"``; ``matched``: the text the rule matched.

    >>> f = Finding("SBX101", "error", "app.py", 1, 1, "import of 'socket' is not allowed")
    >>> str(f), f.is_error, f.risk
    ("app.py:1:1: SBX101 import of 'socket' is not allowed", True, 'high')
    """

    rule: str
    severity: str  # "error" | "warning"
    file: str
    line: int
    col: int
    message: str
    hint: str | None = None
    risk: str = ""
    source_line: str = ""
    context: str = ""
    matched: str = ""

    def __post_init__(self) -> None:
        if not self.risk:
            object.__setattr__(self, "risk", risk_of(self.rule))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.rule} {self.message}"

    def format(self) -> str:
        """Like a linter: the finding with its risk, the code around it with the
        matched text underlined, and the hint (see :func:`render`)."""
        return render(self)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``rule`` doubles as the compiler's diagnostic ``code``."""
        return {
            "rule": self.rule,
            "code": self.rule,
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "message": self.message,
            "hint": self.hint,
            "risk": self.risk,
            "source_line": self.source_line,
            "context": self.context,
            "matched": self.matched,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(
            str(d.get("rule") or d.get("code")),
            str(d["severity"]),
            str(d["file"]),
            int(d["line"]),
            int(d["col"]),
            str(d["message"]),
            d.get("hint"),
            str(d.get("risk") or ""),
            str(d.get("source_line") or ""),
            str(d.get("context") or ""),
            str(d.get("matched") or ""),
        )


def _with_source(f: Finding, lines: list[str]) -> Finding:
    """``f`` with its source line, the lines around it, and (if the rule did not say)
    the word at its column as the matched text."""
    if not 1 <= f.line <= len(lines):
        return f
    source_line = lines[f.line - 1]
    real = len(lines) - 1 if lines and lines[-1] == "" else len(lines)  # final newline
    first = max(1, f.line - CONTEXT_LINES)
    last = max(f.line, min(real, f.line + CONTEXT_LINES))
    context = "\n".join(f"{n:>4} | {lines[n - 1]}" for n in range(first, last + 1))
    matched = f.matched
    if not matched:
        word = re.match(r"\S+", source_line[max(f.col - 1, 0):])
        matched = word.group(0) if word else ""
    return replace(f, source_line=source_line, context=context, matched=matched[:120])


def render(finding: Any) -> str:
    """A finding (or a compiler Diagnostic) the way a linter prints it.

    >>> [f] = scan_source(b"import os\\nos.system('ls')\\n", "app.py", "high")
    >>> print(render(f))
    app.py:2:1: SBX205 [critical] os.system is not allowed under profile 'high' (starting processes)
        1 | import os
    >   2 | os.system('ls')
          | ^^^^^^^^^
    """
    code = getattr(finding, "rule", None) or getattr(finding, "code", "")
    risk = getattr(finding, "risk", None)
    tag = f" [{risk}]" if risk else ""
    out = [f"{finding.file}:{finding.line}:{finding.col}: {code}{tag} {finding.message}"]
    matched = getattr(finding, "matched", None) or ""
    for row in (getattr(finding, "context", None) or "").split("\n"):
        if not row:
            continue
        number, _, text = row.partition(" | ")
        here = number.strip() == str(finding.line)
        out.append(f"{'>' if here else ' '}{row}")
        if here and matched:
            start = text.find(matched, max(finding.col - 1, 0))
            if start < 0:
                start = text.find(matched)
            if start >= 0:
                out.append(" " * (len(number) + 1) + " | " + " " * start + "^" * len(matched))
    if finding.hint:
        out.append(f"    hint: {finding.hint}")
    return "\n".join(out)


def _profile(profile: Profile | str) -> Profile:
    return profile if isinstance(profile, Profile) else get_builtin(profile)


def scan_source(
    source: bytes,
    filename: str,
    profile: Profile | str,
    *,
    local_modules: Collection[str] = (),
    tree: ast.Module | None = None,
) -> list[Finding]:
    """Scan one module's raw bytes under ``profile``; returns findings sorted by position.

    ``profile`` is a :class:`~actors.profiles.Profile` or a built-in's name. A
    ``str`` source is taken as UTF-8 bytes. ``local_modules`` names the app's own
    top-level modules: they shadow stdlib names (an app's ``code.py``), so
    importing them is never a blocked import. ``tree`` is ``source`` already
    parsed (the compile worker's, the tree it compiles): the scan then checks
    that tree instead of parsing the module a second time; every check still runs.

    >>> [f.rule for f in scan_source(b"x = eval('1')", "m.py", "high")]
    ['SBX201']
    >>> scan_source(b"x = eval('1')", "m.py", "low")[0].severity
    'warning'
    >>> [f.rule for f in scan_source(b"# -*- coding: latin-1 -*-\\nx = 1\\n", "m.py", "medium")]
    ['SBX002']
    """
    p = _profile(profile)
    if isinstance(source, str):
        source = source.encode("utf-8")
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise TypeError(f"scan_source needs the module's bytes, not {type(source).__name__}")
    source = bytes(source)
    findings: list[Finding] = []
    hardened = not (p.allows("dynamic_code") or p.warns("dynamic_code"))

    def add(
        rule: str,
        line: int,
        col: int,
        message: str,
        severity: str = "error",
        hint: str | None = None,
        matched: str = "",
    ) -> None:
        findings.append(Finding(rule, severity, filename, line, col, message, hint,
                                matched=matched))

    # -- encoding: never decoded around ---------------------------------------------
    try:
        encoding, _lines = tokenize.detect_encoding(io.BytesIO(source).readline)
    except SyntaxError as exc:
        add("SBX002", exc.lineno or 1, 1, f"bad source encoding declaration: {exc.msg}")
        return findings
    if encoding not in ("utf-8", "utf-8-sig"):
        line = _cookie_line(source)
        add(
            "SBX002",
            line,
            1,
            f"the module declares the {encoding} encoding; sandbox code must be UTF-8",
            "error" if hardened else "warning",
            "save the file as UTF-8 and remove the coding declaration",
        )
    try:
        text = source.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        start = getattr(exc, "start", 0)
        line = source.count(b"\n", 0, start) + 1
        add("SBX002", line, 1, f"the module is not valid {encoding}: {exc}")
        return findings
    # -- parse ---------------------------------------------------------------------------
    try:
        if tree is None:
            tree = astparse.parse(source, filename)
    except SyntaxError as exc:
        add("SBX001", exc.lineno or 1, max(exc.offset or 1, 1), f"syntax error: {exc.msg}")
        return findings
    except (ValueError, RecursionError, MemoryError) as exc:
        add("SBX001", 1, 1, f"the module cannot be parsed: {exc}")
        return findings
    lines = re.split(r"\r\n|\r|\n", text)
    # -- tokens: identifiers and control characters ---------------------------------------
    # Both checks look for non-ASCII characters: an ASCII module has none to find, and
    # tokenizing (pure Python) is the dearest part of scanning a small module.
    try:
        for tok in () if source.isascii() else tokenize.tokenize(io.BytesIO(source).readline):
            if tok.type == tokenize.NAME and not tok.string.isascii():
                add(
                    "SBX003",
                    tok.start[0],
                    tok.start[1] + 1,
                    f"non-ASCII identifier {tok.string!r} (Python reads it as "
                    f"{_nfkc(tok.string)!r})",
                    "error" if hardened else "warning",
                    "use ASCII names",
                    tok.string,
                )
            elif tok.type in (tokenize.STRING, tokenize.COMMENT) and _BIDI.search(tok.string):
                add(
                    "SBX004",
                    tok.start[0],
                    tok.start[1] + 1,
                    "bidirectional control character: the code may not read the way it runs",
                    "error" if hardened else "warning",
                    "remove the control character",
                )
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # ast.parse accepted it; the token checks are best effort
    _Visitor(p, filename, lines, add, frozenset(local_modules), text).run(tree)
    unique = {(f.rule, f.line, f.col, f.message): f for f in findings}
    ordered = sorted(unique.values(), key=lambda f: (f.line, f.col, f.rule))
    return [_with_source(f, lines) for f in ordered]


def _cookie_line(source: bytes) -> int:
    for i, line in enumerate(source.splitlines()[:2], 1):
        if re.match(rb"^[ \t\f]*#.*?coding[:=]", line):
            return i
    return 1


def _nfkc(name: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKC", name)


def _outside(path: str) -> bool:
    """Whether a literal path leaves the workdir: absolute, home-relative or with '..'."""
    return path.startswith(("/", "~")) or ".." in re.split(r"[\\/]", path)


def _walk(node: ast.AST) -> list[ast.AST]:
    """``list(ast.walk(node))``, in the same order (breadth first, each node's fields
    in order), without ``ast.walk``'s three generators per node: the scan's first
    pass looks at every node of every module compiled, hot reloads included."""
    out = [node]
    for n in out:  # grows while it is read: each node's children go to the end
        for name in n._fields:
            value = getattr(n, name, None)
            if isinstance(value, ast.AST):
                out.append(value)
            elif isinstance(value, list):
                for v in value:
                    if isinstance(v, ast.AST):
                        out.append(v)
    return out


#: The node classes the scan's first pass records something of (a parsed tree's
#: nodes are of these exact classes): the rest are skipped with one lookup.
_FIRST_PASS = frozenset({
    ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
    ast.Name, ast.arg, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With,
    ast.NamedExpr,
})


class _Visitor(ast.NodeVisitor):
    def visit(self, node: ast.AST) -> Any:
        """``NodeVisitor.visit``, with the method looked up once per node class."""
        kind = type(node)
        method = self._methods.get(kind)
        if method is None:
            method = self._methods[kind] = getattr(
                self, "visit_" + kind.__name__, self.generic_visit)
        return method(node)

    def generic_visit(self, node: ast.AST) -> None:
        """``NodeVisitor.generic_visit`` (each child, fields in order) without its
        ``iter_fields`` generator."""
        visit = self.visit
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        visit(item)
            elif isinstance(value, ast.AST):
                visit(value)

    def __init__(
        self,
        profile: Profile,
        filename: str,
        lines: list[str],
        add: Any,
        local_modules: frozenset[str] = frozenset(),
        text: str = "",
    ) -> None:
        self.p = profile
        self.text = text
        #: The warned group the last :meth:`severity` answered "warning" for; the
        #: :meth:`add` right after it (the same branch) says so in the hint.
        self.warned: str | None = None
        self.local_modules = local_modules
        self.filename = filename
        self.lines = lines
        self._add = add
        self.hardened = not (profile.allows("dynamic_code") or profile.warns("dynamic_code"))
        self.strict = profile.ban_dunder_strings
        self.aliases: dict[str, str] = {}
        self.consts: dict[str, str | None] = {}
        self.bound: set[str] = set()
        self.classes: set[str] = set()
        self.skip: set[int] = set()  # nodes already reported / docstrings
        self.read_roots = self._static_read_roots()
        self._methods: dict[type, Any] = {}  # node class -> bound visit method

    # -- helpers ---------------------------------------------------------------------
    def _static_read_roots(self) -> tuple[str, ...]:
        roots: list[str] = list(DEV_FILES)
        for token in self.p.read_roots:
            if token == "python":
                roots += python_roots()
            elif token.startswith("/"):
                roots.append(token)
        if "zoneinfo" in self.p.read_roots or self.p.allows("time"):
            roots += ["/usr/share/zoneinfo", "/etc/localtime"]
        return tuple(roots)

    def col(self, node: ast.AST) -> int:
        line, off = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        try:
            return len(self.lines[line - 1].encode("utf-8")[:off].decode("utf-8", "replace")) + 1
        except IndexError:
            return off + 1

    def add(
        self,
        rule: str,
        node: ast.AST,
        message: str,
        severity: str = "error",
        hint: str | None = None,
    ) -> None:
        warned, self.warned = self.warned, None
        if warned is not None and severity == "warning":
            hint = WARN_HINT.format(profile=self.p.name, group=warned)
        matched = ""
        if self.text and hasattr(node, "end_col_offset"):
            segment = ast.get_source_segment(self.text, node) or ""
            matched = segment.split("\n", 1)[0]
        self._add(rule, getattr(node, "lineno", 1), self.col(node), message, severity, hint,
                  matched)

    def severity(self, group: str | None, allowed: str | None = "warning") -> str | None:
        """Error when ``group`` is denied (or None: never allowed); warning when the
        profile marks it ``warn``; else ``allowed``."""
        if group is not None and self.p.warns(group):
            self.warned = group
            return "warning"
        if group is None or not self.p.allows(group):
            return "error"
        return allowed

    def why(self, module: str) -> str:
        parts = module.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            for group, mods in GROUP_MODULES.items():
                if prefix in mods and not self.p.allows(group):
                    return f"the profile does not allow {group}"
        return "the profile blocks it"

    # -- a first pass: aliases, constants, bound names --------------------------------
    def run(self, tree: ast.AST) -> None:
        assigned: dict[str, list[ast.AST]] = {}
        for node in _walk(tree):
            if type(node) not in _FIRST_PASS:  # most nodes: one set lookup, not 13 checks
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    local = a.asname or a.name.split(".")[0]
                    self.aliases[local] = a.name if a.asname else a.name.split(".")[0]
                    self.bound.add(local)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                for a in node.names:
                    if a.name != "*":
                        self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                        self.bound.add(a.asname or a.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.bound.add(node.name)
            elif isinstance(node, ast.ClassDef):
                self.bound.add(node.name)
                self.classes.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.bound.add(node.id)
            elif isinstance(node, ast.arg):
                self.bound.add(node.arg)
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                assigned.setdefault(node.targets[0].id, []).append(node.value)
            elif (
                isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value
            ):
                assigned.setdefault(node.target.id, []).append(node.value)
            elif isinstance(node, (ast.AugAssign, ast.For, ast.With, ast.NamedExpr)):
                for t in ast.walk(node.target if not isinstance(node, ast.With) else node):
                    if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store):
                        assigned.setdefault(t.id, []).append(node)  # not a constant
        # Names assigned once to a string the scan can work out are constants; two
        # passes let constants build on constants.
        for _ in range(2):
            for name, values in assigned.items():
                if len(values) == 1:
                    self.consts[name] = self.const_str(values[0])
                else:
                    self.consts[name] = None
        self.visit(tree)

    def const_str(self, node: ast.AST | None, depth: int = 0) -> str | None:
        """The value of a string expression built from literals, or None."""
        if node is None or depth > 20:
            return None
        try:
            return self._const_str(node, depth)
        except (
            TypeError,
            ValueError,
            IndexError,
            KeyError,
            OverflowError,
            RecursionError,
            UnicodeError,
            AttributeError,
        ):
            return None

    def _const_str(self, node: ast.AST, depth: int) -> str | None:
        cs = lambda n: self.const_str(n, depth + 1)  # noqa: E731
        if isinstance(node, ast.Constant):
            return node.value if isinstance(node.value, str) else None
        if isinstance(node, ast.Name):
            return self.consts.get(node.id)
        if isinstance(node, ast.BinOp):
            left = cs(node.left)
            if isinstance(node.op, ast.Add):
                right = cs(node.right)
                return left + right if left is not None and right is not None else None
            if isinstance(node.op, ast.Mod) and left is not None:
                if isinstance(node.right, ast.Tuple):
                    vals = [self._literal(e, depth) for e in node.right.elts]
                    return left % tuple(vals) if None not in vals else None
                v = self._literal(node.right, depth)
                return left % v if v is not None else None
            if (
                isinstance(node.op, ast.Mult)
                and left is not None
                and isinstance(node.right, ast.Constant)
                and isinstance(node.right.value, int)
                and node.right.value < 64
            ):
                return left * node.right.value
            return None
        if isinstance(node, ast.JoinedStr):
            out = []
            for v in node.values:
                if isinstance(v, ast.Constant):
                    out.append(str(v.value))
                elif isinstance(v, ast.FormattedValue) and v.format_spec is None:
                    s = self._literal(v.value, depth)
                    if s is None:
                        return None
                    out.append(str(s))
                else:
                    return None
            return "".join(out)
        if isinstance(node, ast.Subscript):
            base = cs(node.value)
            if base is None:
                return None
            sl = node.slice
            if isinstance(sl, ast.Slice):
                parts = [
                    None if x is None else self._literal(x, depth)
                    for x in (sl.lower, sl.upper, sl.step)
                ]
                return base[slice(*parts)]
            idx = self._literal(sl, depth)
            return base[idx] if isinstance(idx, int) else None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id not in self.bound:
                if func.id == "chr" and len(node.args) == 1:
                    v = self._literal(node.args[0], depth)
                    return chr(v) if isinstance(v, int) else None
                if func.id == "str" and len(node.args) == 1:
                    return cs(node.args[0])
                if func.id in ("reversed", "list", "tuple", "sorted") and len(node.args) == 1:
                    return None  # only meaningful inside join, handled there
                if (
                    func.id == "bytes"
                    and len(node.args) == 1
                    and isinstance(node.args[0], (ast.List, ast.Tuple))
                ):
                    return None
            if isinstance(func, ast.Attribute):
                recv = func.value
                if func.attr == "join" and len(node.args) == 1:
                    sep = cs(recv)
                    items = self._str_items(node.args[0], depth)
                    return sep.join(items) if sep is not None and items is not None else None
                if func.attr == "decode":
                    raw = self._bytes(recv, depth)
                    if raw is not None:
                        enc = cs(node.args[0]) if node.args else "utf-8"
                        return raw.decode(enc or "utf-8")
                    return None
                base = cs(recv)
                if base is None:
                    return None
                if func.attr in _STR_METHODS and not node.args:
                    return getattr(base, func.attr)()
                if func.attr == "replace" and len(node.args) == 2:
                    a, b = cs(node.args[0]), cs(node.args[1])
                    return base.replace(a, b) if a is not None and b is not None else None
                if func.attr == "format":
                    vals = [self._literal(a, depth) for a in node.args]
                    return base.format(*vals) if None not in vals and not node.keywords else None
        return None

    def _literal(self, node: ast.AST, depth: int) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and isinstance(node.operand.value, (int, float))
        ):
            return -node.operand.value
        return self.const_str(node, depth + 1)

    def _str_items(self, node: ast.AST, depth: int) -> list[str] | None:
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self.const_str(e, depth + 1) for e in node.elts]
            return None if None in items else items  # type: ignore[return-value]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and len(node.args) == 1
            and node.func.id in ("reversed", "list", "tuple", "sorted")
        ):
            inner = self._str_items(node.args[0], depth + 1)
            if inner is None:
                return None
            return (
                list(reversed(inner))
                if node.func.id == "reversed"
                else (sorted(inner) if node.func.id == "sorted" else inner)
            )
        if isinstance(node, ast.GeneratorExp | ast.ListComp) and len(node.generators) == 1:
            gen = node.generators[0]
            if (
                isinstance(gen.target, ast.Name)
                and isinstance(node.elt, ast.Name)
                and node.elt.id == gen.target.id
                and not gen.ifs
            ):
                return self._str_items(gen.iter, depth + 1)
            return None
        s = self.const_str(node, depth + 1)
        return list(s) if s is not None else None

    def _bytes(self, node: ast.AST, depth: int) -> bytes | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            return node.value
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("bytes", "bytearray")
            and len(node.args) == 1
            and isinstance(node.args[0], (ast.List, ast.Tuple))
        ):
            vals = [self._literal(e, depth) for e in node.args[0].elts]
            return bytes(vals) if all(isinstance(v, int) for v in vals) else None
        return None

    def dotted(self, node: ast.AST) -> str | None:
        """``os.path.join`` for an attribute chain, with import aliases expanded."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            base = self.aliases.get(node.id, node.id)
        elif isinstance(node, ast.Call) and self.dotted(node.func) in _DYNAMIC_IMPORT and node.args:
            imported = self.const_str(node.args[0])
            if imported is None:
                return None
            base = imported
        else:
            return None
        return ".".join([base, *reversed(parts)])

    def builtin(self, node: ast.AST, names: frozenset[str] | set[str]) -> str | None:
        """The builtin (or aliased) name a call refers to, if it is one of ``names``."""
        d = self.dotted(node)
        if d is None or d not in names:
            return None
        if isinstance(node, ast.Name) and node.id in self.bound and node.id not in self.aliases:
            return None  # shadowed by the module's own definition
        return d

    # -- imports -----------------------------------------------------------------------
    def check_module(self, name: str, node: ast.AST, rule: str, how: str) -> bool:
        if name.split(".")[0] in self.local_modules:
            return False
        if self.p.is_blocked(name):
            self.add(
                rule,
                node,
                f"{how} {name!r} is not allowed under profile {self.p.name!r} ({self.why(name)})",
            )
            return True
        group = self.p.warned_group(name)
        if group is not None:
            self.warned = group
            self.add(rule, node, f"{how} {name!r} ({GROUPS[group]})", "warning")
            return True
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.check_module(a.name, node, "SBX101", "import of")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # relative: the app's own modules
        if self.check_module(node.module, node, "SBX101", "import of"):
            return
        for a in node.names:
            full = f"{node.module}.{a.name}"
            if not self.check_module(full, node, "SBX101", "import of"):
                self.check_name(full, node)

    # -- names, attributes -----------------------------------------------------------------
    def check_name(self, dotted: str, node: ast.AST) -> None:
        entry = _FORBIDDEN.get(dotted)
        if entry is not None:
            group, what = entry
            sev = self.severity(group, None)
            if sev:
                self.add(
                    "SBX205",
                    node,
                    f"{dotted} is not allowed under profile {self.p.name!r} ({what})",
                    sev,
                )
        elif dotted in _KILL and not self.p.allows("signal_any"):
            self.add(
                "SBX205",
                node,
                f"{dotted}: signals outside the sandbox's process group are refused at run time",
                "warning",
            )
        elif dotted in _CODE_LOADERS:
            sev = self.severity("dynamic_code")
            if sev:
                self.add(
                    "SBX104",
                    node,
                    f"{dotted} {_CODE_LOADERS[dotted]}, which the scan cannot see",
                    sev,
                )

    def visit_Name(self, node: ast.Name) -> None:
        if id(node) in self.skip:
            return
        name = node.id
        if (
            name in ("__builtins__", "__import__", "__loader__", "__spec__")
            and name not in self.bound
        ):
            sev = self.severity("dynamic_code", "warning" if name == "__builtins__" else None)
            if name in ("__loader__", "__spec__") and sev == "error" and not self.strict:
                sev = "warning"
            if sev:
                self.add(
                    "SBX305", node, f"{name} gives access to the import system and builtins", sev
                )
        elif name in ("eval", "exec", "compile") and name not in self.bound:
            sev = self.severity("dynamic_code")
            if sev:
                self.add("SBX201", node, f"{name} runs code the scan cannot see", sev)
        elif name in self.aliases and isinstance(node.ctx, ast.Load):
            self.check_name(self.aliases[name], node)
        elif name == "breakpoint" and name not in self.bound:
            self.check_name("breakpoint", node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr in ESCAPE_DUNDERS:
            sev = "error" if self.hardened else "warning"
            self.add(
                "SBX301",
                node,
                f"attribute {attr} is a classic sandbox escape step",
                sev,
                "sandbox code has no need for interpreter internals",
            )
        elif attr == "__dict__":
            self.check_dict(node)
        elif attr in ("__getattribute__", "__setattr__", "__delattr__"):
            recv = node.value
            if isinstance(recv, ast.Name) and recv.id in ("object", "type"):
                self.add(
                    "SBX301",
                    node,
                    f"{recv.id}.{attr} bypasses attribute checks",
                    "error" if self.hardened else "warning",
                )
            elif self.strict:
                self.add("SBX301", node, f"{attr} bypasses attribute checks", "warning")
        elif attr == "__class__" and self.strict:
            self.add("SBX301", node, "__class__ is the first step of most escapes", "warning")
        elif attr in FRAME_ATTRS:
            self.add(
                "SBX302",
                node,
                f"attribute {attr} reaches frames, globals or cells",
                "error" if self.hardened else "warning",
            )
        elif attr in _FORBIDDEN_METHODS:
            group, what = _FORBIDDEN_METHODS[attr]
            method_sev = self.severity(group, None)
            if method_sev:
                self.add(
                    "SBX205",
                    node,
                    f".{attr}() is not allowed under profile {self.p.name!r} ({what})",
                    method_sev,
                )
        d = self.dotted(node)
        if d is not None:
            self.check_name(d, node)
            # An attribute of a blocked module reached through an allowed parent
            # (``import urllib; urllib.request``).
            if "." in d and isinstance(node.ctx, ast.Load) and d.split(".")[0] in self.aliases:
                if self.p.is_blocked(d) and not self.p.is_blocked(d.rsplit(".", 1)[0]):
                    self.add(
                        "SBX101",
                        node,
                        f"use of {d!r} is not allowed under profile "
                        f"{self.p.name!r} ({self.why(d)})",
                    )
        self.generic_visit(node)

    def check_dict(self, node: ast.Attribute) -> None:
        recv = node.value
        target = None
        if isinstance(recv, ast.Name) and (recv.id in self.aliases or recv.id in self.classes):
            target = "module" if recv.id in self.aliases else "class"
        elif (
            isinstance(recv, ast.Call)
            and isinstance(recv.func, ast.Name)
            and recv.func.id == "type"
        ):
            target = "class"
        elif isinstance(recv, ast.Attribute) and recv.attr == "__class__":
            target = "class"
        elif isinstance(recv, ast.Name) and recv.id[:1].isupper():
            target = "class"
        if target:
            self.add(
                "SBX303",
                node,
                f"__dict__ of a {target} exposes its globals or methods unchecked",
                "error" if self.hardened else "warning",
            )
        elif self.strict:
            self.add("SBX303", node, "__dict__ access", "warning")

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self.dotted(node.value) == "sys.modules":
            name = self.const_str(node.slice)
            if name is not None:
                self.check_module(name, node, "SBX102", "sys.modules lookup of")
            elif self.strict:
                self.add("SBX103", node, "sys.modules lookup of a computed name", "error")
        self.generic_visit(node)

    # -- strings -------------------------------------------------------------------------
    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring or bare string: no effect at run time
        self.generic_visit(node)

    def bad_dunders(self, s: str) -> list[str]:
        found = set(_DUNDER_RE.findall(s))
        if self.strict:
            bad = sorted(d for d in found if d not in HARMLESS_DUNDERS)
            bad += sorted(set(_FRAME_RE.findall(s)))
        else:
            bad = sorted(d for d in found if d in ESCAPE_DUNDERS)
        return bad

    def visit_Constant(self, node: ast.Constant) -> None:
        if id(node) in self.skip:
            return
        value = node.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str) or "_" not in value:
            return
        bad = self.bad_dunders(value)
        if bad:
            sev = "error" if self.strict else "warning"
            self.add(
                "SBX304",
                node,
                f"string names {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}",
                sev,
                "dunder and frame names in strings are how getattr-based escapes are spelled",
            )

    def check_built(self, node: ast.AST) -> None:
        """A string built from pieces (``'__glo' + 'bals__'``) that names a dunder."""
        if id(node) in self.skip:
            return
        s = self.const_str(node)
        if s is None or "_" not in s:
            return
        bad = self.bad_dunders(s)
        if not bad:
            return
        pieces = [
            n.value for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        if any(set(self.bad_dunders(n)) >= set(bad) for n in pieces):
            return  # a literal piece already says it
        self.add(
            "SBX304",
            node,
            f"built string names {', '.join(bad[:3])}",
            "error" if (self.strict or self.hardened) else "warning",
        )

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self.check_built(node)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self.check_built(node)
        self.generic_visit(node)

    # -- calls ---------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = self.dotted(func)
        if isinstance(func, ast.Attribute) and func.attr in ("join", "format", "replace", "decode"):
            self.check_built(node)
        if name is not None:
            self.check_call(node, name)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
            self.check_path_method(node, func)
        self.generic_visit(node)

    def arg(self, node: ast.Call, index: int, *keywords: str) -> ast.AST | None:
        if len(node.args) > index and not any(
            isinstance(a, ast.Starred) for a in node.args[: index + 1]
        ):
            return node.args[index]
        for kw in node.keywords:
            if kw.arg in keywords:
                return kw.value
        return None

    def check_call(self, node: ast.Call, name: str) -> None:
        if self.builtin(node.func, _DYNAMIC_IMPORT) or name.endswith(".import_module"):
            target = self.arg(node, 0, "name")
            mod = self.const_str(target)
            if isinstance(node.func, ast.Name):
                self.skip.add(id(node.func))
            literal = isinstance(target, ast.Constant) and isinstance(target.value, str)
            if mod is None or (self.hardened and not literal):
                # Under high and medium a name that is computed at all is refused,
                # even one the scan can fold: ``__import__("o" + "s")`` hides intent.
                sev = "error" if self.strict or self.hardened else None
                if sev:
                    what = "a name the scan cannot work out" if mod is None else (
                        f"a computed name ({mod!r})"
                    )
                    self.add(
                        "SBX103",
                        node,
                        f"{name}() of {what}",
                        sev,
                        "import modules with import statements",
                    )
            if mod is not None and not mod.startswith("."):
                self.check_module(mod, node, "SBX102", f"{name}() of")
            return
        if self.builtin(node.func, _DYNAMIC_CODE):
            sev = self.severity("dynamic_code")
            if isinstance(node.func, ast.Name):
                self.skip.add(id(node.func))
            if sev:
                self.add(
                    "SBX201", node, f"{name.split('.')[-1]}() runs code the scan cannot see", sev
                )
            return
        if self.builtin(node.func, _ATTR_FUNCS):
            self.check_attr_call(node, name)
            return
        if self.builtin(node.func, _OPENERS):
            self.check_open(node, name)
            return
        if name in _FS_WRITERS:
            for i in _FS_WRITERS[name]:
                self.check_path_write(node, self.arg(node, i, "src", "dst", "path", "name"), name)
            return

    def check_path_method(self, node: ast.Call, func: ast.Attribute) -> None:
        """``Path('/etc/x').write_text(...)`` and friends."""
        ctor = self.dotted(func.value.func)  # type: ignore[attr-defined]
        args = func.value.args  # type: ignore[attr-defined]
        if ctor in ("Path", "pathlib.Path", "pathlib.PosixPath", "PosixPath") and args:
            if func.attr in _PATH_WRITERS or (
                func.attr == "open" and self._write_mode(self.arg(node, 0, "mode"))
            ):
                self.check_path_write(node, args[0], f"Path.{func.attr}")

    def check_attr_call(self, node: ast.Call, name: str) -> None:
        if name == "operator.attrgetter":
            target = self.arg(node, 0)
        else:
            target = self.arg(node, 1, "name")
        if target is None:
            return
        attr = self.const_str(target)
        short = name.split(".")[-1]
        if attr is None:
            sev = "error" if self.strict else ("warning" if self.hardened else None)
            if sev:
                self.add(
                    "SBX204",
                    node,
                    f"{short}() with a computed attribute name",
                    sev,
                    "name the attribute directly",
                )
            return
        last = attr.split(".")[-1]
        if (
            (attr.startswith("__") and attr.endswith("__") and attr not in HARMLESS_DUNDERS)
            or last in FRAME_ATTRS
            or last in ESCAPE_DUNDERS
        ):
            self.add(
                "SBX203", node, f"{short}() of {attr!r}", "error" if self.hardened else "warning"
            )
            for c in ast.walk(target):
                self.skip.add(id(c))
            return
        obj = self.arg(node, 0)
        base = self.dotted(obj) if obj is not None else None
        if base is not None:
            self.check_name(f"{base}.{attr}", node)

    @staticmethod
    def _write_mode_str(mode: str) -> bool:
        return any(c in mode for c in "wax+")

    def _write_mode(self, mode_node: ast.AST | None) -> bool | None:
        if mode_node is None:
            return False
        mode = self.const_str(mode_node)
        return None if mode is None else self._write_mode_str(mode)

    def check_open(self, node: ast.Call, name: str) -> None:
        path_node = self.arg(node, 0, "file", "path")
        if name == "os.open":
            flags = self.arg(node, 1, "flags")
            write: bool | None = (
                any(
                    (isinstance(n, ast.Attribute) and n.attr in _WRITE_FLAGS)
                    or (isinstance(n, ast.Name) and n.id in _WRITE_FLAGS)
                    for n in ast.walk(flags)
                )
                if flags is not None
                else False
            )
        elif name == "os.fdopen":
            return
        else:
            write = self._write_mode(self.arg(node, 1, "mode"))
        path = self.const_str(path_node) if path_node is not None else None
        if path is None:
            return
        if write or write is None:
            if (
                _outside(path)
                and path not in ("/dev/null",)
                and not self.p.allows("file_write_any")
            ):
                sev = "error" if write else "warning"
                self.add(
                    "SBX202",
                    node,
                    f"{name}({path!r}) writes outside the workdir",
                    sev,
                    "write to a relative path inside the sandbox's workdir",
                )
            return
        if _outside(path) and not self.p.allows("file_read_any") and "*" not in self.p.read_roots:
            real = os.path.normpath(path)
            if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in self.read_roots):
                self.add(
                    "SBX206",
                    node,
                    f"{name}({path!r}) reads outside the profile's read roots; "
                    "the runtime guard will refuse it",
                    "warning",
                )

    def check_path_write(self, node: ast.Call, path_node: ast.AST | None, name: str) -> None:
        if path_node is None or self.p.allows("file_write_any"):
            return
        path = self.const_str(path_node)
        if path is not None and _outside(path):
            self.add(
                "SBX202",
                node,
                f"{name}({path!r}) writes outside the workdir",
                "error",
                "write to a relative path inside the sandbox's workdir",
            )


# -- the compiler's hook ------------------------------------------------------------------


class ProfileScanner:
    """The compiler's security hook: ``scanner(source, filename, profile_name) -> list``.

    Knows the built-in profiles and the custom ones it is given (the compile
    worker is another process: it cannot ask the security controller). Returns
    :class:`actors.compilation.Diagnostic` objects, ``code`` being the rule id.
    Picklable; ``cache_token`` changes with the rules and the profiles.
    ``accepts_tree``: the compile worker passes its parsed module as ``tree=``, so
    the module is parsed once and the scan checks the very tree that is compiled.

    >>> scanner = ProfileScanner()
    >>> [d.code for d in scanner(b"import ctypes\\n", "m.py", "high")]
    ['SBX101']
    """

    accepts_tree = True

    def __init__(self, profiles: Mapping[str, Profile] | None = None) -> None:
        self.profiles = dict(profiles or {})
        blob = json.dumps(
            {n: p.to_dict() for n, p in sorted(self.profiles.items())}, sort_keys=True
        )
        self.cache_token = (
            f"sbx-scan-{RULES_VERSION}-" + hashlib.sha256(blob.encode()).hexdigest()[:16]
        )

    def profile(self, name: str | Profile) -> Profile:
        if isinstance(name, Profile):
            return name
        return self.profiles.get(name) or get_builtin(name)

    def __call__(
        self, source: bytes, filename: str, profile: str | Profile,
        *, tree: ast.Module | None = None,
    ) -> list[Any]:
        return scan_to_diagnostics(source, filename, self.profile(profile), tree=tree)


def scan_to_diagnostics(
    source_bytes: bytes, filename: str, profile_name: str | Profile,
    *, tree: ast.Module | None = None,
) -> list[Any]:
    """:func:`scan_source` adapted to the compiler's hook signature.

    Returns :class:`actors.compilation.Diagnostic` objects (``code`` = rule id,
    ``hint`` kept). Pass it as the compiler's ``scanner=`` for the built-in
    profiles, or a :class:`ProfileScanner` for custom ones.

    >>> [str(d) for d in scan_to_diagnostics(b"eval('1')\\n", "m.py", "high")]
    ['m.py:1:1: SBX201 eval() runs code the scan cannot see']
    """
    from actors.compilation import Diagnostic

    return [
        Diagnostic(f.file, f.line, f.col, f.severity, f.rule, f.message, f.hint,
                   risk=f.risk, source_line=f.source_line, context=f.context, matched=f.matched)
        for f in scan_source(source_bytes, filename, profile_name, tree=tree)
    ]
