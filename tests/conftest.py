"""Shared fixtures: one small but real run (EfficientNet-Lite0 with its shipped weights, the small
offline probe, the ConSE backend), built once per test session, and copies of it for tests that write."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from filelock import FileLock

from clipeval.config import ConceptConfig, DissectConfig, ProbeConfig, SimilarityConfig, TargetConfig

SMALL_LAYERS = ("blocks.1", "blocks.4", "classifier")
# every page of the app's navigation, in its order, read from app.py (the one list of them)
APP_PAGES = list(
    dict.fromkeys(re.findall(r'"(pages/\w+\.py)"', (Path(__file__).resolve().parents[1] / "app.py").read_text()))
)


# Test tiers, marked from what a test uses (its fixtures, and the names its code and the same file's helpers
# and fixtures it reaches refer to): `./run test --fast` leaves these out; `./run test` runs everything.
TIER_FIXTURES = {"run": {"built_run", "run_store", "app_store"}, "ray": {"ray_cluster"}, "browser": {"chromium"}}
TIER_NAMES = {
    "ray": {"ray", "ray_session"},
    "subprocess": {"subprocess", "Popen", "check_output"},
    "browser": {"check_report_offline"},
}
SLOW_TIERS = ("run", "ray", "subprocess", "browser")


@functools.lru_cache(maxsize=None)
def _module_names(path: str) -> dict[str, set[str]]:
    """Per top-level function and class of a test file: the names and strings its body refers to."""
    tree = ast.parse(Path(path).read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = set()
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
                elif isinstance(sub, ast.Attribute):
                    names.add(sub.attr)
                elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    names.update(re.findall(r"[A-Za-z_]+", sub.value))
            out[node.name] = names
    return out


def tiers_of(path: str, function: str, fixtures) -> set[str]:
    local = _module_names(path)
    seen, todo, names = set(), [function, *fixtures], set()
    while todo:  # the test, its fixtures, and the same file's helpers they call, transitively
        name = todo.pop()
        if name in seen or name not in local:
            continue
        seen.add(name)
        names |= local[name]
        todo.extend(local[name] & local.keys())
    tiers = {t for t, used in TIER_NAMES.items() if names & used}
    tiers |= {t for t, fx in TIER_FIXTURES.items() if fx & set(fixtures)}
    return tiers


def pytest_collection_modifyitems(config, items):
    """Tiers (see SLOW_TIERS) marked on every test. Tests marked `gpu` need CUDA: skipped, with the reason,
    where torch sees no GPU (CI has none). On a GPU machine: python -m pytest -m gpu"""
    for item in items:
        function = getattr(item, "originalname", item.name)
        tiers = tiers_of(str(item.path), function, tuple(getattr(item, "fixturenames", ())))
        for tier in tiers:
            item.add_marker(getattr(pytest.mark, tier))
        group = xdist_group(item, tiers)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    import torch

    if torch.cuda.is_available():
        return
    from clipeval.compute.device import cuda_unavailable_reason

    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {cuda_unavailable_reason()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def xdist_group(item, tiers) -> str | None:
    """`./run test` spreads tests over 2 pytest-xdist workers (--dist loadgroup), each its own process with
    its own module and session fixtures. Tests that share one expensive fixture go to one worker: every
    Ray test (one cluster, see ray_cluster), and a test file's tests that use a module- or session-scoped
    fixture of that file (built once, not once per worker)."""
    if "ray" in tiers:
        return "ray"
    for defs in getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).values():
        fd = defs[-1]
        module = getattr(fd.func, "__module__", "")
        if fd.scope != "function" and module.rpartition(".")[2].startswith("test_"):
            return module
    return None


def built_once(tmp_path_factory, name: str, build):
    """build(folder) -> a JSON value, built once per test session. Under pytest-xdist each worker has its own
    session fixtures: the first worker to ask builds it, under a file lock in the folder every worker of
    this session shares, and the others read what it wrote (the same paths, so the same probe fingerprint
    and run id on every worker)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    done = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():  # a worker that failed to build it left no file: the next one tries again
            done.write_text(json.dumps(build(Path(tempfile.mkdtemp(prefix=name, dir=shared)))))
    return json.loads(done.read_text())


