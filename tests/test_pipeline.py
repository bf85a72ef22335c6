"""A whole CLIP-Dissect run: results, caching keyed by settings, resume, failures, import/export."""

import dataclasses
import json
import warnings

import pandas as pd
import pytest
from conftest import SMALL_LAYERS, assert_same_results, dissect_whole_matrix, small_config

from clipeval.config import ConceptConfig
from clipeval.dissect import activations as dissect_mod
from clipeval.dissect import pipeline, similarity
from clipeval.dissect.descriptions import export_descriptions, import_descriptions
from clipeval.errors import ClipevalError
from clipeval.store import Store


def test_the_built_run_is_complete_and_sensible(built_run):
    db, run_id, _ = built_run
    s = Store(db, read_only=True)
    try:
        run = s.complete_run(run_id)
        assert set(s.layers(run_id)["layer"]) == set(SMALL_LAYERS)
        neurons = s.neurons(run_id)
        assert len(neurons) == 24 + 112 + 1000
        top = s.neuron_images(run_id, kinds=("top",))
        assert (top.groupby(["layer", "unit"]).size() == 5).all()
        # final layer, ImageNet class names as concepts: the label names the neuron's own class far
        # more often than chance (1 in 998), even with 84 mostly non-ImageNet probe images
        fc = neurons[neurons["layer"] == "classifier"]
        from clipeval.datasets.imagenet import imagenet_classnames

        names = imagenet_classnames()
        hits = sum(label == names[u] for u, label in zip(fc["unit"], fc["label"]))
        assert hits / 1000 > 0.02
        assert set(s.runner_ups(run_id, "classifier", 1)["rank"]) == {1, 2, 3, 4, 5}
        assert "conse" in run["models_json"] and "efficientnet_lite0" in run["models_json"]
        assert {"load", "activations + image embeddings", "similarity", "store"} <= set(json.loads(run["timings_json"]))
        assert len(s.thumbnails(run["probe_fingerprint"], top["image_id"].head(3))) == len(set(top["image_id"].head(3)))
    finally:
        s.close()


def test_the_streamed_run_equals_the_whole_matrix_computation(built_run, run_store, probe_dir, monkeypatch):
    """The built run streamed its probe pass (activations to the cache a batch at a time, each unit's top
    images kept on the way, P rows made only for those) and must store what the whole-matrix computation
    stores from the same arrays: labels, runner-ups, every kind of neuron image, histograms; similarity
    within float32 rounding."""
    db, run_id, _ = built_run
    store, _, cache = run_store
    assert dissect_whole_matrix(store, probe_dir, cache, monkeypatch) == run_id
    built = Store(db, read_only=True)
    try:
        assert_same_results(built, run_id, store, run_id, atol=1e-5)
    finally:
        built.close()


def test_same_settings_reuse_the_run_and_new_settings_reuse_the_caches(run_store, probe_dir, monkeypatch):
    store, run_id, cache = run_store
    cfg = small_config(probe_dir)
    called = []
    monkeypatch.setattr(pipeline, "collect", lambda *a, **k: called.append(1) or (_ for _ in ()).throw(AssertionError))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pipeline.dissect(cfg, store, cache_dir=cache, progress=False) == run_id
        # a new concept set: a new run, but activations and image embeddings come from the cache
        other = pipeline.dissect(
            dataclasses.replace(cfg, concepts=ConceptConfig("common-3k")), store, cache_dir=cache, progress=False
        )
    assert other != run_id and not called
    assert store.complete_run(other)["n_images"] == store.complete_run(run_id)["n_images"]


