"""The sandbox's mount view's helpers (runtime.child.mounts) that need no root: the
mount points a bind makes inside a fresh tmpfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime.child import mounts

pytestmark = pytest.mark.timeout(30)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_mkdirs_makes_what_makedirs_makes(tmp_path: Path) -> None:
    """Each missing directory, parents with the default mode and the last with the
    mode asked for (as ``os.makedirs(path, mode, exist_ok=True)``); an existing path,
    with or without a trailing slash, is no error."""
    mounts._mkdirs(str(tmp_path / "a" / "b" / "c"), 0o700)
    os.makedirs(tmp_path / "m" / "b" / "c", mode=0o700, exist_ok=True)
    for ours, theirs in (("a", "m"), ("a/b", "m/b"), ("a/b/c", "m/b/c")):
        assert _mode(tmp_path / ours) == _mode(tmp_path / theirs)
    assert _mode(tmp_path / "a" / "b" / "c") == 0o700
    mounts._mkdirs(str(tmp_path / "a" / "b" / "c"))
    mounts._mkdirs(str(tmp_path / "a" / "b") + "/")
    mounts._mkdirs("/")


def test_mkdirs_refuses_what_is_in_the_way(tmp_path: Path) -> None:
    """A file where the directory should be fails as with makedirs, at the last
    component or at a parent."""
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError):
        mounts._mkdirs(str(tmp_path / "f"))
    with pytest.raises(NotADirectoryError):
        mounts._mkdirs(str(tmp_path / "f" / "x"))


def test_mkdirs_looks_at_no_missing_parent_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``mkdir`` per component and nothing else for a path that does not exist
    (``os.makedirs`` stats each missing parent first: the cost it saves)."""
    mkdirs = mounts._mkdirs
    calls: list[str] = []
    stats: list[object] = []
    real_mkdir, real_stat = os.mkdir, os.stat

    def mkdir(path: str, mode: int = 0o777) -> None:
        calls.append(path)
        real_mkdir(path, mode)

    def counted_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        stats.append(path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    target = tmp_path / "x" / "y" / "z"
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "stat", counted_stat)
    try:
        mkdirs(str(target))
    finally:
        monkeypatch.undo()
    assert stats == []
    assert calls[-3:] == [str(tmp_path / "x"), str(tmp_path / "x" / "y"), str(target)]
    assert len(calls) == len(target.parts) - 1  # one per component below "/"
    assert target.is_dir()
