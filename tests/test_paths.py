"""Unreadable inputs, unwritable outputs and odd paths: exit 2 naming the path and the problem, nothing
written (issue 25, point 9). Permission cases run as a user without root's rights: a child process
that drops to 'nobody' where the tests run as root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clipeval.cli import main
from clipeval.errors import ClipevalError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--db", "{db}", "export", "{run}", "--out", "/proc/x.csv"],
            "output file /proc/x.csv cannot be written: its folder /proc does not accept new files",
        ),
        (["--db", "{db}", "humans", "export", "{run}", "/proc/x.csv"], "output file /proc/x.csv cannot be written"),
        (["--db", "{db}", "report", "{run}", "--html", "/proc/r.html"], "report /proc/r.html cannot be written"),
        (
            ["--db", "{db}", "export", "{run}", "--out", "{tmp}/pipe.csv"],
            "output file {tmp}/pipe.csv is a FIFO (named pipe), not a regular file",
        ),
        (["--db", "{db}", "export", "{run}", "--out", "{tmp}/descriptions.csv/x.csv"], "not a directory"),
        (["--db", "{tmp}/loop1", "runs"], "run store {tmp}/loop1: too many levels of symbolic links"),
        (["--db", "{tmp}/loop1", "import-descriptions", "{tmp}/descriptions.csv"], "too many levels of symbolic links"),
        (
            ["--db", "/proc/new.duckdb", "import-descriptions", "{tmp}/descriptions.csv"],
            "run store /proc/new.duckdb cannot be written: its folder /proc does not accept new files",
        ),
        (["--db", "{db}", "import-descriptions", "{tmp}"], "descriptions file {tmp} is a folder"),
        (
            ["--db", "{db}", "humans", "import", "{run}", "{tmp}/loop1", "--rater", "x"],
            "too many levels of symbolic links",
        ),
    ],
)
def test_unusable_paths_exit_2_naming_them(imported_store, tmp_path, capsys, args, message):
    db, run_id = imported_store
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    os.mkfifo(tmp_path / "pipe.csv")
    before = sorted(p.name for p in tmp_path.iterdir()), db.stat().st_mtime_ns
    fill = {"db": str(db), "run": run_id, "tmp": str(tmp_path)}
    code, err = run_cli([a.format(**fill) for a in args], capsys)
    assert code == 2 and message.format(**fill) in err, err
    assert (sorted(p.name for p in tmp_path.iterdir()), db.stat().st_mtime_ns) == before
    assert not list(Path("/proc").glob(".x.csv*"))


def test_check_path_on_missing_folders(tmp_path):
    """Missing folders are refused unless asked for (the report refuses them; the exports and a new
    store make them)."""
    from clipeval.errors import check_path

    with pytest.raises(ClipevalError, match="folder .*new/deeper does not exist"):
        check_path(tmp_path / "new" / "deeper" / "out.csv", "output file", "write")
    assert (
        check_path(tmp_path / "new" / "deeper" / "s.duckdb", "run store", "write", new_folders=True)
        == tmp_path / "new" / "deeper" / "s.duckdb"
    )
    assert not (tmp_path / "new").exists()  # checked, not made
    with pytest.raises(ClipevalError, match="does not exist or is not a folder"):
        check_path(tmp_path / "missing", "probe folder", "folder")


# Cases for a user without root's rights, run in ONE child process (one import of clipeval).
# Each: (argv, the message the error must contain). {w} is a folder everyone may use.
NOBODY_CASES = [
    (
        ["--db", "{w}/new.duckdb", "import-descriptions", "{w}/unreadable.csv"],
        "descriptions file {w}/unreadable.csv cannot be read: permission denied",
    ),
    (["--db", "{w}/unreadable.duckdb", "runs"], "run store {w}/unreadable.duckdb cannot be read: permission denied"),
    (
        ["--db", "{w}/store.duckdb", "export", "{run}", "--out", "{w}/locked/x.csv"],
        "output file {w}/locked/x.csv cannot be written: its folder {w}/locked does not accept new files (permission denied)",
    ),
    (
        ["--db", "{w}/store.duckdb", "humans", "export", "{run}", "{w}/locked/x.csv"],
        "its folder {w}/locked does not accept",
    ),
    (
        ["--db", "{w}/store.duckdb", "humans", "import", "{run}", "{w}/unreadable.csv", "--rater", "x"],
        "verdicts file {w}/unreadable.csv cannot be read: permission denied",
    ),
    (
        ["--db", "{w}/locked/new.duckdb", "import-descriptions", "{w}/descriptions.csv"],
        "run store {w}/locked/new.duckdb cannot be written: its folder {w}/locked does not accept new files",
    ),
    (
        ["--db", "{w}/store.duckdb", "rm", "{run}", "--yes"],
        "run store {w}/store.duckdb cannot be written: permission denied",
    ),
    (
        ["--db", "{w}/new.duckdb", "import-descriptions", "{w}/descriptions.csv", "--concepts", "{w}/unreadable.txt"],
        "concept file {w}/unreadable.txt cannot be read: permission denied",
    ),
    (
        ["--db", "{w}/new.duckdb", "dissect", "--layers", "classifier", "--probe", "{w}/closed"],
        "probe folder {w}/closed cannot be read: permission denied",
    ),
]

CHILD = r"""
import contextlib, io, json, sys, traceback
from clipeval.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            code, _ = "traceback", traceback.print_exc(file=err)
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def _as_nobody() -> list[str]:
    """The command prefix that runs a program as 'nobody' where the tests run as root (root reads
    everything); setpriv(1) rather than os.setuid in the child, which could not start this venv's
    interpreter here."""
    if os.getuid() != 0:
        return []
    import pwd

    nobody = pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


