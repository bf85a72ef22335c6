"""Fuzzing the command line with hypothesis (issue 25, "beyond this list"): for any arguments, the
CLI exits 0 or 2, never with a traceback, and a command that exits 2 leaves the store as it was.
The commands that need no model run in this process (clipeval.cli.main) on a fresh copy of a small
imported store per case, with generated CSVs and odd paths (a folder, a symlink loop, a pipe, /proc,
missing files)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clipeval.cli import main
from clipeval.store import Store

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
CELL = st.one_of(
    TEXT,
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "2147483647",
            "2147483648",
            "99999999999999999999",
            "1.5",
            "nan",
            "inf",
            "yes",
            "no",
            "l1",
            "l2",
            "dog",
            '"',
            ",",
            "\n",
        ]
    ),
)
HEADERS = st.sampled_from(
    [
        "layer,unit,description,similarity",
        "layer,unit,description",
        "layer,unit,verdict",
        "layer,unit,verdict,rater",
        "unit,description",
        "",
        "LAYER , Unit,Description",
    ]
)


@st.composite
def csv_text(draw) -> str:
    header = draw(HEADERS)
    n_cols = max(1, header.count(",") + 1)
    rows = draw(st.lists(st.lists(CELL, min_size=n_cols, max_size=n_cols), max_size=5))
    return "\n".join([header] + [",".join(r) for r in rows]) + draw(st.sampled_from(["", "\n"]))


# {placeholders} are filled per case (see fill); everything else is passed as given
RUN = st.sampled_from(["{run}", "{run_prefix}", "{run_name}", "", " ", "nope", "{run}{run}"]) | TEXT
IN_FILE = st.sampled_from(
    ["{csv}", "{good_csv}", "{dir}", "{missing}", "{loop}", "{fifo}", "/proc/self/status", "{db}"]
)
OUT_FILE = st.sampled_from(
    [
        "{out}.csv",
        "{out}.parquet",
        "{out}.txt",
        "{out}",
        "{dir}",
        "/proc/x.csv",
        "{loop}",
        "{fifo}",
        "{new_dir}/deep/x.csv",
        "{good_csv}",
    ]
)
DB = st.sampled_from(["{db}"] * 14 + ["{dir}", "{missing_db}", "{loop}", "{fifo}", "{good_csv}", "/proc/new.duckdb"])
JUNK = st.lists(
    st.sampled_from(
        [
            "--k",
            "0",
            "1",
            "6",
            "1000001",
            "-3",
            "x",
            "--units",
            "--yes",
            "--rater",
            "r",
            "--replace",
            "--force",
            "--name",
            "",
            "--html",
            "{out}.html",
            "--no-evaluate",
            "--tau",
            "nan",
            "--help",
            "--",
            "-",
        ]
    ),
    max_size=3,
)


COMMANDS = ["runs", "rm", "export", "import-descriptions", "report", "humans", "sources", "calibrate"]


@st.composite
def argv(draw, cmd: str) -> list[str]:
    if cmd == "runs":
        args = ["runs"]
    elif cmd == "rm":
        args = ["rm", draw(RUN)] + draw(st.sampled_from([["--yes"], []]))
    elif cmd == "export":
        args = ["export", draw(RUN), "--out", draw(OUT_FILE)]
    elif cmd == "import-descriptions":
        args = ["import-descriptions", draw(IN_FILE)] + draw(
            st.sampled_from(
                [[], ["--name", "n"], ["--concepts", "{csv}"], ["--concepts", "{missing}"], ["--target", "x"]]
            )
        )
    elif cmd == "report":
        args = ["report", draw(RUN)] + draw(
            st.sampled_from(
                [[], ["--html", "{out}.html"], ["--html", "{out}.csv"], ["--html", "/proc/r.html"], ["--k", "1"]]
            )
        )
    elif cmd == "humans":
        action = draw(st.sampled_from(["import", "export"]))
        args = ["humans", action, draw(RUN), draw(IN_FILE if action == "import" else OUT_FILE)] + draw(
            st.sampled_from([[], ["--rater", "r"], ["--rater", ""], ["--replace"]])
        )
    elif cmd == "sources":
        action = draw(st.sampled_from(["add", "list", "evaluate", "rm"]))
        args = ["sources", action, draw(RUN)]
        if action == "add":
            args += draw(
                st.sampled_from(
                    [
                        ["--clip-dissect", "{csv}"],
                        ["--milan", "{csv}"],
                        ["--from-run", "{run}"],
                        ["--netdissect", "{csv}"],
                        ["--clip-dissect", "{good_csv}"],
                        [],
                    ]
                )
            )
            args += ["--no-evaluate"]
        elif action == "rm":
            args += draw(st.sampled_from([[], ["nope"], [""]]))
    else:
        args = [
            "calibrate",
            draw(RUN),
            "--evaluator",
            draw(st.sampled_from(["cp", "es", "vqa", "contrast"])),
            "--rater",
            draw(TEXT),
        ] + draw(st.sampled_from([[], ["--seed", "-1"], ["--fit-fraction", "0.5"]]))
    db_first = draw(st.booleans())
    db = ["--db", draw(DB)]
    return (db + args if db_first else args + db) + draw(JUNK)


def dump(db: Path) -> dict:
    """Every row of every table of the store, for comparison."""
    s = Store(db, read_only=True)
    tables = [r[0] for r in s.rows("SELECT table_name FROM information_schema.tables ORDER BY 1")]
    return {t: s.rows(f"SELECT * FROM {t} ORDER BY ALL") for t in tables}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    from clipeval.dissect.descriptions import import_descriptions

    root = tmp_path_factory.mktemp("fuzz")
    csv = root / "descriptions.csv"
    csv.write_text("layer,unit,description,similarity\nl1,0,dog,0.5\nl1,1,cat,0.4\nl2,0,car,0.3\n")
    db = root / "base.duckdb"
    run_id = import_descriptions(Store(db), csv, name="base run", progress=False)
    return db, csv, run_id, dump(db)


# 19 cases for each of the 8 commands: 152 in all
@pytest.mark.parametrize("command", COMMANDS)
@settings(
    max_examples=19,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), content=csv_text())
def test_cli_exits_0_or_2_and_leaves_the_store_alone_on_2(base_store, command, data, content):
    base_db, good_csv, run_id, before = base_store
    args = data.draw(argv(command))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        db = t / "s.duckdb"
        shutil.copy(base_db, db)
        (t / "f.csv").write_text(content, encoding="utf-8")
        shutil.copy(good_csv, t / "good.csv")  # a command may overwrite it
        (t / "dir").mkdir()
        (t / "loop").symlink_to(t / "loop2")
        (t / "loop2").symlink_to(t / "loop")
        os.mkfifo(t / "fifo")
        fill = {
            "run": run_id,
            "run_prefix": run_id[:4],
            "run_name": "base run",
            "csv": str(t / "f.csv"),
            "good_csv": str(t / "good.csv"),
            "dir": str(t / "dir"),
            "missing": str(t / "missing.csv"),
            "missing_db": str(t / "new" / "m.duckdb"),
            "loop": str(t / "loop"),
            "fifo": str(t / "fifo"),
            "db": str(db),
            "out": str(t / "out"),
            "new_dir": str(t / "new_dir"),
        }
        argv_ = []
        for a in args:
            for key, value in fill.items():
                a = a.replace("{" + key + "}", value)
            argv_.append(a)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv_)
            except SystemExit as e:  # argparse: 2 for a bad option, 0 for --help
                code = e.code
        event(f"exit {code}")  # pytest --hypothesis-show-statistics
        assert code in (0, 2), (argv_, code, err.getvalue()[-2000:])
        assert "Traceback" not in err.getvalue(), (argv_, err.getvalue()[-2000:])
        if code == 2:
            assert dump(db) == before, argv_
            assert err.getvalue().strip(), argv_  # a refusal says why
