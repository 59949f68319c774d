"""The known pitfalls of Python code reloading, each against a real sandbox.

Seen in the reloaders people use (IPython autoreload, jurigged, importlib.reload);
the swap avoids them by staging fresh module objects, re-staging dependents, and
copying each state through pickle so classes re-bind by qualified name.
"""

from __future__ import annotations

import os
import py_compile
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest
from helpers import path_of, write

from runtime.errors import ActorFailed, ReloadFailed

pytestmark = pytest.mark.timeout(90)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def module_attr(name: str, attr: str, default=None):
    """``getattr(sys.modules[name], attr)`` (run inside the sandbox)."""
    return getattr(sys.modules[name], attr, default)


def app(actor_module: str, cls: str, name: str) -> str:
    return f"""
        import {actor_module}


        def children():
            return [{actor_module}.{cls}.child_spec(name="{name}")]
        """


# -- `from m import f` in a dependent ------------------------------------------------------

FROM_IMPORT = {
    "app.py": app("user", "User", "user"),
    "user.py": """
        from runtime.genserver import GenServer

        from helpers import f, g as renamed

        TABLE = {"f": f}  # a reference taken at import time


        class User(GenServer):
            def init(self):
                return None

            def handle_call(self, request, state):
                return (f(), renamed(), TABLE["f"]()), state
        """,
    "helpers.py": """
        def f():
            return "f1"


        def g():
            return "g1"
        """,
}


def test_from_import_in_a_dependent_binds_the_new_functions(sandbox_factory):
    sb = sandbox_factory(FROM_IMPORT)
    assert sb.call("user", "x") == ("f1", "g1", "f1")
    write(sb, "helpers.py", 'def f():\n    return "f2"\n\n\ndef g():\n    return "g2"\n')
    report = sb.hot_reload()
    assert report.changed == ["helpers"] and "user" in report.modules
    assert sb.call("user", "x") == ("f2", "g2", "f2")


# -- module globals: deleted names, a body raising half-way ------------------------------

GLOBALS = {
    "app.py": app("holder", "Holder", "holder"),
    "holder.py": """
        from runtime.genserver import GenServer

        A = 1
        OLD_NAME = "still here"


        class Holder(GenServer):
            def init(self):
                return None

            def handle_call(self, request, state):
                return (A, globals().get("OLD_NAME"), globals().get("B")), state
        """,
}


def test_names_deleted_from_the_source_do_not_linger(sandbox_factory):
    sb = sandbox_factory(GLOBALS)
    assert sb.call("holder", "x") == (1, "still here", None)
    source = (path_of(sb) / "holder.py").read_text()
    source = source.replace('OLD_NAME = "still here"\n', "").replace("A = 1", "A = 2")
    write(sb, "holder.py", source)
    sb.hot_reload()
    assert sb.call("holder", "x") == (2, None, None)
    assert sb.run(lambda: module_attr("holder", "OLD_NAME", "gone")) == "gone"


def test_a_module_body_raising_half_way_leaves_no_mixed_module(sandbox_factory):
    sb = sandbox_factory(GLOBALS)
    module_id = sb.run(lambda: id(sys.modules["holder"]))
    source = (path_of(sb) / "holder.py").read_text()
    write(sb, "holder.py", source.replace("A = 1", "A = 2\nraise RuntimeError('half-way')\nB = 2"))
    with pytest.raises(ReloadFailed) as info:
        sb.hot_reload()
    assert (info.value.step, info.value.module) == ("stage", "holder")
    assert "half-way" in str(info.value)
    assert sb.call("holder", "x") == (1, "still here", None)
    assert sb.run(lambda: id(sys.modules["holder"])) == module_id, "the old module object"
    assert sb.run(lambda: (module_attr("holder", "A"), module_attr("holder", "B"))) == (1, None)


# -- state holding instances of reloaded classes ------------------------------------------

MODEL_V1 = """
    import dataclasses
    import enum

    VERSION = 1


    @dataclasses.dataclass
    class Point:
        x: int
        y: int


    @dataclasses.dataclass(frozen=True)
    class Frozen:
        name: str


    @dataclasses.dataclass(frozen=True, slots=True)
    class FrozenSlots:
        n: int


    class Color(enum.Enum):
        RED = 1
        GREEN = 2


    class Slotted:
        __slots__ = ("a", "b")

        def __init__(self, a, b):
            self.a = a
            self.b = b
    """

MODEL_V2 = MODEL_V1.replace("VERSION = 1", "VERSION = 2").replace(
    "        y: int\n",
    "        y: int\n\n        def total(self):\n            return self.x + self.y\n",
)