def test_permission_problems_exit_2_naming_the_path(imported_store):
    db, run_id = imported_store
    w = Path(tempfile.mkdtemp(prefix="clipeval-perm-"))  # outside pytest's root-only folder
    try:
        w.chmod(0o777)
        shutil.copy(db, w / "store.duckdb")
        shutil.copy(db, w / "unreadable.duckdb")
        (w / "descriptions.csv").write_text("layer,unit,description\nl1,0,dog\n")
        (w / "unreadable.csv").write_text("layer,unit,verdict\nl1,0,yes\n")
        (w / "unreadable.txt").write_text("dog\ncat\n")
        (w / "locked").mkdir()
        (w / "closed").mkdir()
        (w / "closed" / "a.png").write_bytes(b"not listed")
        for name in ("unreadable.duckdb", "unreadable.csv", "unreadable.txt"):
            (w / name).chmod(0o000)
        (w / "store.duckdb").chmod(0o444)
        (w / "locked").chmod(0o555)
        (w / "closed").chmod(0o000)
        stamp = (w / "store.duckdb").stat().st_mtime_ns
        argvs = [[a.format(w=w, run=run_id) for a in args] for args, _ in NOBODY_CASES]
        env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(w), CLIPEVAL_LOCK_TIMEOUT="5")
        child = subprocess.run(
            _as_nobody() + [sys.executable, "-c", CHILD, json.dumps(argvs)],
            capture_output=True,
            text=True,
            env=env,
            cwd=w,
            timeout=600,
        )
        assert child.returncode == 0, child.stderr
        results = json.loads(child.stdout.strip().splitlines()[-1])
        for (args, message), (code, err) in zip(NOBODY_CASES, results):
            assert code == 2 and message.format(w=w, run=run_id) in err, (args, code, err)
        assert (w / "store.duckdb").stat().st_mtime_ns == stamp
        assert not list((w / "locked").iterdir())
    finally:
        for p in (w / "locked", w / "closed"):
            p.chmod(0o755)
        shutil.rmtree(w)
