"""The app's access to the run store: one cached DuckDB connection per store path, a cursor per query,
and cached query results.

Every cached result is keyed by the store path and by `Store.data_version` (a fingerprint of the
runs, evaluations and human verdicts), so a write (an annotation, a deleted run, a new evaluation)
changes the key and nothing stale is served; `after_write` also drops the old entries at once.
Nothing here runs a model: everything answers from stored raw scores.
"""

from __future__ import annotations

import io
import os
import threading

import pandas as pd
import streamlit as st

from clipeval import analysis, intervals
from clipeval.ui import sweeps
from clipeval import store as store_mod
from clipeval.analysis import RunView
from clipeval.errors import ClipevalError
from clipeval.store import Store


def db_path() -> str:
    """The run store the app reads: $CLIPEVAL_DB, else clipeval.store.DEFAULT_DB (read at every rerun,
    so tests and `streamlit run` can point the app elsewhere)."""
    return os.environ.get("CLIPEVAL_DB") or str(store_mod.DEFAULT_DB)


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> Store:
    return Store(path)


def store() -> Store:
    """The shared store connection, or an explanation and a stop when it cannot be opened."""
    path = db_path()
    try:
        return _open_store(path)
    except ClipevalError as e:
        st.error(f"Cannot open the run store `{path}`:\n\n{e}")
        st.stop()


_memo = threading.local()


def new_script_run() -> None:
    """Forget the data versions memoised during the previous script run (app.py calls this first)."""
    _memo.versions = {}


def version(run_id: str | None = None) -> str:
    """Store.data_version, asked once per script run (and again after this session wrote)."""
    versions = getattr(_memo, "versions", None)
    if versions is None:
        versions = _memo.versions = {}
    key = (db_path(), run_id)
    if key not in versions:
        versions[key] = store().data_version(run_id)
    return versions[key]


def runs() -> pd.DataFrame:
    """Every run, newest first (not cached: it is cheap, and a crashed run must show as interrupted)."""
    return store().runs()


def complete_runs() -> pd.DataFrame:
    df = runs()
    return df[df["status"] == "complete"].reset_index(drop=True)


def after_write() -> None:
    """Call after the app wrote to the store (annotation, deletion): drop every cached result."""
    st.cache_data.clear()
    _run_view.clear()
    new_script_run()


@st.cache_data(max_entries=2048, show_spinner=False)
def _query(path: str, method: str, args: tuple, data_version: str):
    """The result of the Store read method `method(*args)`, cached per store path, arguments and data version."""
    return getattr(_open_store(path), method)(*args)


def _read(method: str, run_id: str, *args):
    """A cached read about one run: stale as soon as that run's data version changes."""
    return _query(db_path(), method, (run_id, *args), version(run_id))


# ------------------------------------------------------------------------------------ runs
@st.cache_resource(max_entries=6, show_spinner="Loading the run's scores ...")
def _run_view(path: str, run_id: str, data_version: str) -> RunView:
    return RunView(_open_store(path), run_id)


def run_view(run_id: str) -> RunView:
    """A RunView (every evaluator's raw scores and the human verdicts in memory), rebuilt only when
    the run's evaluations or human verdicts change."""
    store()
    return _run_view(db_path(), run_id, version(run_id))


def latest_evaluations(run_id: str) -> pd.DataFrame:
    return _read("latest_evaluations", run_id)


def layers(run_id: str) -> pd.DataFrame:
    return _read("layers", run_id)


