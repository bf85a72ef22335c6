"""The command line as a user meets it: listings, exports, and clear errors (exit code 2) on bad input."""

import pandas as pd
import pytest

from clipeval.cli import main


def test_layers_lists_shapes(capsys):
    assert main(["layers", "--target", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1" in out and "(24, 56, 56)" in out and "classifier" in out


def test_runs_export_and_rm(built_run, tmp_path, capsys):
    import shutil

    db = tmp_path / "r.duckdb"
    shutil.copy(built_run[0], db)
    run_id = built_run[1]
    assert main(["--db", str(db), "runs"]) == 0
    listing = capsys.readouterr().out
    assert run_id in listing and "complete" in listing and "contrast, cp, es" in listing
    assert main(["--db", str(db), "export", run_id[:6], "--out", str(tmp_path / "d.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "d.csv").columns) == ["layer", "unit", "description", "similarity"]
    assert main(["--db", str(db), "rm", run_id, "--yes"]) == 0
    assert main(["--db", str(db), "runs"]) == 0
    assert "no runs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["dissect", "--layers", "layer4", "--probe", "{probe}"], "unknown layer 'layer4'"),
        (["dissect", "--layers", "blocks.1", "--probe", "{tmp}/nowhere"], "does not exist"),
        (["dissect", "--layers", "blocks.1", "--probe", "{probe}", "--k", "1000"], "k=1000 is more than"),
        (["dissect", "--layers", "blocks.1", "--probe", "{probe}", "--target", "nonet"], "unknown target"),
        (["dissect", "--layers", "blocks.1", "--probe", "{probe}", "--sim-param", "top_k"], "NAME=VALUE"),
        (["evaluate", "nosuchrun"], "no run 'nosuchrun'"),
        (["evaluate", "{run}", "--evaluators", "cp,blip"], "unknown evaluator"),
        (["evaluate", "{run}", "--k", "9"], "k=9 is outside 1..5"),
        (["import-descriptions", "{tmp}/bad.csv"], "lacks column"),
        (["humans", "import", "{run}", "{tmp}/bad.csv"], "lacks column"),
    ],
)
def test_bad_input_gives_a_clear_error(built_run, probe_dir, tmp_path, capsys, args, message):
    import shutil

    db = tmp_path / "r.duckdb"
    shutil.copy(built_run[0], db)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    args = [a.format(probe=probe_dir, tmp=tmp_path, run=built_run[1]) for a in args]
    assert main(["--db", str(db), *args]) == 2
    assert message in capsys.readouterr().err


def test_not_a_database(tmp_path, capsys):
    (tmp_path / "x.duckdb").write_text("hello")
    assert main(["--db", str(tmp_path / "x.duckdb"), "runs"]) == 2
    assert "not a DuckDB run store" in capsys.readouterr().err


def test_report_prints_shares_beside_baselines(built_run, capsys):
    from clipeval.analysis.runview import RunView
    from clipeval.store import Store

    db, run_id, _ = built_run
    assert main(["--db", str(db), "report", run_id[:8], "--tau", "-1"]) == 0
    out = capsys.readouterr().out
    assert "VQA: missing: not run yet" in out and "ES tau=-1" in out
    store = Store(db, read_only=True)
    summary = RunView(store, run_id).layer_summary({"cp": 0.01, "es": -1.0, "contrast": 0.75, "vqa": 0.5})
    store.close()
    for layer in ("blocks.1", "classifier", "overall"):
        line = next(l for l in out.splitlines() if l.startswith(layer))
        cp = summary[(summary["layer"] == layer) & (summary["evaluator"] == "CP")].set_index("variant")["share_correct"]
        assert f"{100 * cp['real']:.1f} / {100 * cp['shuffled']:.1f} / {100 * cp['constant']:.1f}" in line
    assert "warning: ES judges 100.0% of" in out  # at tau=-1 every label passes: flagged


def test_report_rejects_a_threshold_out_of_range(built_run, capsys):
    assert main(["--db", str(built_run[0]), "report", built_run[1], "--p", "1.5"]) == 2
    assert "p=1.5 is outside" in capsys.readouterr().err


def test_evaluate_prints_times_then_the_report(run_store, capsys):
    store, run_id, _ = run_store
    db = store.path
    store.close()  # the CLI opens the file itself
    assert (
        main(
            [
                "--db",
                str(db),
                "evaluate",
                run_id,
                "--evaluators",
                "es",
                "--eval-backend",
                "conse",
                "--eval-arch",
                "efficientnet_lite2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.index("evaluator") < out.index("share judged correct")
    assert any(l.startswith("es ") for l in out.splitlines()) and any(l.startswith("overall") for l in out.splitlines())