CLASSES = {
    "app.py": app("holder", "Holder", "holder"),
    "model.py": MODEL_V1,
    "holder.py": """
        from runtime.genserver import GenServer

        import model
        from model import Color, Frozen, FrozenSlots, Point, Slotted


        class Holder(GenServer):
            def init(self):
                return {
                    "p": Point(1, 2),
                    "f": Frozen("x"),
                    "fs": FrozenSlots(7),
                    "c": Color.GREEN,
                    "s": Slotted(3, 4),
                    "nested": [Point(5, 6), (Color.RED, {"deep": Point(7, 8)})],
                }

            def handle_call(self, request, state):
                p, f, fs, c, s = (state[k] for k in ("p", "f", "fs", "c", "s"))
                nested_point, (nested_color, deep) = state["nested"]
                report = {
                    "version": model.VERSION,
                    "isinstance": [
                        isinstance(p, Point), isinstance(f, Frozen),
                        isinstance(fs, FrozenSlots), isinstance(c, Color),
                        isinstance(s, Slotted), isinstance(nested_point, Point),
                        isinstance(deep["deep"], Point), nested_color is Color.RED,
                        c is Color.GREEN, type(p) is model.Point,
                    ],
                    "fields": [(p.x, p.y), f.name, fs.n, c.value, (s.a, s.b),
                               (nested_point.x, nested_point.y)],
                    "equal": [p == Point(1, 2), f == Frozen("x"), fs == FrozenSlots(7)],
                    "total": p.total() if hasattr(p, "total") else None,
                }
                return report, state
        """,
}


def test_state_instances_come_out_as_instances_of_the_new_classes(sandbox_factory):
    sb = sandbox_factory(CLASSES)
    before = sb.call("holder", "check")
    assert before["version"] == 1 and all(before["isinstance"]) and all(before["equal"])
    write(sb, "model.py", MODEL_V2)
    report = sb.hot_reload()
    assert report.changed == ["model"] and report.actors == 1 and report.warnings == []
    after = sb.call("holder", "check")
    assert after["version"] == 2
    assert all(after["isinstance"]), after["isinstance"]
    assert all(after["equal"]), after["equal"]
    assert after["fields"] == before["fields"]
    assert after["total"] == 3, "old instances run the new class's methods"


def test_a_state_the_new_classes_cannot_take_fails_the_reload_cleanly(sandbox_factory):
    sb = sandbox_factory(CLASSES)
    write(sb, "model.py", MODEL_V2.replace("GREEN = 2", "BLUE = 3"))  # Color(2) is gone
    with pytest.raises(ReloadFailed) as info:
        sb.hot_reload()
    assert (info.value.step, info.value.module) == ("restore", "holder")
    assert sb.call("holder", "check")["version"] == 1


# -- caches and wrappers ------------------------------------------------------------------

CACHES = {
    "app.py": app("user", "User", "user"),
    "calc.py": """
        import functools


        def traced(fn):
            @functools.wraps(fn)
            def wrapper(*args):
                return ("traced", fn(*args))
            return wrapper


        @functools.lru_cache(maxsize=None)
        def square(x):
            return x * x


        @traced
        def label(x):
            return f"v1:{x}"
        """,
    "user.py": """
        from runtime.genserver import GenServer

        from calc import label, square


        class User(GenServer):
            def init(self):
                return None

            def handle_call(self, request, state):
                return (square(request), label(request)), state
        """,
}


def test_lru_cache_and_decorator_wrappers_do_not_serve_old_results(sandbox_factory):
    sb = sandbox_factory(CACHES)
    assert sb.call("user", 3) == (9, ("traced", "v1:3"))
    assert sb.call("user", 3) == (9, ("traced", "v1:3"))  # now cached
    source = (path_of(sb) / "calc.py").read_text()
    write(sb, "calc.py", source.replace("return x * x", "return x * x + 1")
          .replace('f"v1:{x}"', 'f"v2:{x}"'))
    sb.hot_reload()
    assert sb.call("user", 3) == (10, ("traced", "v2:3"))


# -- functions and generators in state ----------------------------------------------------

GENERATORS = {
    "app.py": app("gen", "Gen", "keeper"),
    "gen.py": """
        from runtime.genserver import GenServer


        def numbers():
            n = 0
            while True:
                n += 1
                yield ("v1", n)


        def handler(x):
            return ("v1", x)


        class Gen(GenServer):
            def init(self):
                return {"gen": numbers(), "fn": lambda x: ("v1-lambda", x), "handler": handler}

            def handle_call(self, request, state):
                if request == "next":
                    return next(state["gen"]), state
                if request == "fn":
                    return state["fn"](1), state
                if request == "handler":
                    return state["handler"](1), state
                return None, state
        """,
}