def neurons(run_id: str) -> pd.DataFrame:
    return _read("neurons", run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _top_k(path: str, run_id: str, data_version: str) -> int:
    top = _open_store(path).neuron_images(run_id, kinds=("top",), layer=None, unit=None)
    return int(top["rank"].max()) if len(top) else 0


def top_k(run_id: str) -> int:
    """How many top activating images the run stored per neuron."""
    return _top_k(db_path(), run_id, version(run_id))


# ------------------------------------------------------------------------------------ one neuron
def neuron_images(run_id: str, layer: str, unit: int) -> pd.DataFrame:
    """The neuron's top / level / low / random images with activation, source and licence."""
    return _read("neuron_image_details", run_id, layer, int(unit))


def runner_ups(run_id: str, layer: str, unit: int) -> pd.DataFrame:
    return _read("runner_ups", run_id, layer, int(unit))


def histogram(run_id: str, layer: str, unit: int) -> pd.DataFrame:
    return _read("histogram", run_id, layer, int(unit))


def eval_scores(run_id: str, eval_id: str, layer: str, unit: int) -> pd.DataFrame:
    """One evaluation's raw per-image scores for one neuron (every variant and image kind)."""
    return _query(db_path(), "eval_scores", (eval_id, layer, int(unit)), version(run_id))


def _square(jpeg: bytes) -> bytes:
    """Letterbox a thumbnail onto a white square, so image grids line up whatever the aspect ratio."""
    from PIL import Image

    img = Image.open(io.BytesIO(jpeg))
    if img.width == img.height:
        return jpeg
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(img.convert("RGB"), ((side - img.width) // 2, (side - img.height) // 2))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=90)
    return out.getvalue()


@st.cache_data(max_entries=2048, show_spinner=False)
def _thumbnails(path: str, fingerprint: str, image_ids: tuple[int, ...]) -> dict[int, bytes]:
    return {i: _square(t) for i, t in _open_store(path).thumbnails(fingerprint, image_ids).items()}


def thumbnails(fingerprint: str, image_ids) -> dict[int, bytes]:
    """JPEG thumbnails stored with the probe set (never re-read from the probe folder)."""
    if not fingerprint:
        return {}
    return _thumbnails(db_path(), fingerprint, tuple(sorted({int(i) for i in image_ids})))


# ------------------------------------------------------------------------------------ search, tables
def search_neurons(run_id: str, text: str) -> pd.DataFrame:
    return _read("search_neurons", run_id, text)


def label_counts(run_id: str, layer: str | None = None, limit: int = 25) -> pd.DataFrame:
    return _read("label_counts", run_id, layer, limit)


@st.cache_data(max_entries=16, show_spinner=False)
def _imagenet_accuracy(path: str, run_id: str, data_version: str) -> list[dict]:
    store = _open_store(path)
    layers = store.layers(run_id)
    found = [analysis.imagenet_label_accuracy(store, run_id, l) for l in layers[layers["n_units"] == 1000]["layer"]]
    return [f for f in found if f]


def imagenet_accuracy(run_id: str) -> list[dict]:
    """For each 1,000-unit layer (an ImageNet classifier): label accuracy against the class names."""
    return _imagenet_accuracy(db_path(), run_id, version(run_id))


def runs_comparison(thresholds: dict[str, float], k: int | None = None) -> pd.DataFrame:
    """analysis.runs_comparison at the given thresholds (the paper's Table 2), on the cached RunViews."""
    return analysis.runs_comparison(store(), thresholds, k, view_of=run_view)


@st.cache_data(max_entries=8, show_spinner=False)
def _timings(path: str, data_version: str) -> pd.DataFrame:
    return analysis.timings(_open_store(path))


def timings() -> pd.DataFrame:
    return _timings(db_path(), version())


def evaluations() -> pd.DataFrame:
    return _query(db_path(), "evaluations", (), version())


# ------------------------------------------------------------------------------------ sweeps
@st.cache_data(max_entries=256, show_spinner=False)
def _sweep(path: str, run_id: str, data_version: str, evaluator: str, lo: float, hi: float, k: int,
           reference: str | None) -> pd.DataFrame:
    return sweeps.sweep(_run_view(path, run_id, data_version), evaluator, lo, hi, k, reference)


def sweep(run_id: str, evaluator: str, lo: float, hi: float, k: int, reference: str | None) -> pd.DataFrame:
    """sweeps.sweep, cached: it does not depend on the current threshold, so a slider step reuses it."""
    run_view(run_id)
    return _sweep(db_path(), run_id, version(run_id), evaluator, float(lo), float(hi), int(k), reference)


# ------------------------------------------------------------------------------------ agreement with intervals
def _raters(view: RunView, thresholds: dict[str, float], k: int) -> dict[str, pd.DataFrame]:
    return view.rater_verdicts(thresholds, k) if view.available else \
        {view.rater_label(r): v for r, v in view.humans.items()}


@st.cache_data(max_entries=64, show_spinner=False)
def _kappa_intervals(path: str, run_id: str, data_version: str, thresholds: tuple, k: int) -> dict:
    return intervals.kappa_matrix(_raters(_run_view(path, run_id, data_version), dict(thresholds), k))


def kappa_intervals(run_id: str, thresholds: dict[str, float], k: int) -> dict:
    """intervals.kappa_matrix over every evaluator and reference rater (cached: the bootstrap takes a while)."""
    run_view(run_id)
    return _kappa_intervals(db_path(), run_id, version(run_id), tuple(sorted(thresholds.items())), int(k))


@st.cache_data(max_entries=64, show_spinner=False)
def _pairwise_intervals(path: str, run_id: str, data_version: str, thresholds: tuple, k: int, reference: str) -> dict:
    raters = _raters(_run_view(path, run_id, data_version), dict(thresholds), k)
    return {o: intervals.pairwise_table(raters[o], raters[reference]) for o in raters if o != reference}


def pairwise_intervals(run_id: str, thresholds: dict[str, float], k: int, reference: str) -> dict[str, pd.DataFrame]:
    """{rater: intervals.pairwise_table(rater, reference)} for every other rater (cached)."""
    run_view(run_id)
    return _pairwise_intervals(db_path(), run_id, version(run_id), tuple(sorted(thresholds.items())), int(k),
                               reference)


# ------------------------------------------------------------------------------------ warming up
_warm_started: set[str] = set()
_warm_lock = threading.Lock()


def warm_up() -> None:
    """Once per store and server process, load every complete run's scores and the Runs page's tables in
    a background thread, so a collaborator's first page is not the one that waits for them (the first
    visit of Runs loads every run). Pages that ask meanwhile share the same cache entries."""
    path = db_path()
    with _warm_lock:
        if path in _warm_started:
            return
        _warm_started.add(path)

    def work() -> None:
        try:
            s = _open_store(path)
            runs_ = s.runs()
            for run_id in runs_[runs_["status"] == "complete"]["run_id"]:
                v = s.data_version(run_id)
                _run_view(path, run_id, v)
                _top_k(path, run_id, v)
                _imagenet_accuracy(path, run_id, v)
            _timings(path, s.data_version())
            analysis.imagenet_synonyms()
        except Exception:  # noqa: BLE001 - warming is an optimisation; the page shows any real error itself
            pass

    threading.Thread(target=work, name="clipeval-warm-up", daemon=True).start()
