"""A full disk: exit 2 saying "no space left on MOUNT (needed about N MB, F MB free)", nothing
half-written, and the store as it was (issue 25, point 8). The disk is a 6 MB tmpfs where the tests
may mount one (root); elsewhere the same cases run with the out-of-space condition faked: the free
space reported as none, and DuckDB's COMMIT raising its own 'No space left on device' error."""

from __future__ import annotations

import shutil
import subprocess

import duckdb
import pytest

import clipeval.store.connection as connection
from clipeval.cli import main
from clipeval.store import Store


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """(a folder on a 6 MB disk, whether it is a real one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield disk, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, mounted, monkeypatch) -> None:
    """Leave no free space on the disk (really, or as the checks and DuckDB's COMMIT see it)."""
    if mounted:
        with open(disk / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 2**16)
                    f.flush()
            except OSError:
                pass
        return
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(6 << 20, 6 << 20, 0))

    class FullDisk:  # DuckDB's connection, failing to COMMIT as it does on a full disk
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *a, **k):
            if sql == "COMMIT":
                self.con.execute("ROLLBACK")
                raise duckdb.TransactionException(
                    'Failed to commit: Could not write file "x.wal": No space left on device'
                )
            return self.con.execute(sql, *a, **k)

        def __getattr__(self, name):
            return getattr(self.con, name)

    real = connection.Connection._connect
    monkeypatch.setattr(
        connection.Connection,
        "_connect",
        lambda self, write: FullDisk(real(self, write)) if write else real(self, write),
    )


def state(db) -> tuple:
    s = Store(db, read_only=True)
    return (
        sorted(map(tuple, s.runs()[["run_id", "status"]].values.tolist())),
        s.scalar("SELECT count(*) FROM neurons"),
        s.scalar("SELECT count(*) FROM human_verdicts"),
    )


def test_a_large_import_onto_a_small_disk_is_refused_before_a_run_starts(
    imported_store, small_disk, tmp_path, monkeypatch, capsys
):
    disk, mounted = small_disk
    db = disk / "s.duckdb"
    shutil.copy(imported_store[0], db)
    big = tmp_path / "big.csv"
    with open(big, "w") as f:
        f.write("layer,unit,description,similarity\n")
        for u in range(120_000):
            f.write(f"layer{u % 7},{u},a label of some length for unit {u},0.{u}\n")
    before = state(db)
    if not mounted:
        fill(disk, mounted, monkeypatch)
    code = main(["--db", str(db), "import-descriptions", str(big)])
    err = capsys.readouterr().err
    size = big.stat().st_size / 2**20
    assert (
        code == 2 and f"no space left on {disk if mounted else '/'}" in err and f"needed about {size:.1f} MB" in err
    ), err
    assert state(db) == before and sorted(p.name for p in disk.iterdir()) == ["s.duckdb"]


@pytest.mark.parametrize(
    "args",
    [
        ["rm", "{run}", "--yes"],
        ["humans", "import", "{run}", "{verdicts}", "--rater", "r"],
        ["export", "{run}", "--out", "{disk}/e.csv"],
        ["humans", "export", "{run}", "{disk}/h.csv"],
    ],
)
def test_writes_onto_a_full_disk_exit_2_and_change_nothing(
    imported_store, small_disk, tmp_path, monkeypatch, capsys, args
):
    disk, mounted = small_disk
    db = disk / "s.duckdb"
    shutil.copy(imported_store[0], db)
    verdicts = tmp_path / "v.csv"
    verdicts.write_text("layer,unit,verdict\nl1,0,yes\nl1,1,no\n")
    before = state(db)
    fill(disk, mounted, monkeypatch)
    argv = [a.format(run=imported_store[1], verdicts=verdicts, disk=disk) for a in args]
    code = main(["--db", str(db)] + argv)
    err = capsys.readouterr().err
    assert code == 2 and "no space left on" in err and "MB free" in err, err
    if mounted:
        (disk / "filler").unlink()
    monkeypatch.undo()
    assert state(db) == before
    assert not [p.name for p in disk.iterdir() if p.name not in ("s.duckdb", "s.duckdb.wal")]


def test_an_import_whose_disk_fills_after_the_check_leaves_no_run(imported_store, tmp_path, monkeypatch, capsys):
    """The free-space check passed, then the disk filled while the labels were written: exit 2 with what
    was needed, and no 'failed' run of 0 neurons left behind."""
    db = tmp_path / "s.duckdb"
    shutil.copy(imported_store[0], db)
    csv = tmp_path / "labels.csv"
    csv.write_text("layer,unit,description\n" + "".join(f"l{u % 3},{u},label {u}\n" for u in range(300)))
    before = state(db)

    def full(self, *a, **k):
        raise duckdb.IOException('Could not write file "s.duckdb.wal": No space left on device')

    monkeypatch.setattr(Store, "finish_run", full)
    code = main(["--db", str(db), "import-descriptions", str(csv)])
    err = capsys.readouterr().err
    assert code == 2 and "no space left on" in err and "needed about" in err, err
    assert state(db) == before
