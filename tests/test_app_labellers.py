"""The Labellers page, driven headlessly on a real small run with two label sources."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from clipeval.evaluators import sources
from clipeval.store import Store
from tests.test_app import charts, open_page, tables, texts

pytestmark = pytest.mark.usefixtures("fresh_caches")


@pytest.fixture(scope="module")
def judged_source(built_run, tmp_path_factory):
    """A copy of the built run's store with one label source judged ("all dogs" on 40 classifier units):
    (db path, run id, source id), made once for this file's tests (a source evaluation loads the ConSE
    model and scores every evaluator: the slowest step here)."""
    db, run_id, cache = built_run
    root = tmp_path_factory.mktemp("sources")
    shutil.copy(db, root / "runs.duckdb")
    store = Store(root / "runs.duckdb")
    neurons = store.neurons(run_id)
    last = neurons[neurons["layer"] == "classifier"].head(40)
    f = root / "descriptions.csv"
    pd.DataFrame({"layer": last["layer"], "unit": last["unit"], "description": "dog", "similarity": 0.2}).to_csv(
        f, index=False
    )
    sid = sources.add_source(store, run_id, "clip-dissect", str(f), name="all dogs")
    sources.evaluate_source(store, run_id, sid, cache_dir=cache, progress=False)
    store.close()
    return root / "runs.duckdb", run_id, sid


@pytest.fixture
def app_with_sources(judged_source, monkeypatch, tmp_path):
    """A private writable copy of judged_source's store, with the app pointed at it: (Store, run id, source id)."""
    db, run_id, sid = judged_source
    shutil.copy(db, tmp_path / "runs.duckdb")
    store = Store(tmp_path / "runs.duckdb")
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    yield store, run_id, sid
    store.close()


def test_labellers_page_shows_coverage_shares_agreement_and_one_neuron(app_with_sources):
    store, run_id, sid = app_with_sources
    at = open_page("pages/labellers.py")
    text = texts(at)
    assert "Label sources and their coverage" in text and "Share judged correct, per labeller" in text
    assert not at.dataframe  # a few rows each: static tables, every column visible
    cov = tables(at)[0]
    row = cov[cov["source_id"] == sid].iloc[0]
    assert row["on this run's live units"] == "40" and row["labels in source"] == "40" and row["coverage"].endswith("%")
    at.selectbox(key="lab_layer").set_value("classifier").run()
    shares = tables(at)[1]
    # the run by its short label, as the run picker names it, not by its long name
    assert set(shares["labeller"]) == {"all dogs", "this run (concepts imagenet)"}
    assert (shares["units"] == "40").sum() >= 3  # the source on its 40 units, per evaluator
    assert shares["judged correct"].str.fullmatch(r"\d+\.\d%").all()
    agree = tables(at)[2]
    assert agree["units both label"].iloc[0] == "40"
    kappas = [c for c in agree.columns if c.endswith("kappa")]
    assert kappas and agree[kappas].stack().str.fullmatch(r"-?\d\.\d{3}|n/a").all()
    at.selectbox(key="lab_one_layer").set_value("classifier").run()
    at.number_input(key="lab_unit").set_value(int(store.neurons(run_id, "classifier")["unit"].iloc[0])).run()
    one = tables(at)[3]
    assert list(one["label"])[1] == "dog" and "ES" in one.columns and set(one["ES"]) <= {"✓", "✗", ""}
    assert one["CP score"].str.fullmatch(r"\d+").any() and one["CP score"].str.fullmatch(r"\d+|").all()  # ranks
    # the unit's top images: the run stores thumbnails only for the images its units keep, these among them
    assert len(at.image) and not [c.value for c in at.caption if "no thumbnail stored" in c.value]
    assert not at.exception


def test_labellers_page_draws_its_how_to_when_opened(app_with_sources):
    """The how-to's code block loaded a 1.5 MB highlighter into every first view, for an expander that
    starts closed: it is drawn when opened."""
    at = open_page("pages/labellers.py")
    assert "clipeval sources add" not in texts(at) and len(charts(at)) == 1
    at.session_state["how_to_add"] = True
    at.run()
    assert not at.exception and "clipeval sources add" in texts(at)


def test_labellers_page_without_sources_says_how_to_add_one(run_store, monkeypatch):
    store, run_id, _ = run_store
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    at = open_page("pages/labellers.py")
    assert "clipeval sources add" in texts(at)
