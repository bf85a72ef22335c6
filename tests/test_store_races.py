"""Nothing lost and nothing orphaned when writers race `clipeval rm`, empty run ids, re-added label
sources, and odd store files (issue 25, points 1, 2, 3, 6, 10, 12).

A race is made deterministic, without sleeps: `clipeval rm RUN --yes` (the real command, on its own
connection) commits just before the writer's store call that writes the run's rows. The store holds
one writer at a time, so that moment is the whole race window left to `rm`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from clipeval.cli import main
from clipeval.errors import ClipevalError
from clipeval.evaluators import sources
from clipeval.store import RUN_TABLES, Store

ROOT = Path(__file__).resolve().parents[1]


def orphans(store: Store) -> dict[str, int]:
    """Rows whose run (or evaluation, or label source, or source pass) is not in the store."""
    queries = {
        t: f"SELECT count(*) FROM {t} WHERE run_id NOT IN (SELECT run_id FROM runs)"
        for t in (*RUN_TABLES, "evaluations", "human_verdicts", "label_sources", "source_evals")
    }
    for t in ("eval_scores", "eval_neurons"):
        queries[t] = f"SELECT count(*) FROM {t} WHERE eval_id NOT IN (SELECT eval_id FROM evaluations)"
    queries["source_labels"] = (
        "SELECT count(*) FROM source_labels WHERE source_id NOT IN (SELECT source_id FROM label_sources)"
    )
    queries["source_scores"] = (
        "SELECT count(*) FROM source_scores WHERE source_eval_id NOT IN (SELECT source_eval_id FROM source_evals)"
    )
    counts = {t: store.scalar(sql) for t, sql in queries.items()}
    return {t: n for t, n in counts.items() if n}


def rm_just_before(monkeypatch, method: str, db: Path, run_id: str) -> list:
    """`clipeval rm RUN --yes` commits right before the writer's next call of Store.`method`."""
    original = getattr(Store, method)
    done: list = []

    def racing(self, *args, **kwargs):
        if not done:
            done.append(main(["--db", str(db), "rm", run_id, "--yes"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Store, method, racing)
    return done


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli(db: Path, *args) -> int:
    try:
        return main(["--db", str(db), *map(str, args)])
    except SystemExit as e:  # argparse's own refusals
        return e.code


# ------------------------------------------------------------------------- 1. writers racing rm
def test_humans_import_racing_rm_stores_nothing(run_store, tmp_path, monkeypatch, capsys):
    store, run_id, _ = run_store
    csv = tmp_path / "verdicts.csv"
    store.neurons(run_id)[["layer", "unit"]].assign(verdict="yes").to_csv(csv, index=False)
    done = rm_just_before(monkeypatch, "add_human_verdicts", store.path, run_id)
    assert cli(store.path, "humans", "import", run_id, csv, "--rater", "ann") == 2
    assert done == [0]
    assert f"run {run_id} was removed" in capsys.readouterr().err
    assert store.runs().empty and orphans(store) == {}
    assert store.scalar("SELECT count(*) FROM human_verdicts") == 0


@pytest.mark.parametrize("method", ["start_evaluation", "record_evaluation"])
def test_evaluate_racing_rm_stores_nothing(run_store, monkeypatch, method):
    from clipeval.evaluators.run import OFFLINE_EVAL_MODEL, evaluate

    store, run_id, cache = run_store
    done = rm_just_before(monkeypatch, method, store.path, run_id)
    with pytest.raises(ClipevalError, match=f"run {run_id} was removed"):
        evaluate(store, run_id, "es", eval_model=OFFLINE_EVAL_MODEL, cache_dir=cache, force=True, progress=False)
    assert done == [0]
    assert store.runs().empty and orphans(store) == {}
    assert store.scalar("SELECT count(*) FROM evaluations") == 0


def test_import_descriptions_racing_rm_leaves_no_layers_or_neurons(tmp_path, monkeypatch, capsys):
    db = tmp_path / "r.duckdb"
    csv = write(tmp_path / "d.csv", "layer,unit,description\nconv,0,dog\nconv,1,cat\n")
    original = Store.finish_run  # the run id is known only once the run is started: rm it then

    def racing(self, run_id, **kw):
        assert main(["--db", str(db), "rm", run_id, "--yes"]) == 0
        return original(self, run_id, **kw)

    monkeypatch.setattr(Store, "finish_run", racing)
    assert cli(db, "import-descriptions", csv) == 2
    assert "was removed" in capsys.readouterr().err
    store = Store(db, read_only=True)
    assert store.runs().empty and orphans(store) == {}
    assert store.scalar("SELECT count(*) FROM neurons") == 0 and store.scalar("SELECT count(*) FROM layers") == 0


def _milan(tmp_path: Path, store: Store, run_id: str, name: str = "milan.csv", word: str = "stripes") -> Path:
    neurons = store.neurons(run_id).head(12)
    path = tmp_path / name
    neurons.assign(description=[f"{word} {i}" for i in range(len(neurons))])[["layer", "unit", "description"]].to_csv(
        path, index=False
    )
    return path


def test_sources_add_racing_rm_stores_nothing(run_store, tmp_path, monkeypatch, capsys):
    store, run_id, _ = run_store
    milan = _milan(tmp_path, store, run_id)
    done = rm_just_before(monkeypatch, "put_label_source", store.path, run_id)
    assert cli(store.path, "sources", "add", run_id, "--milan", milan, "--no-evaluate") == 2
    assert done == [0] and "was removed" in capsys.readouterr().err
    assert store.runs().empty and orphans(store) == {}
    assert store.scalar("SELECT count(*) FROM source_labels") == 0


@pytest.mark.parametrize("method", ["start_source_evaluation", "record_source_evaluation"])
def test_sources_evaluate_racing_rm_stores_nothing(run_store, tmp_path, monkeypatch, method):
    store, run_id, cache = run_store
    sid = sources.add_source(store, run_id, "milan", str(_milan(tmp_path, store, run_id)))
    done = rm_just_before(monkeypatch, method, store.path, run_id)
    with pytest.raises(ClipevalError, match=f"run {run_id} was removed"):
        sources.evaluate_source(store, run_id, sid, ["es"], cache_dir=cache, progress=False)
    assert done == [0]
    assert store.runs().empty and orphans(store) == {}
    assert store.scalar("SELECT count(*) FROM source_evals") == 0


def test_a_source_removed_while_it_is_judged_gets_no_pass(run_store, tmp_path, monkeypatch):
    store, run_id, cache = run_store
    sid = sources.add_source(store, run_id, "milan", str(_milan(tmp_path, store, run_id)))
    original = Store.record_source_evaluation

    def racing(self, *args, **kwargs):
        assert main(["--db", str(store.path), "sources", "rm", run_id, sid]) == 0
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_source_evaluation", racing)
    with pytest.raises(ClipevalError, match=f"label source {sid} of run {run_id} was removed"):
        sources.evaluate_source(store, run_id, sid, ["es"], cache_dir=cache, progress=False)
    assert orphans(store) == {} and store.scalar("SELECT count(*) FROM source_scores") == 0


def test_a_calibration_on_a_run_removed_meanwhile_is_not_stored(run_store, monkeypatch):
    from clipeval.demo.build import FINAL_LAYER, REFERENCE_RATER, calibrate_stand_in

    store, run_id, _ = run_store
    units = store.neurons(run_id, FINAL_LAYER)
    verdicts = units[["layer", "unit"]].assign(
        rater=REFERENCE_RATER, verdict=np.random.default_rng(0).random(len(units)) < 0.5
    )
    store.add_human_verdicts(run_id, verdicts, source="test")
    done = rm_just_before(monkeypatch, "set_meta", store.path, run_id)
    with pytest.raises(ClipevalError, match=f"run {run_id} was removed"):
        calibrate_stand_in(store, [run_id])
    assert done == [0]
    assert store.scalar("SELECT count(*) FROM meta WHERE key LIKE 'thresholds:%'") == 0
    assert orphans(store) == {}


# ------------------------------------------------------------------------- 2. empty run ids
@pytest.mark.parametrize(
    "command",
    [
        ["rm", "{id}", "--yes"],
        ["report", "{id}"],
        ["export", "{id}", "--out", "{out}"],
        ["humans", "export", "{id}", "{out}"],
        ["evaluate", "{id}"],
        ["sources", "list", "{id}"],
        ["calibrate", "{id}", "--evaluator", "es", "--rater", "x"],
    ],
)
@pytest.mark.parametrize("empty", ["", "  ", "\t"])
def test_an_empty_run_id_selects_no_run(tmp_path, capsys, command, empty):
    db = tmp_path / "r.duckdb"
    assert cli(db, "import-descriptions", write(tmp_path / "d.csv", "layer,unit,description\nconv,0,dog\n")) == 0
    out = tmp_path / "out.csv"
    capsys.readouterr()
    assert cli(db, *[a.format(id=empty, out=out) for a in command]) == 2
    assert "the run id is empty" in capsys.readouterr().err
    assert len(Store(db, read_only=True).runs()) == 1 and not out.exists()


# ------------------------------------------------------------------------- 3. re-adding a label source
def _other_run(tmp_path: Path, store: Store, run_id: str) -> str:
    """A second complete run on the same units, with other labels (imported labels, no images)."""
    neurons = store.neurons(run_id)
    csv = tmp_path / "other.csv"
    neurons.assign(description="other " + neurons["label"])[["layer", "unit", "description"]].to_csv(csv, index=False)
    assert main(["--db", str(store.path), "import-descriptions", str(csv), "--name", "other"]) == 0
    return store.run("other")["run_id"]


def test_re_adding_a_source_keeps_its_judgements_and_other_labels_need_force(run_store, tmp_path, capsys):
    store, run_id, cache = run_store
    other = _other_run(tmp_path, store, run_id)
    assert cli(store.path, "sources", "add", run_id, "--from-run", other, "--name", "x", "--no-evaluate") == 0
    sid = store.label_sources(run_id)["source_id"].iloc[0]
    sources.evaluate_source(store, run_id, sid, ["es", "cp"], cache_dir=cache, progress=False)
    passes = store.scalar("SELECT count(*) FROM source_evals WHERE status = 'complete'")
    scores = store.scalar("SELECT count(*) FROM source_scores")
    assert passes == 2 and scores > 0

    # the same labels again (under the same or another name): the judgements stay
    assert cli(store.path, "sources", "add", run_id, "--from-run", other, "--name", "x", "--no-evaluate") == 0
    assert cli(store.path, "sources", "add", run_id, "--from-run", other, "--no-evaluate") == 0
    assert store.scalar("SELECT count(*) FROM source_evals WHERE status = 'complete'") == passes
    assert store.scalar("SELECT count(*) FROM source_scores") == scores
    assert list(store.label_sources(run_id)["name"]) == ["x"], "added again without a name, it keeps its name"

    # other labels under that name: refused, nothing changed; --force replaces the source
    milan = _milan(tmp_path, store, run_id)
    capsys.readouterr()
    assert cli(store.path, "sources", "add", run_id, "--milan", milan, "--name", "x", "--no-evaluate") == 2
    err = capsys.readouterr().err
    assert "already has a label source named 'x'" in err and "--force" in err and "--name" in err
    assert list(store.label_sources(run_id)["source_id"]) == [sid]
    assert store.scalar("SELECT count(*) FROM source_scores") == scores
    assert cli(store.path, "sources", "add", run_id, "--milan", milan, "--name", "x", "--no-evaluate", "--force") == 0
    now = store.label_sources(run_id)
    assert list(now["name"]) == ["x"] and list(now["kind"]) == ["milan"]
    assert store.scalar("SELECT count(*) FROM source_evals") == 0 and orphans(store) == {}


def test_other_labels_under_a_sources_own_id_need_force(run_store, tmp_path, capsys):
    store, run_id, cache = run_store
    other = _other_run(tmp_path, store, run_id)
    sid = sources.add_source(store, run_id, "run", other, name="x")
    sources.evaluate_source(store, run_id, sid, ["es"], cache_dir=cache, progress=False)
    # the other run's labels changed since (a forced recompute keeps a run's id)
    store.execute("UPDATE neurons SET label = 'changed ' || label WHERE run_id = ? AND unit < 3", [other])
    assert cli(store.path, "sources", "add", run_id, "--from-run", other, "--no-evaluate") == 2
    err = capsys.readouterr().err
    assert "has other labels than these (9 of its labels differ)" in err and "--force" in err
    assert store.scalar("SELECT count(*) FROM source_evals WHERE status = 'complete'") == 1
    assert not store.source_labels(run_id, sid)["label"].str.startswith("changed").any()
    assert cli(store.path, "sources", "add", run_id, "--from-run", other, "--no-evaluate", "--force") == 0
    assert store.source_labels(run_id, sid)["label"].str.startswith("changed").any()
    assert store.scalar("SELECT count(*) FROM source_evals") == 0 and orphans(store) == {}


# ------------------------------------------------------------------------- 6. small ones
def test_a_writer_does_not_add_the_store_to_a_foreign_duckdb_file(tmp_path, capsys):
    db = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE sales (id INTEGER)")
    con.close()
    csv = write(tmp_path / "d.csv", "layer,unit,description\nconv,0,dog\n")
    assert cli(db, "import-descriptions", csv) == 2
    assert "without a run store in it (its tables: sales)" in capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    assert [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()] == ["sales"]
    con.close()


def test_sources_on_a_run_without_evaluations_are_refused(tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    for name, word in (("a", "dog"), ("b", "cat")):
        assert (
            cli(
                db,
                "import-descriptions",
                write(tmp_path / f"{name}.csv", f"layer,unit,description\nconv,0,{word}\n"),
                "--name",
                name,
            )
            == 0
        )
    capsys.readouterr()
    assert cli(db, "sources", "add", "a", "--from-run", "b") == 2  # it could not be judged: nothing stored
    assert "has no complete evaluation" in capsys.readouterr().err
    assert Store(db, read_only=True).scalar("SELECT count(*) FROM label_sources") == 0
    assert cli(db, "sources", "add", "a", "--from-run", "b", "--no-evaluate") == 0
    capsys.readouterr()
    assert cli(db, "sources", "evaluate", "a") == 2
    err = capsys.readouterr().err
    assert "has no complete evaluation (found: none)" in err and "clipeval evaluate" in err


@pytest.mark.parametrize(
    "text, row", [("layer,unit,description\nconv,0,dog\n ,1,cat\n", 3), ("layer,unit,description\n,0,dog\n", 2)]
)
def test_an_empty_layer_name_is_refused(tmp_path, capsys, text, row):
    db = tmp_path / "r.duckdb"
    assert cli(db, "import-descriptions", write(tmp_path / "d.csv", text)) == 2
    assert f"empty layer name in row {row}" in capsys.readouterr().err
    with pytest.raises(ClipevalError, match=f"empty layer name in row {row}"):
        sources.read_milan(tmp_path / "d.csv")


def test_a_refused_command_creates_no_store(tmp_path, probe_dir, capsys):
    db = tmp_path / "new" / "r.duckdb"
    bad = write(tmp_path / "bad.csv", "layer,unit,description\nconv,x,dog\n")
    verdicts = write(tmp_path / "v.csv", "layer,unit,verdict\nconv,0,yes\n")
    for args in (
        ["rm", "abc", "--yes"],
        ["humans", "import", "abc", verdicts, "--rater", "x"],
        ["evaluate", "abc"],
        ["sources", "add", "abc", "--milan", verdicts],
        ["import-descriptions", bad],
        ["dissect", "--layers", "classifier", "--probe", tmp_path / "no-such-folder"],
    ):
        assert cli(db, *args) == 2, args
        assert not db.exists() and not db.parent.exists(), args
    assert "does not exist yet" in capsys.readouterr().err
    assert cli(db, "import-descriptions", write(tmp_path / "d.csv", "layer,unit,description\nconv,0,dog\n")) == 0
    assert db.exists()


# ------------------------------------------------------------------------- 10. edge values
def test_the_largest_unit_fits_and_one_more_is_refused(tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    assert (
        cli(db, "import-descriptions", write(tmp_path / "big.csv", "layer,unit,description\nconv,2147483647,dog\n"))
        == 2
    )
    assert "unit 2147483647 in row 2 is beyond any layer's size (at most 2,147,483,646)" in capsys.readouterr().err
    assert not db.exists()
    assert (
        cli(db, "import-descriptions", write(tmp_path / "max.csv", "layer,unit,description\nconv,2147483646,dog\n"))
        == 0
    )
    store = Store(db, read_only=True)
    assert list(store.runs()["status"]) == ["complete"]
    assert int(store.layers(store.runs()["run_id"].iloc[0])["n_units"].iloc[0]) == 2**31 - 1


def test_calibrate_refuses_a_negative_seed(run_store, capsys):
    store, run_id, _ = run_store
    units = store.neurons(run_id)
    store.add_human_verdicts(
        run_id, units[["layer", "unit"]].assign(rater="x", verdict=units["unit"] % 2 == 0), source="test"
    )
    assert cli(store.path, "calibrate", run_id, "--evaluator", "es", "--rater", "x", "--seed", "1") == 0
    capsys.readouterr()
    assert cli(store.path, "calibrate", run_id, "--evaluator", "es", "--rater", "x", "--seed", "-1") == 2
    assert "--seed: -1 is outside 0..4294967295" in capsys.readouterr().err


# ------------------------------------------------------------------------- 12. a FIFO as the store
@pytest.mark.parametrize("command", [["runs"], ["import-descriptions", "{csv}"]])
def test_a_fifo_as_the_store_is_refused_not_waited_on(tmp_path, command):
    fifo = tmp_path / "store.duckdb"
    os.mkfifo(fifo)
    csv = write(tmp_path / "d.csv", "layer,unit,description\nconv,0,dog\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # the timeout only ends a hang (the bug): the refusal takes the time of an import
    out = subprocess.run(
        [sys.executable, "-m", "clipeval", "--db", str(fifo), *[a.format(csv=csv) for a in command]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    # readers and writers name it alike (a writer checks the path first, then the store)
    assert "is a FIFO (named pipe)" in out.stderr