def test_generators_and_lambdas_in_state_keep_old_code_with_a_warning(sandbox_factory):
    sb = sandbox_factory(GENERATORS)
    assert sb.call("keeper", "next") == ("v1", 1)
    write(sb, "gen.py", (path_of(sb) / "gen.py").read_text().replace('"v1', '"v2'))
    report = sb.hot_reload()
    assert report.ok and report.actors == 1
    joined = "\n".join(report.warnings)
    assert "actor keeper#" in joined
    assert "generator numbers" in joined and "function Gen.init.<locals>.<lambda>" in joined
    assert "handler" not in joined, "a module-level function re-binds to the new one"
    # What the warnings say: the running generator and the lambda keep the old code...
    assert sb.call("keeper", "next") == ("v1", 2)
    assert sb.call("keeper", "fn") == ("v1-lambda", 1)
    # ...while a module-level function stored in state re-binds by name.
    assert sb.call("keeper", "handler") == ("v2", 1)


# -- stale bytecode, new files, tracebacks ---------------------------------------------------

VALUE = {
    "app.py": app("val", "Val", "val"),
    "val.py": """
        from runtime.genserver import GenServer

        VALUE = 1111


        class Val(GenServer):
            def init(self):
                return None

            def handle_call(self, request, state):
                if request == "extra":
                    import extra
                    return extra.answer(), state
                return VALUE, state
        """,
}


def test_same_size_edit_within_the_same_mtime_still_loads_the_new_source(sandbox_factory):
    sb = sandbox_factory(VALUE)
    path = path_of(sb) / "val.py"
    st = path.stat()
    # A stale __pycache__ entry matching the old mtime and size, as importlib would trust.
    py_compile.compile(str(path), invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    new = path.read_text().replace("VALUE = 1111", "VALUE = 2222")
    assert len(new) == st.st_size
    path.write_text(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    report = sb.hot_reload()
    assert report.changed == ["val"]
    assert sb.call("val", "get") == 2222


def test_a_new_module_file_is_importable_after_the_next_reload(sandbox_factory):
    sb = sandbox_factory(VALUE)
    with pytest.raises(ActorFailed, match="No module named 'extra'"):
        sb.call("val", "extra")
    write(sb, "extra.py", "def answer():\n    return 42\n")
    report = sb.hot_reload()
    assert report.changed == ["extra"] and report.versions == {"extra": 1}
    assert sb.call("val", "extra") == 42
    # and a module edited to import it at the top, in the same reload as a new one
    write(sb, "more.py", "WORD = 'more'\n")
    write(sb, "val.py", (path_of(sb) / "val.py").read_text().replace(
        "VALUE = 1111", "import more\n\nVALUE = more.WORD"))
    report = sb.hot_reload()
    assert sorted(report.changed) == ["more", "val"]
    assert report.modules.index("more") < report.modules.index("val")
    assert sb.call("val", "get") == "more"


BOOM_V1 = """
    from runtime.genserver import GenServer


    class Boom(GenServer):
        def init(self):
            return None

        def handle_call(self, request, state):
            raise RuntimeError("boom")  # line-text-v1
    """

BOOM_V2 = """
    from runtime.genserver import GenServer


    class Boom(GenServer):
        def init(self):
            return None

        def handle_call(self, request, state):
            first = 1
            second = 2
            raise RuntimeError("boom")  # line-text-v2
    """


def _line_of(source: str, marker: str) -> tuple[int, str]:
    for n, line in enumerate(textwrap.dedent(source).splitlines(), 1):
        if marker in line:
            return n, line.strip()
    raise AssertionError(marker)


def _raise_line(tb: str, file: Path) -> tuple[int, str]:
    lines = tb.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f'File "{file}"') and "handle_call" in line:
            return int(line.split("line ")[1].split(",")[0]), lines[i + 1].strip()
    raise AssertionError(f"no frame of {file} in:\n{tb}")


@pytest.mark.parametrize("how", ["file edit", "source="])
def test_tracebacks_after_a_reload_show_the_new_source_lines(sandbox_factory, how):
    sb = sandbox_factory({"app.py": app("boom", "Boom", "boom"), "boom.py": BOOM_V1})
    file = path_of(sb) / "boom.py"
    with pytest.raises(ActorFailed) as info:
        sb.call("boom", "x")
    assert _raise_line(info.value.remote_traceback, file) == _line_of(BOOM_V1, "line-text-v1")
    if how == "file edit":
        write(sb, "boom.py", BOOM_V2)
        sb.hot_reload()
        # The file changes again on disk, not reloaded: tracebacks show what runs.
        write(sb, "boom.py", BOOM_V2.replace("line-text-v2", "line-text-v3-not-loaded"))
    else:
        sb.hot_reload(source={"boom": textwrap.dedent(BOOM_V2)})
    # the supervisor restarted the crashed actor (with the new code)
    from sandbox.testing import wait_for

    def crash() -> str:
        try:
            sb.call("boom", "x")
        except ActorFailed as exc:
            return exc.remote_traceback
        except Exception:
            return ""
        return ""

    tb = wait_for(crash, timeout=10)
    v2 = _line_of(BOOM_V2, "line-text-v2")
    assert v2[0] != _line_of(BOOM_V1, "line-text-v1")[0]
    assert _raise_line(tb, file) == v2
