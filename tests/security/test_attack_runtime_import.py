"""Only scanned code is imported (high, medium): a module the sandbox writes at run
time never runs, however it is looked for; computed import names are scan findings.

Judged from the host: the planted module would write a marker into the workdir
when it runs; the marker stays absent. Under ``low`` (which allows dynamic code)
the same planted module does run: the attack is real.
"""

from __future__ import annotations

import pytest
from conftest import attempt

from runtime.errors import SecurityViolation

pytestmark = pytest.mark.timeout(90)

PLANTED = "import os\nwith open(os.path.join({wd!r}, 'ran.txt'), 'w') as fh:\n    fh.write('ran')\n"


def _plant_and_import(wd: str, how: str) -> str:
    import importlib
    import os
    import sys

    with open(os.path.join(wd, f"evil_{how}.py"), "w") as fh:
        fh.write(PLANTED.format(wd=wd))
    os.makedirs(os.path.join(wd, "tmp"), exist_ok=True)
    os.symlink(wd, os.path.join(wd, "tmp", f"alias_{how}"))
    try:
        if how == "cwd":
            importlib.import_module(f"evil_{how}")
        elif how == "sys_path":
            sys.path.insert(0, wd)
            importlib.import_module(f"evil_{how}")
        elif how == "symlink":
            sys.path.insert(0, os.path.join(wd, "tmp", f"alias_{how}"))
            importlib.import_module(f"evil_{how}")
        return "imported"
    except Exception as exc:  # noqa: BLE001
        return f"failed: {type(exc).__name__}: {exc}"


@pytest.mark.parametrize("how", ["cwd", "sys_path", "symlink"])
@pytest.mark.parametrize("profile", ["high-run", "medium"])
def test_a_file_written_at_run_time_is_not_importable(world, profile, how):
    sb = world.sandbox(profile=profile)
    wd = world.workdir(sb)
    got = attempt(sb, _plant_and_import, str(wd), how)
    assert (wd / f"evil_{how}.py").exists(), got  # planted: the write itself is allowed
    assert not (wd / "ran.txt").exists(), f"{profile}/{how}: unscanned code ran ({got})"
    assert got.startswith("failed"), got


def test_low_does_import_it(world):
    sb = world.sandbox(profile="low")
    wd = world.workdir(sb)
    assert attempt(sb, _plant_and_import, str(wd), "sys_path") == "imported"
    assert (wd / "ran.txt").read_text() == "ran"


COMPUTED = {
    "app.py": """
        from runtime.childspec import ChildSpec

        mod = __import__("o" + "s")

        def children():
            return []
    """,
}


@pytest.mark.parametrize("profile", ["high", "medium"])
def test_computed_import_names_are_refused_by_the_scan(world, profile):
    with pytest.raises(SecurityViolation, match="SBX103"):
        world.sandbox(profile=profile, app=COMPUTED)


def test_low_accepts_computed_import_names(world):
    world.sandbox(profile="low", app=COMPUTED)
