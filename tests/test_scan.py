"""The static scan: a table of snippets and the rule ids each profile reports."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from actors.compilation import Diagnostic
from actors.profiles import custom_profile
from actors.scan import RULES, Finding, ProfileScanner, scan_source, scan_to_diagnostics

pytestmark = pytest.mark.timeout(60)


def rules(source: str | bytes, profile: str = "high", severity: str | None = None) -> list[str]:
    data = source.encode() if isinstance(source, str) else source
    return [
        f.rule
        for f in scan_source(data, "m.py", profile)
        if severity is None or f.severity == severity
    ]


# (snippet, {profile: expected error rule ids, in order}); warnings are not listed here.
#: A computed name of a blocked module, under high and medium alike.
BOTH_102_103 = {"high": ["SBX102", "SBX103"], "medium": ["SBX102", "SBX103"], "low": []}

TABLE: list[tuple[str, str, dict[str, list[str]]]] = [
    (
        "clean",
        "import json, math\nx = json.dumps({'a': math.pi})\n",
        {"high": [], "medium": [], "low": []},
    ),
    (
        "import subprocess",
        "import subprocess\n",
        {"high": ["SBX101"], "medium": ["SBX101"], "low": []},
    ),
    ("from-import socket", "from socket import socket\n", {"high": ["SBX101"], "low": []}),
    ("submodule", "from urllib import request\n", {"high": ["SBX101"], "low": []}),
    ("dotted import", "import urllib.request\n", {"high": ["SBX101"], "low": []}),
    ("ctypes", "import ctypes\n", {"high": ["SBX101"], "medium": ["SBX101"], "low": []}),
    ("pickle", "import pickle\n", {"high": ["SBX101"], "medium": ["SBX101"], "low": []}),
    ("os is fine", "import os\nos.path.join('a', 'b')\n", {"high": [], "low": []}),
    ("__import__ literal", "__import__('socket')\n", {"high": ["SBX102"], "low": []}),
    ("__import__ concat", "__import__('so' + 'cket')\n", BOTH_102_103),
    (
        "import_module join",
        "import importlib\nimportlib.import_module(''.join(['c', 'types']))\n",
        BOTH_102_103,
    ),
    (
        "import_module alias",
        "from importlib import import_module as im\nim('pty')\n",
        {"high": ["SBX102"], "low": []},
    ),
    ("f-string", "x = 'ck'\n__import__(f'so{x}et')\n", BOTH_102_103),
    ("reversed", "__import__('tekcos'[::-1])\n", BOTH_102_103),
    ("chr", "__import__(chr(103) + chr(99))\n", BOTH_102_103),
    ("bytes decode", "__import__(b'pty'.decode())\n", BOTH_102_103),
    (
        "constant name",
        "NAME = 'sub' + 'process'\n__import__(NAME)\n",
        BOTH_102_103,
    ),
    ("sys.modules", "import sys\nsys.modules['subprocess']\n", {"high": ["SBX102"], "low": []}),
    (
        "computed import",
        "import importlib\nimportlib.import_module(input())\n",
        {"high": ["SBX103"], "medium": ["SBX103"], "low": []},
    ),
    (
        "import system hooks",
        "import sys\nsys.path_hooks.pop(0)\nsys.meta_path.append(None)\n",
        {"high": ["SBX104", "SBX104"], "medium": ["SBX104", "SBX104"], "low": []},
    ),
    ("eval", "eval('1 + 1')\n", {"high": ["SBX201"], "medium": ["SBX201"], "low": []}),
    ("exec alias", "run = exec\n", {"high": ["SBX201"], "low": []}),
    ("compile shadowed", "def compile(x): return x\ncompile(1)\n", {"high": [], "low": []}),
    ("re.compile", "import re\nre.compile('a')\n", {"high": [], "low": []}),
    (
        "open write abs",
        "open('/etc/cron.d/x', 'w')\n",
        {"high": ["SBX202"], "medium": ["SBX202"], "low": []},
    ),
    ("open write dotdot", "open('../x', mode='a')\n", {"high": ["SBX202"], "low": []}),
    ("open write workdir", "open('out.txt', 'w')\n", {"high": [], "low": []}),
    (
        "os.open write",
        "import os\nos.open('/tmp/x', os.O_WRONLY | os.O_CREAT)\n",
        {"high": ["SBX202"], "low": []},
    ),
    (
        "pathlib write",
        "from pathlib import Path\nPath('/etc/x').write_text('1')\n",
        {"high": ["SBX202"], "low": []},
    ),
    ("os.remove abs", "import os\nos.remove('/etc/passwd')\n", {"high": ["SBX202"], "low": []}),
    (
        "getattr dunder",
        "getattr(f, '__globals__')\n",
        {"high": ["SBX203"], "medium": ["SBX203"], "low": []},
    ),
    ("getattr built dunder", "getattr(f, '__glo' + 'bals__')\n", {"high": ["SBX203"], "low": []}),
    ("getattr frame attr", "getattr(g, 'gi_frame')\n", {"high": ["SBX203"], "low": []}),
    ("setattr dunder", "setattr(C, '__bases__', ())\n", {"high": ["SBX203"], "low": []}),
    ("getattr computed", "getattr(obj, name)\n", {"high": ["SBX204"], "medium": [], "low": []}),
    ("getattr harmless", "getattr(obj, 'value', None)\n", {"high": [], "low": []}),
    (
        "getattr os.system",
        "import os\ngetattr(os, 'system')('ls')\n",
        {"high": ["SBX205"], "low": []},
    ),
    (
        "os.system",
        "import os\nos.system('ls')\n",
        {"high": ["SBX205"], "medium": ["SBX205"], "low": []},
    ),
    ("from os import system", "from os import system\n", {"high": ["SBX205"], "low": []}),
    ("os.fork", "import os as o\no.fork()\n", {"high": ["SBX205"], "low": []}),
    ("os.setsid", "import os\nos.setsid()\n", {"high": ["SBX205"], "low": []}),
    (
        "sys._getframe",
        "import sys\nsys._getframe(1)\n",
        {"high": ["SBX205"], "medium": ["SBX205"], "low": []},
    ),
    ("gc", "import gc\ngc.get_referrers(x)\n", {"high": ["SBX101", "SBX205"], "low": []}),
    ("inspect", "import inspect\n", {"high": ["SBX101"], "low": []}),
    (
        "addaudithook",
        "import sys\nsys.addaudithook(print)\n",
        {"high": ["SBX205"], "medium": ["SBX205"], "low": ["SBX205"]},
    ),
    ("loop connection", "loop.create_connection(P, 'h', 80)\n", {"high": ["SBX205"], "low": []}),
    (
        "code loader",
        "import importlib.util\nimportlib.util.spec_from_file_location('m', 'x.py')\n",
        {"high": ["SBX104"], "low": []},
    ),
    (
        "subclasses walk",
        "().__class__.__bases__[0].__subclasses__()\n",
        {"high": ["SBX301", "SBX301"], "medium": ["SBX301", "SBX301"], "low": []},
    ),
    ("func globals", "def f(): pass\nf.__globals__['os']\n", {"high": ["SBX301"], "low": []}),
    ("builtins via self", "print.__self__\n", {"high": ["SBX301"], "low": []}),
    ("object.__setattr__", "object.__setattr__(o, 'x', 1)\n", {"high": ["SBX301"], "low": []}),
    (
        "frame walk",
        "import sys\nf = sys._getframe()\nf.f_back.f_globals\n",
        {"high": ["SBX205", "SBX302", "SBX302"], "low": []},
    ),
    (
        "tb_frame",
        "try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame\n",
        {"high": ["SBX301", "SBX302"], "low": []},
    ),
    ("generator frame", "g = (i for i in ())\ng.gi_frame\n", {"high": ["SBX302"], "low": []}),
    (
        "module __dict__",
        "import os\nos.__dict__['system']\n",
        {"high": ["SBX303"], "medium": ["SBX303"], "low": []},
    ),
    ("class __dict__", "class A: pass\nA.__dict__\n", {"high": ["SBX303"], "low": []}),
    (
        "instance __dict__",
        "class A:\n    def f(self):\n        return self.__dict__\n",
        {"high": [], "low": []},
    ),
    ("dunder string", "x = '__subclasses__'\n", {"high": ["SBX304"], "medium": [], "low": []}),
    ("unknown dunder string", "x = '__foo__'\n", {"high": ["SBX304"], "medium": [], "low": []}),
    ("harmless dunder string", "if __name__ == '__main__':\n    pass\n", {"high": [], "low": []}),
    ("frame name string", "x = 'f_back'\n", {"high": ["SBX304"], "medium": [], "low": []}),
    ("docstring", "'''Mentions __globals__ and f_back.'''\nx = 1\n", {"high": [], "low": []}),
    (
        "built dunder string",
        "k = '__buil' + 'tins__'\n",
        {"high": ["SBX304"], "medium": ["SBX304"], "low": []},
    ),
    (
        "__builtins__ name",
        "__builtins__['eval']\n",
        {"high": ["SBX305"], "medium": ["SBX305"], "low": []},
    ),
]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        pytest.param(src, (profile, want), id=f"{name}-{profile}")
        for name, src, by_profile in TABLE
        for profile, want in by_profile.items()
    ],
)
def test_rule_table(snippet: str, expected: tuple[str, list[str]]) -> None:
    profile, want = expected
    assert rules(snippet, profile, "error") == want


def test_low_reports_escapes_as_warnings() -> None:
    assert rules("().__class__.__bases__[0].__subclasses__()\n", "low", "warning") == [
        "SBX301",
        "SBX301",
    ]
    assert rules("eval('1')\n", "low", "warning") == ["SBX201"]


def test_findings_carry_position_and_format() -> None:
    src = b"import json\n\nx = 1; import ctypes\n"
    [f] = scan_source(src, "pkg/mod.py", "high")
    assert (f.rule, f.severity, f.file, f.line, f.col) == ("SBX101", "error", "pkg/mod.py", 3, 8)
    assert (
        str(f) == "pkg/mod.py:3:8: SBX101 import of 'ctypes' is not allowed under profile 'high' "
        "(the profile does not allow native)"
    )
    assert Finding.from_dict(f.to_dict()) == f
    assert set(RULES) >= {f.rule}


def test_non_utf8_coding_cookie_is_a_finding_not_decoded_around() -> None:
    latin = "# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n".encode("latin-1")
    [f] = scan_source(latin, "m.py", "high")
    assert (f.rule, f.severity, f.line) == ("SBX002", "error", 1)
    assert "iso-8859-1" in f.message
    assert scan_source(latin, "m.py", "low")[0].severity == "warning"
    # UTF-7 can hide a newline (and so a statement) inside what reads as a comment;
    # the cookie itself is refused, and the hidden import is still seen.
    utf7 = b"# coding: utf-7\n# harmless +AAo-import socket\n"
    assert rules(utf7, "high", "error") == ["SBX002", "SBX101"]


def test_bytes_invalid_in_utf8_and_unknown_cookies() -> None:
    assert rules(b"x = '\xff\xfe'\n") == ["SBX002"]
    assert rules(b"# coding: no-such-codec\nx = 1\n") == ["SBX002"]


def test_non_ascii_identifier_is_a_finding() -> None:
    # Fullwidth letters are folded to 'eval' by the parser (NFKC).
    src = "\uff45\uff56\uff41\uff4c('1')\n".encode()
    found = scan_source(src, "m.py", "high")
    assert [f.rule for f in found] == ["SBX003", "SBX201"]
    assert "'eval'" in found[0].message
    assert rules("caf\u00e9 = 1\n", "high", "error") == ["SBX003"]
    assert rules("caf\u00e9 = 1\n", "low", "warning") == ["SBX003"]


def test_bidi_control_characters() -> None:
    assert rules("x = 'abc\u202e def'\n", "high", "error") == ["SBX004"]


def test_syntax_errors_and_null_bytes() -> None:
    [f] = scan_source(b"def f(:\n", "m.py", "high")
    assert f.rule == "SBX001" and f.line == 1
    assert rules(b"x = 1\x00\n") == ["SBX001"]


def test_str_source_is_taken_as_utf8_and_other_types_refused() -> None:
    assert rules("import socket\n") == ["SBX101"]
    with pytest.raises(TypeError):
        scan_source(123, "m.py", "high")  # type: ignore[arg-type]


def test_custom_profile_changes_what_is_reported() -> None:
    net = custom_profile("net", base="high", allow=["network_client"])
    assert [f.rule for f in scan_source(b"import socket\n", "m.py", net)] == []
    strict = custom_profile("nojson", base="low", block_modules=["json"])
    assert [f.rule for f in scan_source(b"import json\n", "m.py", strict)] == ["SBX101"]


def test_compiler_adapter_returns_diagnostics() -> None:
    [d] = scan_to_diagnostics(b"import ctypes\n", "m.py", "high")
    assert isinstance(d, Diagnostic)
    assert (d.code, d.severity, d.line, d.col) == ("SBX101", "error", 1, 1)
    assert Diagnostic.coerce(d, "m.py") == d


def test_profile_scanner_knows_custom_profiles_and_survives_pickling() -> None:
    net = custom_profile("net", base="high", allow=["network_client"])
    scanner = ProfileScanner({"net": net})
    clone = pickle.loads(cloudpickle.dumps(scanner))
    assert [d.code for d in clone(b"import socket\n", "m.py", "net")] == []
    assert [d.code for d in clone(b"import socket\n", "m.py", "high")] == ["SBX101"]
    assert clone.cache_token == scanner.cache_token != ProfileScanner().cache_token


def test_app_modules_shadowing_stdlib_names_are_not_blocked() -> None:
    assert rules("import code\n") == ["SBX101"]
    assert [
        f.rule for f in scan_source(b"import code\n", "m.py", "high", local_modules={"code"})
    ] == []


def test_a_given_tree_is_scanned_with_every_check_and_the_same_findings() -> None:
    """The compile worker hands its parsed tree over: the findings are those of a scan
    that parses the bytes itself, the encoding and token checks included."""
    import ast

    samples = [src for _name, src, _want in TABLE] + [
        "# -*- coding: latin-1 -*-\nx = eval('1')\n",
        "s = '\u202e'  # bidi\nx\u00e9 = 1\n",
    ]
    for src in samples:
        data = src.encode("latin-1" if "latin-1" in src else "utf-8")
        try:
            tree = ast.parse(data)
        except SyntaxError:
            continue  # the worker reports it and does not scan
        for profile in ("high", "medium", "low"):
            own = scan_source(data, "m.py", profile)
            given = scan_source(data, "m.py", profile, tree=tree)
            assert given == own, src
    scanner = ProfileScanner()
    assert scanner.accepts_tree
    tree = ast.parse(b"import ctypes\n")
    assert [d.code for d in scanner(b"import ctypes\n", "m.py", "high", tree=tree)] == ["SBX101"]


def test_a_profiles_blocked_modules_are_built_once_for_every_scan() -> None:
    """A profile builds its blocked set once (~80 us) and keeps it: the scan asks
    once per import checked, and still finds what it blocks."""
    profile = custom_profile("once", base="high")
    assert profile.blocked() is profile.blocked()
    assert profile == custom_profile("once", base="high")  # the kept set is no field
    source = b"import os\nimport json\nimport socket\nimport urllib\nurllib.request\n"
    for _ in range(3):
        rules = [f.rule for f in scan_source(source, "m.py", profile)]
        assert rules.count("SBX101") == 2  # socket, and urllib.request through urllib