def test_changed_pooling_recomputes_activations(run_store, probe_dir, monkeypatch):
    store, run_id, cache = run_store
    seen = []
    real = dissect_mod.collect
    monkeypatch.setattr(pipeline, "collect", lambda *a, **k: seen.append(k["layers"]) or real(*a, **k))
    cfg = dataclasses.replace(small_config(probe_dir), pooling="max", layers=("blocks.1",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = pipeline.dissect(cfg, store, cache_dir=cache, progress=False)
    assert new != run_id and seen == [["blocks.1"]]


def test_failure_mid_run_is_recorded_and_resume_completes(run_store, probe_dir, monkeypatch):
    store, run_id, cache = run_store
    cfg = dataclasses.replace(small_config(probe_dir), layers=("blocks.4",))
    monkeypatch.setattr(similarity, "label_units_from_top", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="boom"):
        warnings.simplefilter("ignore")
        pipeline.dissect(cfg, store, cache_dir=cache, progress=False)
    runs = store.runs()
    failed = runs[runs["status"] == "failed"]
    assert len(failed) == 1 and "boom" in failed.iloc[0]["error"]
    assert store.neurons(failed.iloc[0]["run_id"]).empty
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = pipeline.dissect(cfg, store, cache_dir=cache, progress=False)
    assert again == failed.iloc[0]["run_id"] and store.complete_run(again)["status"] == "complete"


def test_bad_inputs_fail_before_anything_is_written(run_store, probe_dir, tmp_path):
    store, _, cache = run_store
    n_runs = len(store.runs())
    cfg = small_config(probe_dir)
    with pytest.raises(ClipevalError, match="k=500 is more than"):
        pipeline.dissect(dataclasses.replace(cfg, k=500), store, cache_dir=cache, progress=False)
    with pytest.raises(ClipevalError, match="unknown layer 'layer4'"):
        pipeline.dissect(dataclasses.replace(cfg, layers=("layer4",)), store, cache_dir=cache, progress=False)
    (tmp_path / "one.txt").write_text("cat\n")
    with pytest.raises(ClipevalError, match="single distinct concept"):
        pipeline.dissect(
            dataclasses.replace(cfg, concepts=ConceptConfig(str(tmp_path / "one.txt"))),
            store,
            cache_dir=cache,
            progress=False,
        )
    assert len(store.runs()) == n_runs


def test_export_and_import_descriptions(run_store, tmp_path, probe_dir):
    store, run_id, _ = run_store
    csv = export_descriptions(store, run_id, tmp_path / "descriptions.csv")
    df = pd.read_csv(csv)
    assert list(df.columns) == ["layer", "unit", "description", "similarity"] and len(df) == 1136
    parquet = pd.read_parquet(export_descriptions(store, run_id, tmp_path / "d.parquet"))
    assert parquet.equals(df) or len(parquet) == len(df)
    with pytest.raises(ClipevalError, match=".csv or .parquet"):
        export_descriptions(store, run_id, tmp_path / "d.json")

    labels_only = import_descriptions(store, csv, name="labels only", progress=False)
    assert len(store.neurons(labels_only)) == 1136
    from clipeval.evaluators.run import evaluate

    with pytest.raises(ClipevalError, match="no top-k images"):
        evaluate(store, labels_only, "es", progress=False)

    small = df[df["layer"] == "blocks.1"]
    small.to_csv(tmp_path / "b1.csv", index=False)
    with_acts = import_descriptions(
        store,
        tmp_path / "b1.csv",
        target="efficientnet_lite0",
        probe=[str(probe_dir)],
        concepts="imagenet",
        progress=False,
    )
    assert len(store.neuron_images(with_acts, kinds=("top",))) == 24 * 5


@pytest.mark.parametrize(
    "text, match",
    [
        ("layer,unit,label\nl,0,cat\n", "lacks column.*description"),
        ("layer,unit,description\nl,zero,cat\n", "non-negative integer"),
        ("layer,unit,description\nl,0,cat\nl,0,dog\n", "appears twice"),
        ("layer,unit,description\n", "no rows"),
    ],
)
def test_import_rejects_bad_csv(run_store, tmp_path, text, match):
    store, _, _ = run_store
    n = len(store.runs())
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ClipevalError, match=match):
        import_descriptions(store, tmp_path / "d.csv", progress=False)
    assert len(store.runs()) == n


def test_import_accepts_the_original_format_without_similarity(run_store, tmp_path):
    store, _, _ = run_store
    (tmp_path / "milan.csv").write_text("layer,unit,description\nconv1,0,Black lettering\nconv1,1,Neon green\n")
    rid = import_descriptions(store, tmp_path / "milan.csv", progress=False)
    assert list(store.neurons(rid)["label"]) == ["Black lettering", "Neon green"]


def test_a_run_stores_thumbnails_of_exactly_the_images_pages_show(run_store, probe_dir, tmp_path):
    """A thumbnail of every probe image would be about 5 GB of blobs at 1M images: a run stores those of
    the images some unit keeps (top, level, low, random), and a later run on the same probe adds the ones
    it shows that the first did not (decoded from their files: that run's pass made no thumbnails)."""
    _, _, cache = run_store
    store = Store(tmp_path / "fresh.duckdb")
    cfg = small_config(probe_dir, k=1, n_contrast=1)
    kinds = ("top", "level", "low", "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = pipeline.dissect(dataclasses.replace(cfg, layers=("blocks.1",)), store, cache_dir=cache, progress=False)
    run = store.complete_run(first)
    every = set(range(run["n_images"]))

    def shown(*runs) -> set[int]:
        return set(pd.concat([store.neuron_images(r, kinds=kinds) for r in runs])["image_id"].astype(int))

    def stored() -> set[int]:
        return set(store.thumbnails(run["probe_fingerprint"], every))

    assert shown(first) < every  # some probe images no page shows
    assert stored() == shown(first)
    assert len(store.probe_images(run["probe_fingerprint"])) == len(every)  # paths of all, for the evaluators
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = pipeline.dissect(
            dataclasses.replace(cfg, layers=("classifier",)), store, cache_dir=cache, progress=False
        )
    assert shown(first, second) > shown(first)
    assert stored() == shown(first, second)
    store.close()