@pytest.fixture(scope="session")
def probe_dir(tmp_path_factory) -> Path:
    from clipeval.demo.probe import build_demo_probe

    def build(folder):
        return str(build_demo_probe(folder / "small", size="small", progress=False))

    return Path(built_once(tmp_path_factory, "probe", build))


def small_config(probe_dir: Path, concepts: str = "imagenet", **kw) -> DissectConfig:
    return DissectConfig(
        target=TargetConfig("efficientnet_lite0"),
        layers=SMALL_LAYERS,
        probe=ProbeConfig((str(probe_dir),)),
        concepts=ConceptConfig(concepts),
        similarity=SimilarityConfig("soft_wpmi", (("top_k", 20.0),)),
        **kw,
    )


@pytest.fixture(scope="session")
def built_run(tmp_path_factory, probe_dir):
    """(db path, run id, cache dir) of a complete, evaluated (cp, es, contrast) small run."""
    from clipeval.dissect import pipeline
    from clipeval.evaluators.run import OFFLINE_EVAL_MODEL, evaluate
    from clipeval.store import Store

    def build(root):
        db, cache = root / "runs.duckdb", root / "cache"
        store = Store(db)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_id = pipeline.dissect(small_config(probe_dir), store, cache_dir=cache, progress=False)
            evaluate(store, run_id, "cp,es,contrast", eval_model=OFFLINE_EVAL_MODEL, cache_dir=cache, progress=False)
        store.close()
        return str(db), run_id, str(cache)

    db, run_id, cache = built_once(tmp_path_factory, "run", build)
    return Path(db), run_id, Path(cache)


@pytest.fixture
def run_store(built_run, tmp_path):
    """A private writable copy of the built run's store: (Store, run id, cache dir)."""
    from clipeval.store import Store

    db, run_id, cache = built_run
    copy = tmp_path / "runs.duckdb"
    shutil.copy(db, copy)
    store = Store(copy)
    yield store, run_id, cache
    store.close()


@pytest.fixture(scope="session", autouse=True)
def sentence_embeddings_once():
    """The ConSE stand-in embeds the 1,000 ImageNet class names with its sentence encoder (all-mpnet-base-v2)
    every time one is built: each dissect, evaluate and source evaluation, about 10 CPU-seconds on these 2
    cores. The same texts through the same encoder weights, dtype, device and thread count give the same
    rows, so a test session computes each list once (every test still builds its models)."""
    import torch

    from clipeval.models.image_text import SentenceEncoder

    encode = SentenceEncoder.encode
    memo = {}

    @functools.wraps(encode)
    def once(self, texts):
        weights = next(self.model.parameters())
        key = (self.folder, self.batch, weights.dtype, str(weights.device), torch.get_num_threads(), tuple(texts))
        if key not in memo:
            memo[key] = encode(self, texts)
        return memo[key].clone()

    SentenceEncoder.encode = once
    yield
    SentenceEncoder.encode = encode


@pytest.fixture
def fresh_caches():
    """Streamlit's caches live in the process: start an app test without another test's results."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def app_store(run_store, monkeypatch):
    """(Store, run id) with the app pointed at that store through CLIPEVAL_DB."""
    store, run_id, _ = run_store
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    return store, run_id


@pytest.fixture
def chromium() -> str:
    """Chromium's path. The browser tests run wherever the suite runs (`./run test` installs Chromium as root);
    without it they fail, naming the install command, rather than skip unseen."""
    found = shutil.which("chromium") or (Path("/usr/bin/chromium").exists() and "/usr/bin/chromium")
    if not found:
        pytest.fail("Chromium is not installed: apt-get install chromium (./run test does this as root)")
    return found


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole test session (starting one takes about 20 s on 2 busy cores): 2 CPUs,
    no dashboard, its workers importing this checkout's clipeval. Yields its address, which a CLI
    subprocess joins with --ray-address. Shut down (and its processes gone) when the session ends."""
    import logging
    import os

    import ray
    from ray.data import DataContext

    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        _shutdown_ray_and_its_processes(ray)


