"""The durable store on its own: schema versions, migrations, refusals, and SIGKILL
at any moment of a write (a real writer process killed mid-stream, reopened)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from actors.store import SCHEMA_VERSION, Store, StoredSandbox, StoredVersion, StoreError


def version(sandbox: str, module: str, n: int) -> StoredVersion:
    return StoredVersion(sandbox, module, n, f"s{n}", f"c{n}", float(n), ("dep",), 3, f"/a/{module}.py",
                         False, b"code%d" % n, b"src%d" % n)


def test_a_new_store_has_the_latest_schema(tmp_path):
    st = Store.open(tmp_path / "state.db")
    try:
        assert st.schema_version() == SCHEMA_VERSION
        assert sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        st.close()


def test_an_older_store_is_migrated_keeping_its_data(tmp_path):
    path = tmp_path / "state.db"
    old = Store.open(path, upto=1)  # as the first release wrote it: no journal table
    assert old.schema_version() == 1
    old.put_sandbox(StoredSandbox("s1", {"id": "s1", "path": "/app"}, "/w", 1.0))
    old.record_versions("s1", [version("s1", "m", 1)], keep=10)
    old.close()
    st = Store.open(path)
    try:
        assert st.schema_version() == SCHEMA_VERSION
        assert [s.id for s in st.sandboxes()] == ["s1"]
        assert [(v.module, v.version, v.code) for v in st.versions()] == [("m", 1, b"code1")]
        st.journal_begin("r1", "s1", "reload", {"m": 2})  # the new table works
        assert [j.state for j in st.journal("s1")] == ["pending"]
    finally:
        st.close()


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this version"):
        Store.open(path)


def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot be opened.*state_dir"):
        Store.open(path)


def test_numbers_are_never_reused_and_history_is_bounded(tmp_path):
    st = Store.open(tmp_path / "state.db")
    try:
        for n in range(1, 6):
            st.record_versions("s", [version("s", "m", n)], keep=3)
        st.record_versions("s", [], keep=3, removed=["m"])
        assert st.modules() == [("s", "m", 0, 5)]
        assert [v.version for v in st.versions()] == [3, 4, 5]
        assert [row[2] for row in st.version_log("s")][-1] == "removed"
    finally:
        st.close()


WRITER = textwrap.dedent(
    """
    import os, sys
    from actors.store import Store, StoredSandbox, StoredVersion
    st = Store.open(sys.argv[1])
    n = max([v for _s, _m, _c, v in st.modules()] or [0])
    while True:
        n += 1
        rid = f"r{n}-{os.getpid()}"
        st.journal_begin(rid, "s", "reload", {"m": n})
        st.record_versions("s", [StoredVersion("s", "m", n, "s", "c", 0.0, (), 1, "/m.py",
                                               False, b"x" * 4096, b"y")], keep=5, journal=rid)
        st.put_sandbox(StoredSandbox(f"s{n % 7}", {"n": n}, "/w", 0.0))
        print(n, flush=True)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("writes_before_kill", [1, 7, 40])
def test_sigkill_mid_write_leaves_a_store_the_next_open_reads(tmp_path, writes_before_kill):
    path = tmp_path / "state.db"
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                                text=True, cwd=os.getcwd())
        try:
            for _ in range(writes_before_kill):
                assert proc.stdout is not None and proc.stdout.readline()
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # anywhere in the next transaction
            proc.wait(30)
            assert proc.stdout is not None
            proc.stdout.close()
        st = Store.open(path)
        try:
            assert st._rows("PRAGMA integrity_check") == [("ok",)]
            [(_s, _m, current, last)] = st.modules()
            assert current == last  # current version always has its row ...
            assert current in [v.version for v in st.versions()]
            committed = [j for j in st.journal("s", limit=10_000) if j.state == "committed"]
            assert committed[-1].versions == {"m": current}  # ... and its journal entry
            assert [j.state for j in st.journal("s", limit=10_000)].count("pending") <= 1
            st.journal_abandon_pending()
            assert all(j.state != "pending" for j in st.journal("s", limit=10_000))
        finally:
            st.close()


def test_prune_drops_what_a_create_killed_half_way_left(tmp_path):
    st = Store.open(tmp_path / "state.db")
    try:
        st.put_sandbox(StoredSandbox("kept", {"id": "kept"}, "/w", 0.0))
        for sid in ("kept", "ghost"):
            st.record_versions(sid, [version(sid, "m", 1)], keep=10)
        st.journal_begin("r", "ghost", "reload", {})
        assert st.prune() == ["ghost"]
        assert {s for s, *_ in st.modules()} == {"kept"}
        assert st.journal("ghost") == [] and [v.sandbox for v in st.versions()] == ["kept"]
    finally:
        st.close()
