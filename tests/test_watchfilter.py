"""Which files the watcher counts, and which saves changed anything (actors/watchfilter.py)."""

from __future__ import annotations

import os

import pytest

from actors.watchfilter import FileHashes, TooManyFiles, WatchFilter, relative

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("rel", "watched"),
    [
        ("app.py", True),
        ("pkg/mod.py", True),
        ("pkg/sub/deep.py", True),
        ("notes.txt", False),
        ("app.pyc", False),
        ("__pycache__/app.cpython-311.pyc", False),
        ("__pycache__/app.py", False),
        ("pkg/__pycache__/x.py", False),
        (".git/hooks/pre-commit.py", False),
        (".app.py.swp", False),  # vim swap
        (".app.py.swx", False),
        ("app.py.swp", False),
        ("4913", False),  # vim's write probe
        ("app.py~", False),  # backups
        (".#app.py", False),  # emacs lock
        ("#app.py#", False),  # emacs autosave
        (".hidden.py", False),
        ("app.py.tmp", False),
        ("app.py___jb_tmp___", False),
        (".venv/lib/x.py", False),
        ("node_modules/x.py", False),
    ],
)
def test_default_filter(rel, watched):
    f = WatchFilter("/app")
    assert f.matches(os.path.join("/app", rel)) is watched


def test_paths_outside_the_root_never_match():
    f = WatchFilter("/app")
    assert not f.matches("/application/x.py")
    assert not f.matches("/x.py")
    assert not f.matches("/app")


def test_custom_patterns_ignore_and_exclude(tmp_path):
    f = WatchFilter(tmp_path, patterns=["*.py", "*.json"], ignore=["gen*", "*_test.py"],
                    exclude=[tmp_path / "cache"])
    assert f.matches(str(tmp_path / "conf.json"))
    assert not f.matches(str(tmp_path / "generated" / "x.py"))
    assert not f.matches(str(tmp_path / "a_test.py"))
    assert not f.matches(str(tmp_path / "cache" / "x.py"))
    assert f.matches(str(tmp_path / "cachex" / "x.py"))  # a prefix is not a parent


def test_scan_lists_sources_and_prunes(tmp_path):
    for rel in ["app.py", "pkg/__init__.py", "pkg/m.py", "__pycache__/app.py", ".git/x.py",
                "notes.txt", ".app.py.swp", "cache/x.py"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n")
    f = WatchFilter(tmp_path, exclude=[tmp_path / "cache"])
    assert [os.path.relpath(p, tmp_path) for p in f.scan()] == ["app.py", "pkg/__init__.py",
                                                                "pkg/m.py"]
    dirs = sorted(os.path.relpath(d, tmp_path) for d in f.directories())
    assert dirs == [".", "pkg"]


def test_scan_stops_at_the_cap(tmp_path):
    for i in range(5):
        (tmp_path / f"m{i}.py").write_text("")
    assert len(WatchFilter(tmp_path).scan(limit=5)) == 5
    with pytest.raises(TooManyFiles) as info:
        WatchFilter(tmp_path).scan(limit=3)
    assert info.value.limit == 3 and info.value.found == 4
    assert "more than 3 files" in str(info.value)


def test_hashes_drop_unchanged_saves(tmp_path):
    m = tmp_path / "m.py"
    m.write_text("x = 1\n")
    h = FileHashes()
    h.add_baseline([str(m)])
    assert len(h) == 1 and str(m) in h
    m.write_text("x = 1\n")  # same bytes
    assert h.changed([str(m)]) == []
    m.write_text("x = 2\n")
    assert h.changed([str(m), str(m)]) == [str(m)]
    assert h.changed([str(m)]) == []


def test_hashes_new_deleted_and_temporary_files(tmp_path):
    h = FileHashes()
    new = tmp_path / "new.py"
    new.write_text("y = 1\n")
    assert h.changed([str(new)]) == [str(new)]  # never seen: a change
    new.unlink()
    assert h.changed([str(new)]) == [str(new)]  # known and gone: a deletion
    assert h.changed([str(tmp_path / "gone.py")]) == []  # unknown and gone: a temporary file
    assert len(h) == 0


def test_forget_makes_the_next_save_count(tmp_path):
    m = tmp_path / "m.py"
    m.write_text("x = 1\n")
    h = FileHashes()
    h.add_baseline([str(m)])
    h.forget([str(m)])
    assert h.changed([str(m)]) == [str(m)]


def test_under_lists_known_files_of_a_directory(tmp_path):
    h = FileHashes(reader=lambda p: b"")
    h.add_baseline(["/a/pkg/m.py", "/a/pkg/sub/n.py", "/a/pkgx/o.py", "/a/p.py"])
    assert sorted(h.under("/a/pkg")) == ["/a/pkg/m.py", "/a/pkg/sub/n.py"]


def test_unreadable_file_counts_as_changed():
    def read(path):
        raise PermissionError(path)

    h = FileHashes(reader=read)
    assert h.changed(["/a/m.py"]) == ["/a/m.py"]
    assert "/a/m.py" not in h


def test_relative():
    assert relative("/app", ["/app/pkg/m.py", "/other/x.py"]) == ["pkg/m.py", "/other/x.py"]
