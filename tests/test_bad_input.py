"""Every bad value gets exit 2 and a message naming it, before any work, with nothing left behind
(issue 11, points 3 and 6). Each case runs the real command line (clipeval.cli.main) on a copy of
the built run's store and checks the store afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipeval.cli import main
from clipeval.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(built_run, tmp_path) -> Path:
    path = tmp_path / "r.duckdb"
    shutil.copy(built_run[0], path)
    return path


def snapshot(db: Path) -> dict:
    s = Store(db, read_only=True)
    return {
        t: s.scalar(f"SELECT count(*) FROM {t}")
        for t in ("runs", "evaluations", "eval_scores", "neurons", "human_verdicts")
    } | {"statuses": sorted(s.runs()["status"]) + sorted(s.evaluations()["status"])}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["dissect", "--layers", "classifier", "--probe", "{probe}", "--batch-size", "0"],
            "--batch-size: 0 is outside 1..65536",
        ),
        (
            ["dissect", "--layers", "classifier", "--probe", "{probe}", "--workers", "-1"],
            "--workers: -1 is outside 0..4096",
        ),
        (
            ["dissect", "--layers", "classifier", "--probe", "{probe}", "--sim-param", "top_k=-5"],
            "top_k must be an integer in [1, 1e+09]",
        ),
        (
            ["dissect", "--layers", "classifier", "--probe", "{probe}", "--sim-param", "top_k=2.5"],
            "top_k must be an integer",
        ),
        (["dissect", "--layers", "classifier", "--probe", "{probe}", "--sim-param", "a=nan"], "a must be a number"),
        (["dissect", "--layers", "classifier", "--probe", "{probe}", "--sim-param", "p_start=inf"], "p_start must be"),
        (["evaluate", "{run}", "--tau", "7"], "es threshold tau=7.0 is outside [-1.0, 1.0]"),
        (["evaluate", "{run}", "--eval-image-size", "0"], "--eval-image-size: 0 is outside 16..4096"),
        (["report", "{run}", "--k", "0"], "--k: 0 is outside 1..1000"),
        (["report", "{run}", "--k", "1000000"], "--k: 1000000 is outside 1..1000"),
        (["report", "{run}", "--k", "6"], "--k 6 is outside 1..5"),
        (["humans", "import", "{run}", "{tmp}/huge_unit.csv", "--rater", "x"], "unit 99999999999999999999 in row 2"),
        (["import-descriptions", "{tmp}/huge_unit_desc.csv"], "unit 99999999999999999999 in row 2"),
        (
            ["import-descriptions", "{tmp}/sim_abc.csv"],
            "similarity must be a finite number (or empty); row 3 has 'abc'",
        ),
        (["import-descriptions", "{tmp}/sim_nan.csv"], "row 2 has 'nan'"),
        (["import-descriptions", "{tmp}/sim_inf.csv"], "row 2 has 'inf'"),
        (["export", "{run}", "--out", "{tmp}"], "is a folder"),
        (["humans", "export", "{run}", "{tmp}"], "is a folder"),
        (
            ["calibrate", "{run}", "--evaluator", "cp", "--rater", "x", "--fit-fraction", "1.5"],
            "--fit-fraction: 1.5 is not between 0 and 1",
        ),
    ],
)
def test_bad_values_exit_2_before_any_work(db, probe_dir, built_run, tmp_path, capsys, args, message):
    write(tmp_path / "huge_unit.csv", "layer,unit,verdict\nclassifier,99999999999999999999,yes\n")
    write(tmp_path / "huge_unit_desc.csv", "layer,unit,description\nclassifier,99999999999999999999,dog\n")
    write(tmp_path / "sim_abc.csv", "layer,unit,description,similarity\nclassifier,0,dog,0.5\nclassifier,1,cat,abc\n")
    write(tmp_path / "sim_nan.csv", "layer,unit,description,similarity\nclassifier,0,dog,nan\n")
    write(tmp_path / "sim_inf.csv", "layer,unit,description,similarity\nclassifier,0,dog,inf\n")
    before = snapshot(db)
    args = [a.format(probe=probe_dir, tmp=tmp_path, run=built_run[1]) for a in args]
    try:
        code = main(["--db", str(db), *args])
    except SystemExit as e:  # argparse refuses a malformed option itself, also with exit 2
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert snapshot(db) == before  # nothing written, no 'failed' row


def test_rm_without_a_terminal_says_to_pass_yes(db, built_run, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["--db", str(db), "rm", built_run[1]]) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert len(Store(db).runs()) == 1


def test_runs_into_a_closed_pipe_is_quiet(db):
    """`clipeval runs | head`: the reader leaves early; no BrokenPipeError traceback."""
    read, write_end = os.pipe()
    os.close(read)
    proc = subprocess.run(
        [sys.executable, "-m", "clipeval", "runs", "--db", str(db)],
        cwd=ROOT,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    os.close(write_end)
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "content, kind",
    [
        (b"layer,unit\nx,1\n", "a text file (CSV?)"),
        (b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00", "a Parquet file"),
    ],
)
def test_db_that_is_a_csv_or_parquet_file_is_refused(tmp_path, probe_dir, capsys, content, kind):
    for name in ("data.csv", "data.parquet", "data.duckdb"):
        path = tmp_path / name
        path.write_bytes(content)
        assert main(["runs", "--db", str(path)]) == 2
        assert f"is not a DuckDB run store ({kind})" in capsys.readouterr().err
        assert path.read_bytes() == content  # untouched


def test_db_named_like_a_csv_is_refused_before_a_run(tmp_path, probe_dir, capsys):
    path = tmp_path / "runs.csv"
    assert main(["--db", str(path), "dissect", "--layers", "classifier", "--probe", str(probe_dir)]) == 2
    assert "a .csv name looks like a mistake" in capsys.readouterr().err
    assert not path.exists()


def test_db_before_or_after_the_subcommand(db, built_run, tmp_path, capsys):
    empty = tmp_path / "other.duckdb"
    Store(empty).runs()  # a new store is made at its first access
    assert main(["runs", "--db", str(db)]) == 0
    assert built_run[1] in capsys.readouterr().out
    assert main(["--db", str(db), "runs"]) == 0
    assert built_run[1] in capsys.readouterr().out
    assert main(["--db", str(db), "runs", "--db", str(empty)]) == 0  # the subcommand's copy wins
    assert "no runs" in capsys.readouterr().out


def test_concept_file_with_a_byte_order_mark(tmp_path):
    from clipeval.datasets.concepts import load_concepts

    path = tmp_path / "concepts.txt"
    path.write_bytes("dog\ncat\nbird\n".encode("utf-8-sig"))
    assert load_concepts(str(path)).concepts == ("dog", "cat", "bird")


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/hosts", "sub/../../outside.png"])
def test_manifest_paths_that_leave_the_probe_folder_are_refused(tmp_path, bad):
    from PIL import Image

    from clipeval.datasets.probe import load_probe
    from clipeval.errors import ClipevalError

    folder = tmp_path / "probe"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "outside.png")
    (folder / "manifest.csv").write_text(f"path,source,license,label\na.png,s,l,x\n{bad},s,l,y\n")
    with pytest.raises(ClipevalError, match="leads outside the probe folder"):
        load_probe([str(folder)])
