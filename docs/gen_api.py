"""Generate docs/api.md, the API reference, from the docstrings.

Run from anywhere: ``python docs/gen_api.py`` rewrites ``docs/api.md``;
``python docs/gen_api.py --check`` exits 1 if it is out of date (a test does the
same). What it renders:

- every name of ``sandbox.__all__`` defined by the product (re-exports of
  :mod:`runtime` are rendered once, under ``runtime``), then every name of
  ``runtime.__all__``, grouped as the comments in each ``__init__.py`` group them,
  plus the classes the API hands back (``SupervisorRef``, ``ReloadReport``, ...);
- the testing helpers (``sandbox.testing``) and the pytest plugin's fixtures;
- the operations of every component actor (``actors/*``: each ``op_<name>``
  method, called as ``ref.invoke("<name>", ...)``).

Docstring examples (``>>>``) become ``pycon`` blocks tagged with the module they
come from; ``tests/test_docs.py`` runs them as doctests in that module's namespace.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import re
import sys
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "api.md"

#: Classes the API returns or that users subclass, documented after runtime.__all__.
EXTRA = [
    ("Returned by the API", [
        "runtime.supervisor.SupervisorRef",
        "runtime.supervisor.ChildInfo",
        "runtime.supervisor.ChildStartFailed",
        "sandbox.hotreload.ReloadReport",
        "sandbox.capacity.CapacityReport",
        "runtime.component.ComponentRef",
        "runtime.component.Component",
    ]),
    ("Load harness (sandbox bench --app)", [
        "sandbox.loadtest.run_load",
        "sandbox.loadtest.run_load_async",
        "sandbox.loadtest.LoadResult",
    ]),
]

#: pykka hooks the runtime's Actor overrides: not part of its API.
HIDDEN_METHODS = {"on_start", "on_receive", "on_stop", "on_failure"}

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _role(m: re.Match[str]) -> str:
    target = m.group(2)
    if target.startswith("!"):
        target = target[1:]
    if m.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def render_docstring(doc: str | None, module: str, key: str) -> str:
    """A docstring as markdown: roles and ``literals`` to code, examples to pycon blocks."""
    if not doc:
        return ""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        text = _ROLE.sub(_role, "\n".join(prose))
        out.extend(re.sub(r"``([^`]+)``", r"`\1`", text).splitlines())
        prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            flush()
            indent = len(line) - len(line.lstrip())
            block = []
            while i < len(lines) and lines[i].strip():
                line = lines[i]
                block.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
                i += 1
            out += ["", f"```pycon module={module} doc={key}", *block, "```", ""]
            continue
        prose.append(line)
        i += 1
    flush()
    return "\n".join(out).strip() + "\n"


def _annotation(ann: Any) -> str:
    if ann is inspect.Parameter.empty:
        return ""
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


def signature(obj: Any, *, drop_self: bool = False) -> str:
    """``(a: int, *, b: str = 'x') -> None``, annotations as written, no addresses."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts = []
    star_done = False
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    params = [p for p in params if not p.name.startswith("_")]  # private by convention
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        text = prefix + p.name
        ann = _annotation(p.annotation)
        if ann:
            text += f": {ann}"
        if p.default is not inspect.Parameter.empty:
            text += (" = " if ann else "=") + _ADDRESS.sub("", repr(p.default))
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (
            p is params[-1] or params[params.index(p) + 1].kind is not p.POSITIONAL_ONLY
        ):
            parts.append("/")
    ret = _annotation(sig.return_annotation)
    return f"({', '.join(parts)})" + (f" -> {ret}" if ret else "")


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", text.lower().replace(" ", "-").replace(".", ""))


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined by ``cls`` itself, in source order."""
    out = []
    from runtime.actor import Actor

    for name, value in vars(cls).items():
        if name.startswith("_") or name in HIDDEN_METHODS:
            continue
        if name.startswith("on_") and issubclass(cls, Actor) and cls is not Actor:
            continue  # an actor's own handlers: the hooks are documented on Actor
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            out.append((name, value))
    return out


def render_class(cls: type, qualname: str, level: int = 3) -> list[str]:
    module = cls.__module__
    h = "#" * level
    is_exc = issubclass(cls, BaseException)
    kind = "exception" if is_exc else "class"
    out = [f"{h} {kind} `{qualname}`", ""]
    sig = signature(cls) if not is_exc or "__init__" in vars(cls) else ""
    sig = sig.removesuffix(" -> None")
    bases = [b for b in cls.__bases__ if b is not object]
    where = f"`{module}.{cls.__qualname__}`"
    if typing.is_typeddict(cls):  # its keys are its API: shown as keyword parameters
        keys = ", ".join(f"{k}: {getattr(a, '__forward_arg__', a)}"
                         for k, a in cls.__annotations__.items())
        sig, bases, where = f"(*, {keys})", [], where + "; a `TypedDict`"
    if bases:
        names = ", ".join(f"`{b.__qualname__}`" for b in bases)
        where += f"; bases: {names}"
    out += [f"```text\n{cls.__qualname__}{sig}\n```" if sig and sig != "(...)" else "", where, ""]
    out.append(render_docstring(cls.__doc__, module, f"{module}.{cls.__qualname__}"))
    if is_exc:
        return out
    for name, member in _members(cls):
        key = f"{module}.{cls.__qualname__}.{name}"
        if isinstance(member, property):
            out += [f"- **`{name}`** (property)" + (f": {_first_paragraph(member.__doc__)}"
                                                   if member.__doc__ else ""), ""]
            continue
        out += [f"{h}# `{cls.__qualname__}.{name}`", "",
                f"```text\n{name}{signature(member, drop_self=True)}\n```", ""]
        doc = render_docstring(member.__doc__, module, key)
        if doc:
            out += [doc]
    return out


def render_function(fn: Any, qualname: str, level: int = 3) -> list[str]:
    h = "#" * level
    module = fn.__module__
    out = [f"{h} `{qualname}()`", "", f"```text\n{qualname}{signature(fn)}\n```", ""]
    out.append(render_docstring(fn.__doc__, module, f"{module}.{fn.__qualname__}"))
    return out


def render_module(mod: Any, level: int = 3) -> list[str]:
    h = "#" * level
    out = [f"{h} module `{mod.__name__}`", ""]
    out.append(render_docstring(mod.__doc__, mod.__name__, mod.__name__))
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        if inspect.isfunction(obj):
            out += render_function(obj, f"{mod.__name__.rsplit('.', 1)[-1]}.{name}", level + 1)
    return out


def render(obj: Any, qualname: str, level: int = 3) -> list[str]:
    if inspect.ismodule(obj):
        return render_module(obj, level)
    if inspect.isclass(obj):
        return render_class(obj, qualname, level)
    if callable(obj):
        return render_function(obj, qualname, level)
    return [f"{'#' * level} `{qualname}`", "", f"`{obj!r}`", ""]


def groups_of_all(package: str) -> list[tuple[str, list[str]]]:
    """``package.__all__`` split at the ``# comment`` lines of its ``__init__.py``."""
    source = (REPO / package / "__init__.py").read_text()
    tree = ast.parse(source)
    node = next(
        n for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
    )
    segment = source.splitlines()[node.lineno - 1 : node.end_lineno]
    groups: list[tuple[str, list[str]]] = [("Other", [])]
    for line in segment:
        comment = re.match(r"\s*#\s*(.+)", line)
        if comment:
            title = comment.group(1).strip()
            groups.append((title[:1].upper() + title[1:], []))
        groups[-1][1].extend(re.findall(r'"([A-Za-z_][A-Za-z_0-9]*)"', line))
    return [(title, names) for title, names in groups if names]