def _shutdown_ray_and_its_processes(ray) -> None:
    """ray.shutdown(), then make sure every process this session's Ray started is gone: a worker busy in
    a constructor when its raylet stops can outlive it (seen once, 8 minutes later, on a loaded machine)."""
    import psutil

    def is_ray(p):
        try:
            return "ray" in " ".join(p.cmdline())
        except psutil.Error:
            return False

    ours = [p for p in psutil.Process().children(recursive=True) if is_ray(p)]  # raylet, GCS, workers: started here
    ray.shutdown()
    _, alive = psutil.wait_procs([p for p in ours if p.is_running()], timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def imported_store(tmp_path):
    """(db path, run id) of a store holding one run imported from a 3-line descriptions.csv and its
    CSV: made in a second, for tests of the store, the console and the CLI's refusals that need no
    model (the built run takes minutes on a busy machine)."""
    from clipeval.dissect.descriptions import import_descriptions
    from clipeval.store import Store

    csv = tmp_path / "descriptions.csv"
    csv.write_text("layer,unit,description,similarity\nl1,0,dog,0.5\nl1,1,cat,0.4\nl2,0,car,0.3\n")
    db = tmp_path / "small.duckdb"
    run_id = import_descriptions(Store(db), csv, progress=False)
    return db, run_id


def dissect_whole_matrix(store, probe_dir: Path, cache: Path, monkeypatch) -> str:
    """The run of small_config recomputed (--force) the way clipeval did before it streamed: every layer's
    (images x units) activations and P = image embeddings @ text embeddings.T whole in memory, through
    neuron_summaries and similarity.compute, from the arrays already in `cache`. Returns the run id."""
    import numpy as np
    import torch

    from clipeval.dissect import pipeline, similarity
    from clipeval.dissect.activations import neuron_summaries

    def whole_summaries(layer, path, stream, k, n_contrast, seed, scratch):
        return neuron_summaries(layer, np.load(path), k, n_contrast, seed)

    def whole_top(fn, params, streamed, live, images, T, n_keep, device=None):
        P = torch.from_numpy(np.load(images.path)) @ torch.from_numpy(T).T
        scores = similarity.compute(fn, P, torch.from_numpy(np.load(streamed.path)[:, live]), **params)
        return similarity.top_concepts(scores, n_keep)

    monkeypatch.setattr(pipeline, "stream_summaries", whole_summaries)
    monkeypatch.setattr(pipeline, "layer_top_concepts", whole_top)
    monkeypatch.setattr(pipeline, "collect", None)  # everything comes from the cache: no probe pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_id = pipeline.dissect(small_config(probe_dir), store, cache_dir=cache, progress=False, force=True)
    monkeypatch.undo()
    return run_id


def assert_same_results(a, run_a: str, b, run_b: str, atol: float) -> None:
    """Two stores' runs agree: labels, runner-ups, every kind of neuron image, histograms; scores within atol."""
    import numpy as np
    import pandas as pd

    def frame(df, key):
        return df.sort_values(key).reset_index(drop=True)

    na, nb = (frame(s.neurons(r), ["layer", "unit"]) for s, r in ((a, run_a), (b, run_b)))
    pd.testing.assert_frame_equal(na.drop(columns="similarity"), nb.drop(columns="similarity"))
    np.testing.assert_allclose(na["similarity"], nb["similarity"], rtol=0, atol=atol)
    key = ["layer", "unit", "kind", "rank"]
    kinds = ("top", "low", "random", "level")
    ia, ib = (frame(s.neuron_images(r, kinds=kinds), key) for s, r in ((a, run_a), (b, run_b)))
    assert set(ia["kind"]) == set(kinds)
    pd.testing.assert_frame_equal(ia, ib)
    sql = "SELECT layer, unit, bin, lo, hi, count FROM histograms WHERE run_id = ?"
    ha, hb = (frame(s.df(sql, [r]), ["layer", "unit", "bin"]) for s, r in ((a, run_a), (b, run_b)))
    assert len(ha) == len(na) * 24
    pd.testing.assert_frame_equal(ha, hb)
