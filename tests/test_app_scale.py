"""The app on a store of many runs: it opens without loading every run's scores (only the run a page
shows is held in memory) and its reads are bounded by what a page shows."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clipeval.analysis import runs as every_run
from clipeval.analysis.runview import RunView
from clipeval.store.schema import RUN_TABLES
from clipeval.ui import data

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 90

pytestmark = pytest.mark.usefixtures("fresh_caches")


def copy_run(store, run_id: str, new_id: str) -> None:
    """A second complete run in the store: `run_id`'s rows under `new_id`, made an hour later (newest)."""
    with store.transaction() as cur:
        cur.execute(
            "INSERT INTO runs BY NAME SELECT * REPLACE (? AS run_id, 'copy' AS name, "
            "created_at + INTERVAL 1 HOUR AS created_at) FROM runs WHERE run_id = ?",
            [new_id, run_id],
        )
        for table in (*RUN_TABLES, "human_verdicts"):
            cur.execute(
                f"INSERT INTO {table} BY NAME SELECT * REPLACE (? AS run_id) FROM {table} WHERE run_id = ?",
                [new_id, run_id],
            )
        cur.execute(
            "INSERT INTO eval_scores BY NAME SELECT * REPLACE (eval_id || '-copy' AS eval_id) FROM eval_scores "
            "WHERE eval_id IN (SELECT eval_id FROM evaluations WHERE run_id = ?)",
            [run_id],
        )
        cur.execute(
            "INSERT INTO evaluations BY NAME SELECT * REPLACE (eval_id || '-copy' AS eval_id, ? AS run_id) "
            "FROM evaluations WHERE run_id = ?",
            [new_id, run_id],
        )


@pytest.fixture
def views(monkeypatch):
    """Every RunView built from here on, held weakly: which runs' scores are still in memory."""
    made: list = []
    init = RunView.__init__

    def tracked(self, *a, **kw):
        init(self, *a, **kw)
        made.append(weakref.ref(self))

    monkeypatch.setattr(RunView, "__init__", tracked)

    def alive() -> list[str]:
        gc.collect()
        return sorted(v().run_id for v in made if v() is not None)

    return made, alive


def open_page(page: str, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    return at


def wait_for_warm_up() -> None:
    for t in threading.enumerate():
        if t.name == "clipeval-warm-up":
            t.join(TIMEOUT)


def test_the_app_holds_only_the_scores_of_the_run_it_shows(app_store, views):
    """Warming up and the Runs page's comparison of every run keep one run's scores in memory (the newest,
    which the pages open on), not every run's: at 10 runs x 100k neurons every run's scores would not
    fit the server's memory. The comparison still has every run's row, equal to the uncached one."""
    store, run_id = app_store
    copy_run(store, run_id, "copy0000")
    made, alive = views
    open_page("pages/runs.py")
    wait_for_warm_up()
    assert len(made) >= 2  # both runs' scores were read (for their rows of the comparison) ...
    assert alive() == ["copy0000"]  # ... and only the newest, the sidebar's default run, is still held


def test_pages_that_show_no_scores_load_none(app_store, views, monkeypatch):
    """The sidebar's default thresholds come from the evaluations' models, not from the run's scores: the
    SQL page (and every page's sidebar) reads no RunView."""
    store, run_id = app_store
    monkeypatch.setattr(data, "warm_up", lambda: None)
    _, alive = views
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/sql.py").run()  # straight to it: the home page shows shares, so it reads scores
    assert not at.exception
    assert alive() == []
    want = RunView(store, run_id).defaults
    assert at.number_input(key="tau").value == pytest.approx(want["es"].value)


def test_the_runs_page_comparison_equals_the_uncached_one(app_store, monkeypatch):
    store, run_id = app_store
    copy_run(store, run_id, "copy0000")
    monkeypatch.setattr(data, "warm_up", lambda: None)
    open_page("pages/runs.py")
    for k in (None, 2, 5):
        want = every_run.runs_comparison(store, None, k).set_index("run").sort_index()
        got = data.runs_comparison(None, k).set_index("run").sort_index()
        assert got.equals(want), k


def test_top_k_is_read_in_the_store(app_store):
    store, run_id = app_store
    assert store.top_k(run_id) == int(store.neuron_images(run_id, kinds=("top",))["rank"].max()) == 5
    assert store.top_k("no such run") == 0


def test_a_runs_scores_read_as_numbers_equal_those_read_as_a_frame(app_store):
    """RunView reads each evaluation as numeric arrays (Store.eval_score_arrays), not as a frame of 10M
    rows of strings at 100k neurons: the tables, labels and per-neuron scores are the same."""
    import numpy as np

    from clipeval.evaluators.rules import ScoreTable

    store, run_id = app_store
    view = RunView(store, run_id)
    assert set(view.available) == {"cp", "es", "contrast"}
    for e in view.available:
        state = view.evaluators[e]
        want = ScoreTable(store.eval_scores(state.eval_id), e, view.neurons, state.table.n_concepts)
        got = ScoreTable.from_arrays(
            store.eval_score_arrays(state.eval_id, view.neurons), e, view.neurons, want.n_concepts
        )
        assert got.variants == want.variants
        for v in want.variants:
            assert list(got.labels[v]) == list(want.labels[v])
            assert np.array_equal(got.top[v], want.top[v], equal_nan=True)
            assert np.array_equal(got.top_images[v], want.top_images[v])
            for k in range(1, want.kmax + 1):
                assert np.array_equal(got.neuron_scores(v, k), want.neuron_scores(v, k), equal_nan=True), (e, v, k)
    with pytest.raises(Exception, match="neurons the run does not have"):
        ScoreTable.from_arrays(
            store.eval_score_arrays(view.evaluators["es"].eval_id, view.neurons.iloc[1:]), "es", view.neurons.iloc[1:]
        )
