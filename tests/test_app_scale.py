"""The app on a store of many runs: it opens without loading every run's scores (only the run a page
shows is held in memory) and its reads are bounded by what a page shows."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from clipeval.analysis import runs as every_run
from clipeval.analysis.runview import RunView
from clipeval.formats import percent
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


def test_the_sidebar_reads_no_image_scores(app_store, image_score_reads, monkeypatch):
    """The sidebar's default thresholds come from the evaluations' models and its sliders' spans from the
    neuron scores computed in the store: the SQL page (and every page's sidebar) reads no image scores."""
    store, run_id = app_store
    monkeypatch.setattr(data, "warm_up", lambda: None)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/sql.py").run()  # straight to it
    assert not at.exception
    assert image_score_reads == []
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


def odd_neurons(store, run_id: str) -> None:
    """A dead unit, a neuron without scores, NaN and NULL raw scores, and a neuron missing its rank-3 top image:
    the corners where the store's neuron scores could part from the image scores'."""
    neurons = store.neurons(run_id)
    (dead_layer, dead_unit), (bare_layer, bare_unit), (odd_layer, odd_unit), (gap_layer, gap_unit) = (
        tuple(neurons.iloc[i][["layer", "unit"]]) for i in (3, 40, 77, 120)
    )
    with store.transaction() as cur:
        cur.execute(
            "UPDATE neurons SET dead = true WHERE run_id = ? AND layer = ? AND unit = ?",
            [run_id, dead_layer, int(dead_unit)],
        )
        for layer, unit in ((dead_layer, dead_unit), (bare_layer, bare_unit)):
            cur.execute("DELETE FROM eval_scores WHERE layer = ? AND unit = ?", [layer, int(unit)])
        cur.execute(
            "UPDATE eval_scores SET raw = 'nan'::DOUBLE WHERE layer = ? AND unit = ? AND rank = 1",
            [odd_layer, int(odd_unit)],
        )
        cur.execute(
            "UPDATE eval_scores SET raw = NULL WHERE layer = ? AND unit = ? AND rank = 2", [odd_layer, int(odd_unit)]
        )
        cur.execute(
            "DELETE FROM eval_scores WHERE layer = ? AND unit = ? AND kind = 'top' AND rank >= 3",
            [gap_layer, int(gap_unit)],
        )


def test_a_runs_neuron_scores_computed_in_the_store_equal_those_from_its_image_scores(app_store):
    """A whole run's RunView holds each neuron's score per variant and k computed in the store
    (Store.neuron_scores), not the 10M image scores of a 100k-neuron run: the same scores, at every k, as
    rules.ScoreTable computes from the image scores, and so the same shares and spans."""
    from clipeval.evaluators.rules import ScoreTable

    store, run_id = app_store
    odd_neurons(store, run_id)
    view = RunView(store, run_id)
    assert len(view.dead) == 1 and set(view.available) == {"cp", "es", "contrast"} and view.kmax == 5
    for e in view.available:
        state = view.evaluators[e]
        got = state.table
        want = ScoreTable(store.eval_scores(state.eval_id), e, view.neurons, state.table.n_concepts)
        assert got.variants == want.variants and got.kmax == want.kmax
        for v in want.variants:
            for k in range(1, want.kmax + 1):
                assert np.array_equal(got.neuron_scores(v, k), want.neuron_scores(v, k), equal_nan=True), (e, v, k)
            assert np.isnan(got.neuron_scores(v, 5)[40 - 1])  # the neuron without scores (after the dead one)
    with pytest.raises(Exception, match="outside 1..5"):
        view.table("es").neuron_scores("real", 6)


def test_a_run_view_whose_evaluation_was_replaced_says_so(app_store):
    """A held RunView computes a k's neuron scores when first asked: if its evaluation has gone meanwhile,
    it raises EvaluationGone, never 'no neuron has a score'."""
    from clipeval.store import EvaluationGone

    store, run_id = app_store
    view = RunView(store, run_id)
    view.table("es").neuron_scores("real", 5)
    store.delete_evaluation(view.evaluators["es"].eval_id)
    assert view.table("es").neuron_scores("real", 5) is not None  # read before: held
    with pytest.raises(EvaluationGone, match="no longer in the store"):
        view.table("es").neuron_scores("real", 2)


# ------------------------------------------------------------------------------------ the neuron explorer's navigation
def step(order: list[tuple[str, int]], here: tuple[str, int], delta: int) -> tuple[str, int] | None:
    """The rule Store.neuron_step follows, on an order held in memory: the neuron `delta` places from `here`
    (layers in run order, units ascending; a neuron not in it counts from the first), None past either end:
    Previous on the first neuron must not jump to the last layer's last unit."""
    if not order:
        return None
    i = order.index(here) if here in order else 0
    j = i + delta
    return order[j] if 0 <= j < len(order) else None


def test_step_stops_at_both_ends():
    order = [("a", 0), ("a", 1), ("b", 0)]
    assert step(order, ("a", 0), -1) is None
    assert step(order, ("a", 1), 1) == ("b", 0)
    assert step(order, ("b", 0), 1) is None


def test_the_stores_navigation_follows_the_run_order(app_store):
    """Store.neuron_step / neuron_at / layer_units answer the explorer's Previous, Next, Random and unit box
    from a row or a few: the same neighbours as `step` on the run's whole neuron list, stopping at
    both ends, counted from the first neuron for a unit the run lacks."""
    store, run_id = app_store
    neurons = store.neurons(run_id)
    order = list(neurons[["layer", "unit"]].itertuples(index=False, name=None))
    # each layer's ends and their neighbours, and the run's ends
    ends = {i for layer, g in neurons.groupby("layer", sort=False) for i in (g.index[0], g.index[-1])}
    places = sorted({j for i in ends for j in (i - 1, i, i + 1) if 0 <= j < len(order)})
    for i in places:
        for delta in (-3, -1, 0, 1, 2):
            assert store.neuron_step(run_id, *order[i], delta) == step(order, order[i], delta), (i, delta)
    missing = (order[0][0], 10**6)
    for delta in (-1, 0, 1, 5):
        assert store.neuron_step(run_id, *missing, delta) == step(order, missing, delta)
    assert store.neuron_step(run_id, *order[0], -1) is None and store.neuron_step(run_id, *order[-1], 1) is None
    assert [store.neuron_at(run_id, i) for i in (0, len(order) // 2, len(order) - 1)] == [
        order[0],
        order[len(order) // 2],
        order[-1],
    ]
    assert store.neuron_at(run_id, len(order)) is None and store.neuron_at(run_id, -1) is None
    spans = store.layer_units(run_id)
    want = neurons.groupby("layer", sort=False)["unit"].agg(["size", "min", "max"]).reset_index()
    assert spans.to_numpy().tolist() == want.to_numpy().tolist()
    one = store.neurons(run_id, order[5][0], order[5][1])
    assert len(one) == 1 and one.iloc[0].to_dict() == neurons.iloc[5].to_dict()
    assert store.neurons(run_id, order[0][0], 10**6).empty


def test_the_neuron_explorer_navigates_without_the_runs_neuron_list(app_store, monkeypatch):
    """Next, Previous, a layer change and the unit box read a row or a few (Store.neuron_step, layer_units,
    one neuron), not the run's whole neuron list: at 100k neurons that list made each step take 2 s."""
    store, run_id = app_store

    def whole_list(*args, **kwargs):
        raise AssertionError("the neuron explorer read the run's whole neuron list")

    monkeypatch.setattr(data, "neurons", whole_list)
    monkeypatch.setattr(data, "warm_up", lambda: None)
    neurons = store.neurons(run_id)
    at = open_page("pages/neuron.py")
    assert (at.selectbox(key="layer").value, at.number_input(key="unit").value) == tuple(
        neurons.iloc[0][["layer", "unit"]]
    )
    assert at.button(key="prev").disabled
    at.button(key="next").click().run()
    assert not at.exception and at.number_input(key="unit").value == neurons.iloc[1]["unit"]
    last_layer = neurons["layer"].iloc[-1]
    at.selectbox(key="layer").set_value(last_layer).run()
    last = neurons[neurons["layer"] == last_layer]["unit"]
    assert f"Unit ({last.min()}-{last.max()})" == at.number_input(key="unit").label
    at.number_input(key="unit").set_value(int(last.max())).run()
    assert not at.exception and at.button(key="next").disabled
    at.button(key="random").click().run()
    assert not at.exception


# ------------------------------------------------------------------------------------ shares without the image scores
@pytest.fixture
def image_score_reads(monkeypatch):
    """Every read of image scores (Store.eval_scores) from here on: (eval_id, layer, unit)."""
    from clipeval.store import Store

    reads: list = []
    read = Store.eval_scores

    def tracked(self, eval_id, layer=None, unit=None):
        reads.append((eval_id, layer, unit))
        return read(self, eval_id, layer, unit)

    monkeypatch.setattr(Store, "eval_scores", tracked)
    return reads


@pytest.mark.parametrize(
    "page", ["pages/home.py", "pages/layers.py", "pages/thresholds.py", "pages/agreement.py", "pages/annotate.py"]
)
def test_whole_run_pages_read_no_image_scores(app_store, image_score_reads, monkeypatch, page):
    """The pages about a whole run (shares, sweeps, agreement, the unit grid, annotation) use each neuron's
    score computed in the store: a first visit does not wait for a 100k-neuron run's 10M image scores."""
    monkeypatch.setattr(data, "warm_up", lambda: None)
    open_page(page)
    assert image_score_reads == []


def test_the_home_page_shows_the_runs_shares(app_store, monkeypatch):
    store, run_id = app_store
    monkeypatch.setattr(data, "warm_up", lambda: None)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    view = RunView(store, run_id)
    real = view.layer_summary(view.default_thresholds(), 5).query("layer == 'overall' and variant == 'real'")
    shown = {m.label: m.value for m in at.metric}
    for row in real.itertuples():
        assert shown[f"{row.evaluator}: labels judged correct"] == percent(row.share_correct)


# ------------------------------------------------------------------------------------ the neuron explorer's own view
def test_a_one_neuron_view_gives_the_run_views_verdicts(app_store):
    """The neuron explorer reads its neuron's image scores alone (RunView(..., neuron)): the same neuron scores,
    and so verdicts, as the run's RunView, with every rater of the run and this neuron's verdicts."""
    store, run_id = app_store
    neurons = store.neurons(run_id)
    judged = neurons.iloc[[0, 5, 200]][["layer", "unit"]]
    store.add_human_verdicts(run_id, judged.assign(rater="ann", verdict=[True, False, True]), source="app")
    whole = RunView(store, run_id)
    for i in (0, 5, 200, 201, len(neurons) - 1):
        layer, unit = neurons.iloc[i]["layer"], int(neurons.iloc[i]["unit"])
        one = RunView(store, run_id, (layer, unit))
        assert len(one.neurons) == 1 and one.available == whole.available and one.human_labels == whole.human_labels
        assert {r: len(v) for r, v in one.humans.items()} == {"ann": int(i in (0, 5, 200))}
        for e in whole.available:
            for v in whole.table(e).variants:
                for k in (1, 5):
                    want = whole.table(e).neuron_scores(v, k)[i]
                    assert np.array_equal(one.table(e).neuron_scores(v, k), [want], equal_nan=True), (i, e, v, k)


def test_the_neuron_explorer_reads_the_image_scores_of_its_neuron_alone(app_store, image_score_reads, monkeypatch):
    store, run_id = app_store
    monkeypatch.setattr(data, "warm_up", lambda: None)
    at = open_page("pages/neuron.py")
    at.button(key="next").click().run()
    assert not at.exception and any(m.value.startswith("**Verdicts:** CP ") for m in at.markdown)
    neurons = {(layer, unit) for _, layer, unit in image_score_reads}
    assert len(neurons) == 2 and None not in {layer for layer, _ in neurons}  # the first neuron, then Next's
