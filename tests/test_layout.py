"""The three layers and what they promise: one direction of imports, typed packages,
the public names of each layer, and the pykka internals the actor system relies on."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pykka
import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("runtime", "actors", "sandbox")
#: what each layer may import of the others (sandbox may import both)
ALLOWED = {"runtime": set(), "actors": {"runtime"}, "sandbox": {"runtime", "actors"}}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported top-level project package) for every import in ``path``,
    wherever it sits (module level or inside a function)."""
    found = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in LAYERS]
    return found


@pytest.mark.timeout(30)
@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_one_way(layer):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {pkg}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, pkg in project_imports(path)
        if pkg != layer and pkg not in ALLOWED[layer]
    ]
    assert not wrong, "imports against the layer rule:\n" + "\n".join(wrong)


@pytest.mark.timeout(30)
def test_relative_imports_stay_inside_their_package():
    # a relative import cannot cross layers, but one climbing out of a subpackage can
    # blur where a module lives: the project spells cross-folder imports absolutely
    climbing = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_bytes())):
                if isinstance(node, ast.ImportFrom) and node.level > 1:
                    climbing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not climbing


@pytest.mark.timeout(60)
def test_a_fresh_interpreter_gets_each_layer_alone():
    # runtime alone does not load the product or the components
    code = (
        "import sys, runtime\n"
        "assert runtime.Supervisor and runtime.GenServer and runtime.Actor\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('actors', 'sandbox')], "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('actors', 'sandbox'))\n"
        "import sandbox\n"
        "assert callable(sandbox.start)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("layer", LAYERS)
def test_each_package_is_typed_and_declares_its_names(layer):
    assert (ROOT / layer / "py.typed").is_file()
    for init in sorted((ROOT / layer).rglob("__init__.py")):
        tree = ast.parse(init.read_bytes())
        assert any(isinstance(n, (ast.Assign, ast.AnnAssign)) and "__all__" in ast.unparse(n)
                   for n in tree.body), f"{init.relative_to(ROOT)} has no __all__"
    package = importlib.import_module(layer)
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert not missing


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fn, params", [
    ("sandbox.start", {"name", "history", "monitor_interval", "http"}),
    ("sandbox.api.Runtime.create_sandbox", {"sandbox_id", "path", "profile", "limits"}),
    ("sandbox.api.Runtime.hot_reload", {"sandbox_id", "modules", "source", "migrate", "timeout"}),
    ("sandbox.api.Sandbox.hot_reload", {"modules", "source", "migrate", "timeout"}),
])
def test_public_entry_points_have_real_keyword_parameters(fn, params):
    module, _, attr = fn.rpartition(".")
    if module.endswith(("Runtime", "Sandbox")):
        module, _, cls = module.rpartition(".")
        obj = getattr(getattr(importlib.import_module(module), cls), attr)
    else:
        obj = getattr(importlib.import_module(module), attr)
    sig = inspect.signature(obj)
    assert not [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD], \
        f"{fn} hides its options behind **kwargs"
    assert params <= set(sig.parameters)
    assert all(p.annotation is not p.empty for n, p in sig.parameters.items() if n != "self")
    assert sig.return_annotation is not sig.empty


#: pykka internals runtime/actor.py uses; pykka's major version is pinned in setup.cfg.
#: An upgrade that renames one fails here, naming it, instead of deep in a test.
PYKKA_PRIVATE = [
    ("pykka._envelope", "Envelope"),
    ("pykka.ThreadingActor", "_start_actor_loop"),
    ("pykka.ThreadingActor", "_stop"),
    ("pykka.ThreadingActor", "_handle_receive"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("owner, name", PYKKA_PRIVATE)
def test_the_pykka_internals_we_use_exist(owner, name):
    if owner == "pykka.ThreadingActor":
        assert hasattr(pykka.ThreadingActor, name), f"pykka {owner}.{name} is gone"
    else:
        assert hasattr(importlib.import_module(owner), name), f"{owner}.{name} is gone"


@pytest.mark.timeout(30)
def test_pykka_instance_attributes_we_use_exist():
    actor = pykka.ThreadingActor()  # not started: no thread to clean up
    for attr in ("actor_inbox", "actor_stopped", "actor_ref"):
        assert hasattr(actor, attr), f"pykka actors no longer have {attr}"