def component_classes() -> list[type]:
    """Every Component subclass defined in the ``actors`` package, by module name."""
    import actors
    from runtime.component import Component

    found = []
    for info in sorted(pkgutil.iter_modules(actors.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"actors.{info.name}")
        for obj in vars(mod).values():
            if (inspect.isclass(obj) and issubclass(obj, Component) and obj is not Component
                    and obj.__module__ == mod.__name__):
                found.append(obj)
    return found


def render_component(cls: type) -> list[str]:
    module = cls.__module__
    out = [f"### `{cls.__name__}` ({module})", ""]
    summary = _first_paragraph(cls.__doc__) or _first_paragraph(sys.modules[module].__doc__)
    if summary:
        out += [_ROLE.sub(_role, re.sub(r"``([^`]+)``", r"`\1`", summary)), ""]
    ops = [(name[3:], fn) for name, fn in vars(cls).items()
           if name.startswith("op_") and inspect.isfunction(fn)]
    if not ops:
        return out + ["(no operations)", ""]
    for op, fn in ops:
        sig = signature(fn, drop_self=True)
        args = sig[1:] if sig.startswith("()") else ", " + sig[1:]
        out += [f"#### `{op}`", "", f"```text\ninvoke(\"{op}\"{args}\n```", ""]
        doc = render_docstring(fn.__doc__, module, f"{module}.{cls.__qualname__}.op_{op}")
        if doc:
            out.append(doc)
    return out


def generate() -> str:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import runtime
    import sandbox
    import sandbox.pytest_plugin as plugin
    import sandbox.testing as testing

    lines = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings: do not edit by hand. "
        "Run `python docs/gen_api.py` after changing a docstring; "
        "tests/test_docs.py fails while this file is out of date. -->",
        "",
        "The product is `sandbox` (`import sandbox; sandbox.start()`); the actor system"
        " underneath, embeddable alone, is `runtime`. Each section names the package its"
        " names are imported from. Component operations are what the"
        " component actors answer to `ref.invoke(op, ...)`; the public API calls them"
        " for you.",
        "",
    ]
    sections: list[tuple[str, list[tuple[str, Any]]]] = []
    modules: list[tuple[str, Any]] = []
    for package in (sandbox, runtime):
        for title, names in groups_of_all(package.__name__):
            objs = [(n, getattr(package, n)) for n in names]
            if package is sandbox:
                objs = [(n, o) for n, o in objs
                        if not getattr(o, "__module__", "runtime").startswith("runtime")
                        and not inspect.ismodule(o)]
            modules += [(n, o) for n, o in objs if inspect.ismodule(o)]
            items = [(n, o) for n, o in objs if not inspect.ismodule(o)]
            if items:
                sections.append((f"{title} ({package.__name__})", items))
    for name, mod in modules:
        sections.append((f"Module runtime.{name}", [(name, mod)]))
    for title, paths in EXTRA:
        items = []
        for path in paths:
            mod, _, name = path.rpartition(".")
            items.append((name, getattr(importlib.import_module(mod), name)))
        sections.append((title, items))
    sections.append(("Testing helpers (sandbox.testing)",
                     [(f"testing.{n}", getattr(testing, n)) for n in testing.__all__]))
    components = component_classes()

    lines += ["## Contents", ""]
    for title, items in sections:
        lines.append(f"- [{title}](#{_slug(title)}): " + ", ".join(f"`{n}`" for n, _ in items))
    lines.append("- [pytest plugin fixtures](#pytest-plugin-fixtures)")
    lines.append("- [Component operations](#component-operations): "
                 + ", ".join(f"`{c.__name__}`" for c in components))
    lines.append("")
    for title, items in sections:
        lines += [f"## {title}", ""]
        for name, obj in items:
            lines += render(obj, name)
    lines += ["## pytest plugin fixtures", "",
              render_docstring(plugin.__doc__, plugin.__name__, plugin.__name__)]
    for name in ("sandbox_runtime", "sandbox_factory", "app_dir"):
        fixture = getattr(plugin, name)
        fn = getattr(fixture, "__wrapped__", None) or getattr(fixture, "_get_wrapped_function",
                                                             lambda: fixture)()
        lines += [f"### fixture `{name}`", "", render_docstring(fn.__doc__, plugin.__name__,
                                                               f"{plugin.__name__}.{name}")]
    lines += ["## Component operations", "",
              "Each component is an actor under the runtime's root supervisor; "
              "`rt.component(name)` returns its reference. An operation that raises a "
              "`SandboxError` re-raises it in the caller and the component keeps running.",
              ""]
    for cls in components:
        lines += render_component(cls)
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print("docs/api.md is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
