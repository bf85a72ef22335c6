"""Human verdicts: CSV import (checked completely before anything is written), conflicts and replace
with history, export round trip, and agreement between imported raters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipeval.analysis import humans, metrics
from clipeval.errors import ClipevalError
from clipeval.store import Store

RUN = "humanrun01"
NEURONS = [("layer1", u) for u in range(4)] + [("layer2", u) for u in range(3)]


@pytest.fixture
def store(tmp_path):
    """A complete run with 7 labelled neurons (no images needed to collect human verdicts)."""
    s = Store(tmp_path / "runs.duckdb")
    nrn = pd.DataFrame(NEURONS, columns=["layer", "unit"]).assign(
        label=lambda d: [f"label{i}" for i in range(len(d))], similarity=0.3
    )
    layers = pd.DataFrame({"layer": ["layer1", "layer2"], "position": [0, 1], "shape": "", "n_units": [4, 3]})
    s.start_run(RUN, "humans", "import", "{}", RUN)
    s.finish_run(
        RUN,
        layers=layers,
        neurons=nrn,
        runner_ups=None,
        neuron_images=None,
        histograms=None,
        meta={"run_id": RUN, "n_images": 0},
    )
    yield s
    s.close()


def write(tmp_path, text: str, name: str = "verdicts.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def n_rows(store) -> int:
    return store.scalar("SELECT count(*) FROM human_verdicts")


def current(store, rater=None) -> dict:
    df = store.human_verdicts(RUN, rater)
    return {(r.rater, r.layer, r.unit): bool(r.verdict) for r in df.itertuples()}


GOOD = """layer,unit,verdict,rater
layer1,0,yes,ann
layer1,1,no,ann
layer1,2, YES ,ann
layer1,3,0,ann
layer2,0,1,ann
layer2,1,True,ann
layer2,2,false,ann
layer1,0,no,bob
"""


def test_import_all_spellings(store, tmp_path):
    assert humans.import_human(store, RUN, write(tmp_path, GOOD)) == 8
    assert current(store) == {
        ("ann", "layer1", 0): True,
        ("ann", "layer1", 1): False,
        ("ann", "layer1", 2): True,
        ("ann", "layer1", 3): False,
        ("ann", "layer2", 0): True,
        ("ann", "layer2", 1): True,
        ("ann", "layer2", 2): False,
        ("bob", "layer1", 0): False,
    }
    assert store.raters(RUN) == ["ann", "bob"]
    assert set(store.human_verdicts(RUN)["source"]) == {"import:verdicts.csv"}


def test_rater_from_the_argument(store, tmp_path):
    p = write(tmp_path, "Layer, Unit ,Verdict\nlayer1,0,yes\n layer2 ,2,no\n")  # header case/space, padded layer
    with pytest.raises(ClipevalError, match="--rater"):
        humans.import_human(store, RUN, p)
    assert n_rows(store) == 0
    assert humans.import_human(store, RUN, p, rater="cara") == 2
    assert current(store) == {("cara", "layer1", 0): True, ("cara", "layer2", 2): False}
    # empty raters in a rater column are filled in from the argument
    p = write(tmp_path, "layer,unit,verdict,rater\nlayer1,1,yes,\nlayer1,2,no,dan\n", "mixed.csv")
    with pytest.raises(ClipevalError, match="--rater"):
        humans.import_human(store, RUN, p)
    humans.import_human(store, RUN, p, rater="eve")
    assert current(store, "eve") == {("eve", "layer1", 1): True}
    assert current(store, "dan") == {("dan", "layer1", 2): False}


BAD_FILES = [
    ("layer,unit,verdict,rater\nlayer1,0,yes,ann\nlayer3,0,no,ann\n", r"1 neuron\(s\) not in run .*layer3"),
    ("layer,unit,verdict,rater\nlayer1,0,yes,ann\nlayer1,9,no,ann\n", r"not in run .*'layer1', 9"),
    ("layer,unit,verdict,rater\nlayer1,0,yes,ann\nlayer1,1,maybe,ann\n", r"row 3 has 'maybe'"),
    ("layer,unit,verdict,rater\nlayer1,0,2,ann\n", r"yes/no/1/0/true/false; row 2 has '2'"),
    ("layer,unit,verdict,rater\nlayer1,0,,ann\n", r"verdict must be"),
    ("layer,unit,verdict,rater\nlayer1,0,yes,ann\nlayer1,0,yes,ann\n", r"'ann' judges neuron \['layer1', 0\] twice"),
    ("layer,unit,verdict,rater\nlayer1,0,yes,ann\nlayer1,0,no,ann\n", r"twice"),
    ("layer,unit,rater\nlayer1,0,ann\n", r"lacks column\(s\) verdict"),
    ("layer,verdict\nlayer1,yes\n", r"lacks column\(s\) unit"),
    ("layer,unit,verdict,rater\n", r"no rows"),
    ("layer,unit,verdict,rater\nlayer1,x,yes,ann\n", r"unit must be a non-negative integer; row 2 has 'x'"),
    ("layer,unit,verdict,rater\nlayer1,-1,yes,ann\n", r"unit must be a non-negative integer"),
    ("layer,unit,verdict,rater\nlayer1,1.5,yes,ann\n", r"unit must be a non-negative integer"),
]
BAD_IDS = [
    "unknown-layer",
    "unknown-unit",
    "verdict-maybe",
    "verdict-2",
    "verdict-empty",
    "duplicate-row",
    "duplicate-conflicting",
    "no-verdict-column",
    "no-unit-column",
    "no-rows",
    "unit-x",
    "unit-negative",
    "unit-float",
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=BAD_IDS)
def test_bad_files_are_refused_and_nothing_is_written(store, tmp_path, text, message):
    humans.import_human(store, RUN, write(tmp_path, "layer,unit,verdict,rater\nlayer2,1,yes,zed\n", "first.csv"))
    before, state = n_rows(store), current(store)
    with pytest.raises(ClipevalError, match=message):
        humans.import_human(store, RUN, write(tmp_path, text))
    assert n_rows(store) == before and current(store) == state


def test_excel_style_file_with_bom_and_crlf(store, tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufefflayer,unit,verdict,rater\r\nlayer1,0,Yes,ann\r\nlayer2,2,No,ann\r\n".encode("utf-8"))
    assert humans.import_human(store, RUN, p) == 2
    assert current(store) == {("ann", "layer1", 0): True, ("ann", "layer2", 2): False}


def test_missing_and_unreadable_files(store, tmp_path):
    with pytest.raises(ClipevalError, match="does not exist"):
        humans.import_human(store, RUN, tmp_path / "nope.csv", rater="x")
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    with pytest.raises(ClipevalError, match="not a readable CSV"):
        humans.import_human(store, RUN, p, rater="x")
    p = tmp_path / "binary.csv"
    p.write_bytes(b"\xff\xfe\x00\x81\x9a" * 50)
    with pytest.raises(ClipevalError):
        humans.import_human(store, RUN, p, rater="x")
    assert n_rows(store) == 0


def test_conflicting_reimport_refused_then_replaced_with_history(store, tmp_path):
    humans.import_human(store, RUN, write(tmp_path, GOOD))
    before, state = n_rows(store), current(store)
    changed = "layer,unit,verdict,rater\nlayer1,0,no,ann\nlayer1,1,no,ann\nlayer2,2,yes,ann\n"
    with pytest.raises(
        ClipevalError,
        match=r"2 verdict\(s\) differ from the rater's stored ones, e\.g\. \['ann', 'layer1', 0\]; pass --replace",
    ):
        humans.import_human(store, RUN, write(tmp_path, changed, "changed.csv"))
    assert n_rows(store) == before and current(store) == state  # the store is unchanged
    # the same verdicts again are not a conflict
    humans.import_human(store, RUN, write(tmp_path, "layer,unit,verdict,rater\nlayer1,1,no,ann\n", "same.csv"))
    assert current(store) == state
    # another rater's verdict on the same neuron is not a conflict either
    humans.import_human(store, RUN, write(tmp_path, "layer,unit,verdict,rater\nlayer1,0,no,fay\n", "fay.csv"))
    assert current(store, "ann")[("ann", "layer1", 0)] is True
    n = n_rows(store)
    assert humans.import_human(store, RUN, write(tmp_path, changed, "changed.csv"), replace=True) == 3
    now = current(store, "ann")
    assert now[("ann", "layer1", 0)] is False and now[("ann", "layer2", 2)] is True
    assert now[("ann", "layer1", 1)] is False and now[("ann", "layer1", 2)] is True  # others untouched
    assert n_rows(store) == n + 3  # history kept: the old answers are still there
    hist = store.df(
        "SELECT verdict, source FROM human_verdicts WHERE rater = 'ann' AND layer = 'layer1' AND unit = 0 "
        "ORDER BY created_at"
    )
    assert hist["verdict"].tolist() == [True, False]
    assert hist["source"].tolist() == ["import:verdicts.csv", "import:changed.csv"]
    assert current(store, "bob") == {("bob", "layer1", 0): False}


def test_import_into_a_run_that_is_not_complete(store, tmp_path):
    store.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", [RUN])
    with pytest.raises(ClipevalError, match="not complete"):
        humans.import_human(store, RUN, write(tmp_path, GOOD))
    assert n_rows(store) == 0
    with pytest.raises(ClipevalError, match="no run"):
        humans.import_human(store, "no-such-run", write(tmp_path, GOOD))


def test_export_round_trip(store, tmp_path):
    humans.import_human(store, RUN, write(tmp_path, GOOD))
    humans.import_human(
        store, RUN, write(tmp_path, "layer,unit,verdict,rater\nlayer1,0,no,ann\n", "fix.csv"), replace=True
    )
    out = humans.export_human(store, RUN, tmp_path / "out" / "humans.csv")
    df = pd.read_csv(out)
    assert list(df.columns[:4]) == ["layer", "unit", "verdict", "rater"]
    assert set(df["verdict"]) == {"yes", "no"} and len(df) == 8  # current verdicts only
    assert df[(df["rater"] == "ann") & (df["layer"] == "layer1") & (df["unit"] == 0)]["verdict"].item() == "no"
    other = Store(tmp_path / "other.duckdb")
    try:
        nrn = store.neurons(RUN)
        other.start_run(RUN, "copy", "import", "{}", RUN)
        other.finish_run(
            RUN,
            layers=store.layers(RUN).assign(position=[0, 1]),
            neurons=nrn,
            runner_ups=None,
            neuron_images=None,
            histograms=None,
            meta={"run_id": RUN},
        )
        humans.import_human(other, RUN, out)
        assert current(other) == current(store)
    finally:
        other.close()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary file left behind


def test_agreement_between_imported_raters(store, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, len(NEURONS)).astype(bool)
    b = a.copy()
    b[[1, 5]] = ~b[[1, 5]]
    rows = [
        f"{l},{u},{'yes' if va else 'no'},A\n{l},{u},{'yes' if vb else 'no'},B" for (l, u), va, vb in zip(NEURONS, a, b)
    ]
    rows.append("layer1,0,yes,C")  # C judged one neuron only
    humans.import_human(store, RUN, write(tmp_path, "layer,unit,verdict,rater\n" + "\n".join(rows) + "\n"))
    from clipeval.analysis.runview import RunView

    view = RunView(store, RUN)
    assert sorted(view.humans) == ["A", "B", "C"]
    raters = view.rater_verdicts({})
    assert sorted(raters) == ["human: A", "human: B", "human: C"]  # no evaluator has run
    K = metrics.kappa_matrix(raters)
    assert K.loc["human: A", "human: B"] == pytest.approx(metrics.cohen_kappa(a, b))
    assert np.isnan(K.loc["human: A", "human: C"])  # one shared neuron: both constant, undefined
    t = metrics.pairwise_table(raters["human: A"], raters["human: B"]).set_index("layer")
    assert t.loc["overall", "agreement"] == pytest.approx(5 / 7) and t.loc["overall", "n"] == 7
    assert t.loc["layer1", "n"] == 4 and t.loc["layer2", "n"] == 3
