"""Imports of a module, from its AST, and their resolution against an app's modules.

Two halves, both standard-library only because the compile worker process imports
this module:

- :func:`extract_imports` (runs in the worker, next to ``ast.parse``) lists every
  import statement and literal dynamic import as plain dicts;
- :func:`resolve` (runs in the host) turns those into the app modules a module
  depends on, and the imports that name nothing (neither an app module nor an
  installed one).

>>> import ast
>>> recs = extract_imports(ast.parse("from . import b\\nimport c.d"))
>>> resolve("pkg.a", False, recs, {"pkg", "pkg.a", "pkg.b", "c", "c.d"}).dependencies
('c', 'c.d', 'pkg', 'pkg.b')
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["extract_imports", "resolve", "Resolution", "CURRENT_PACKAGE"]

#: Marker for ``importlib.import_module(".m", __package__)``: the importing module's package.
CURRENT_PACKAGE = "<current package>"

_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _guards_import(handler: ast.ExceptHandler) -> bool:
    """Whether an ``except`` clause catches ImportError (so the import is optional)."""
    t = handler.type
    if t is None:
        return True
    names = t.elts if isinstance(t, ast.Tuple) else [t]
    for n in names:
        ident = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else ""
        if ident in _IMPORT_ERRORS:
            return True
    return False


def _literal(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _dynamic_target(call: ast.Call) -> bool:
    """``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    f = call.func
    if isinstance(f, ast.Attribute):
        return (
            f.attr == "import_module"
            and isinstance(f.value, ast.Name)
            and f.value.id == "importlib"
        )
    return isinstance(f, ast.Name) and f.id in ("import_module", "__import__")


def extract_imports(tree: ast.AST, source: str | bytes | None = None) -> list[dict[str, Any]]:
    """Every import in ``tree`` as a plain dict, in source order.

    With the module's ``source``: if it names neither ``import_module`` nor
    ``__import__`` it has no dynamic import, and only statements are walked (an
    import statement is one), not the expressions that make most of a tree.

    Keys: ``kind`` (``import``, ``from``, ``dynamic``), ``module`` (dotted name or
    None for ``from . import x``), ``names`` (the names a from-import takes),
    ``level`` (dots of a relative import), ``package`` (the literal package argument
    of a relative dynamic import, or :data:`CURRENT_PACKAGE`), ``line``, ``col``
    (1-based) and ``guarded`` (inside ``try`` whose handler catches ImportError).

    >>> import ast
    >>> [r["module"] for r in extract_imports(ast.parse(
    ...     "import a\\nfrom b import c\\nimportlib.import_module('d')"))]
    ['a', 'b', 'd']
    """
    out: list[dict[str, Any]] = []
    if source is not None and isinstance(source, str):
        source = source.encode("utf-8", "surrogatepass")
    statements_only = source is not None and b"import_module" not in source \
        and b"__import__" not in source
    # Iterative walk keeping the "guarded" flag; recursion would fail on the deep
    # trees that only the parser's own limits stop.
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, guarded = stack.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(_record("import", alias.name, [], 0, None, node, guarded))
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            out.append(_record("from", node.module, names, node.level or 0, None, node, guarded))
        elif isinstance(node, ast.Call) and _dynamic_target(node) and node.args:
            name = _literal(node.args[0])
            if name is not None:
                pkg_node = node.args[1] if len(node.args) > 1 else None
                for kw in node.keywords:
                    if kw.arg == "package":
                        pkg_node = kw.value
                package = _literal(pkg_node)
                if isinstance(pkg_node, ast.Name) and pkg_node.id in ("__package__", "__name__"):
                    package = CURRENT_PACKAGE
                level = len(name) - len(name.lstrip("."))
                module = name[level:] or None
                out.append(_record("dynamic", module, [], level, package, node, guarded))
        children: Iterable[tuple[ast.AST, bool]]
        if isinstance(node, ast.Try | ast.TryStar):
            body_guarded = guarded or any(_guards_import(h) for h in node.handlers)
            children = [(n, body_guarded) for n in node.body]
            children += [(n, guarded) for n in (*node.handlers, *node.orelse, *node.finalbody)]
        elif statements_only:
            children = [(n, guarded) for n in ast.iter_child_nodes(node)
                        if isinstance(n, _HOLDS_STATEMENTS)]
        else:
            children = [(n, guarded) for n in ast.iter_child_nodes(node)]
        stack.extend(reversed(list(children)))
    return out


#: The nodes an import statement can be found in (or be).
_HOLDS_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)


