"""How the suite itself runs: the README's command, and how it spreads over workers."""

from __future__ import annotations

import re
from pathlib import Path

from suite_scheduling import shared_fixture_files, xdist_scope

ROOT = Path(__file__).resolve().parent.parent


def test_readme_and_ci_run_the_same_parallel_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    pattern = r'pip install -q -e "\.\[test\]" && (\.venv/bin/python -m pytest[^\n`]*)'
    (in_readme,) = re.findall(pattern, readme)
    (in_ci,) = re.findall(pattern, ci)
    assert in_readme == in_ci
    assert re.search(r" -n \d+", in_ci), "the suite runs on pytest-xdist workers"


def test_a_file_with_a_module_fixture_runs_whole_on_one_worker():
    grouped = shared_fixture_files(ROOT)
    # test_cluster's tests build on one Ray cluster, in order; test_layout's share nothing
    assert "tests/test_cluster.py" in grouped and "tests/test_layout.py" not in grouped
    assert xdist_scope("tests/test_cluster.py::test_a[x]", grouped) == "tests/test_cluster.py"
    assert xdist_scope("tests/test_cluster.py::test_b", grouped) == "tests/test_cluster.py"
    one = "tests/test_layout.py::test_imports_go_one_way[runtime]"
    assert xdist_scope(one, grouped) == one


def test_the_scope_scan_sees_every_spelling_of_a_shared_fixture(tmp_path):
    tests = tmp_path / "tests"
    (tests / "sub").mkdir(parents=True)
    (tests / "test_a.py").write_text('@pytest.fixture(scope="module")\ndef f(): ...\n')
    (tests / "sub" / "test_b.py").write_text("@pytest.fixture(scope = 'class')\ndef f(): ...\n")
    (tests / "test_c.py").write_text('@pytest.fixture(scope="session")\ndef f(): ...\n')
    (tests / "test_d.py").write_text("@pytest.fixture\ndef f(): ...\n")
    assert shared_fixture_files(tmp_path) == {"tests/test_a.py", "tests/sub/test_b.py"}
