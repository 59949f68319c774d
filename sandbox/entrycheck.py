"""``sandbox check``: does the app's entry (``module:function``) exist, and is it callable?

Checked statically, like the rest of ``sandbox check`` (nothing of the app runs):
the module's file exists, and the name is bound at its top level to something
that can be called (a function, a class, a lambda, an import).

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, "app.py"), "w") as f:
...     _ = f.write("children = []\\n")
>>> [str(x) for x in entry_diagnostics(d, "app:children")]
["app.py:1:1: entry-not-callable 'children' in app.py is a list, not a function"]
"""

from __future__ import annotations

import ast
from pathlib import Path

from actors import astparse
from actors.compilation import Diagnostic

__all__ = ["entry_diagnostics"]

_NOT_CALLABLE = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr,
                 ast.ListComp, ast.DictComp, ast.SetComp, ast.BinOp)
_KIND = {ast.Constant: "a constant", ast.List: "a list", ast.Tuple: "a tuple",
         ast.Dict: "a dict", ast.Set: "a set", ast.JoinedStr: "a string"}


def entry_diagnostics(app_dir: str | Path, entry: str) -> list[Diagnostic]:
    """Errors about ``entry`` in the app at ``app_dir`` (empty when it looks right)."""
    module, sep, name = entry.partition(":")
    if not sep or not module or not name:
        return [Diagnostic("<entry>", 0, 0, "error", "entry-invalid",
                           f"entry {entry!r} is not 'module:function'",
                           hint="e.g. --entry app:children")]
    rel = Path(*module.split("."))
    candidates = [rel.with_suffix(".py"), rel / "__init__.py"]
    found = next((c for c in candidates if (Path(app_dir) / c).is_file()), None)
    if found is None:
        return [Diagnostic(str(candidates[0]), 0, 0, "error", "entry-missing",
                           f"the entry module {module!r} does not exist in {app_dir}",
                           hint=f"create {candidates[0]} defining {name}(), or give --entry")]
    try:
        tree = astparse.parse((Path(app_dir) / found).read_text(), str(found))
    except (SyntaxError, ValueError, OSError):
        return []  # the compile step reports it
    binding = _top_level_binding(tree, name)
    if binding is None:
        return [Diagnostic(str(found), 1, 1, "error", "entry-missing",
                           f"{found} defines no {name!r} at its top level",
                           hint=f"add `def {name}(): return [...]` (the top-level child specs)")]
    if isinstance(binding, _NOT_CALLABLE):
        kind = _KIND.get(type(binding), "an expression")
        return [Diagnostic(str(found), binding.lineno, binding.col_offset + 1, "error",
                           "entry-not-callable",
                           f"{name!r} in {found} is {kind}, not a function")]
    return []


def _top_level_binding(tree: ast.Module, name: str) -> ast.AST | None:
    """The last top-level statement binding ``name`` (its value for an assignment)."""
    found: ast.AST | None = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                found = node
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                found = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id == name and node.value is not None:
                found = node.value
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    found = node
    return found