def _record(
    kind: str, module: str | None, names: list[str], level: int, package: str | None,
    node: Any, guarded: bool,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "module": module,
        "names": names,
        "level": level,
        "package": package,
        "line": getattr(node, "lineno", 0),
        "col": getattr(node, "col_offset", -1) + 1,
        "guarded": guarded,
    }


@dataclass
class Resolution:
    """The outcome of :func:`resolve` for one module.

    ``dependencies``: app modules it imports (sorted, itself excluded).
    ``unknown``: ``(record, top_level_name)`` for imports that name neither an app
    module nor an installed one (unguarded only). ``bad_relative``: records of
    relative imports that go above the app's top level.
    """

    dependencies: tuple[str, ...] = ()
    unknown: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    bad_relative: list[dict[str, Any]] = field(default_factory=list)


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _absolute(
    record: dict[str, Any], module_name: str, is_package: bool
) -> str | None:
    """The absolute module a (possibly relative) import record names; None if invalid."""
    level = record["level"]
    mod = record["module"] or ""
    if level == 0:
        return mod
    if record["kind"] == "dynamic":
        pkg = record["package"]
        if pkg is None:
            return None  # import_module('.x') without a package raises at run time
        if pkg == CURRENT_PACKAGE:
            pkg = module_name if is_package else module_name.rpartition(".")[0]
    else:
        pkg = module_name if is_package else module_name.rpartition(".")[0]
    parts = pkg.split(".") if pkg else []
    if level - 1 > len(parts) - 1 or not parts:
        return None  # beyond the top-level package
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([mod] if mod else []))


def resolve(
    module_name: str,
    is_package: bool,
    records: Iterable[dict[str, Any]],
    app_modules: set[str] | frozenset[str],
    *,
    is_installed: Callable[[str], bool] | None = None,
) -> Resolution:
    """Resolve import records of ``module_name`` against the app's module names.

    Importing ``a.b.c`` runs ``a`` and ``a.b`` too, so every prefix that is an app
    module is a dependency; ``from p import x`` depends on ``p.x`` when that is a
    module. ``is_installed(top_level_name)`` decides whether a non-app import
    exists (default: never asked, nothing reported unknown).

    >>> resolve("m", False, [{"kind": "import", "module": "nothere", "names": [],
    ...     "level": 0, "package": None, "line": 1, "col": 1, "guarded": False}],
    ...     {"m"}, is_installed=lambda n: False).unknown[0][1]
    'nothere'
    """
    deps: set[str] = set()
    result = Resolution()
    app_tops = {m.split(".")[0] for m in app_modules}
    for rec in records:
        target = _absolute(rec, module_name, is_package)
        if target is None:
            result.bad_relative.append(rec)
            continue
        if not target:
            continue
        found = [p for p in _prefixes(target) if p in app_modules]
        deps.update(found)
        if rec["kind"] == "from":
            for name in rec["names"]:
                sub = f"{target}.{name}"
                if name != "*" and sub in app_modules:
                    deps.add(sub)
        top = target.split(".")[0]
        if rec["guarded"] or rec["level"]:
            continue
        if top in app_tops:
            # An app package: "import pkg.missing" must name a module; from-imports
            # may name attributes, so only plain and dynamic imports are checked.
            if rec["kind"] != "from" and target not in app_modules and not _is_namespace(
                target, app_modules
            ):
                result.unknown.append((rec, target))
        elif is_installed is not None and not is_installed(top):
            result.unknown.append((rec, top))
    deps.discard(module_name)
    result.dependencies = tuple(sorted(deps))
    return result


def _is_namespace(name: str, app_modules: set[str] | frozenset[str]) -> bool:
    """A directory without __init__.py that holds app modules (a namespace package)."""
    prefix = name + "."
    return any(m.startswith(prefix) for m in app_modules)


def is_installed_factory() -> Callable[[str], bool]:
    """A memoising "is this top-level module importable in the host?" check.

    Uses ``importlib.util.find_spec`` on top-level names only: finding a dotted
    name would import (run) its parent package in the host.

    >>> check = is_installed_factory()
    >>> check("json"), check("surely_not_a_module_xyz")
    (True, False)
    """
    import importlib.util

    known: dict[str, bool] = {}

    def check(top: str) -> bool:
        if top in sys.builtin_module_names or top in sys.stdlib_module_names:
            return True
        if top not in known:
            try:
                known[top] = importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):
                known[top] = False
        return known[top]

    return check
