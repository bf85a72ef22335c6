"""Label sources: other labellers' labels on a run's units, matched by (layer, unit), judged by the
run's own evaluators on the run's stored images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipeval.analysis.runview import default_thresholds
from clipeval.analysis.sources import RUN_SOURCE, LabellerView
from clipeval.cli import main
from clipeval.errors import ClipevalError
from clipeval.evaluators import sources

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "clip-dissect"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"public reference files not at {REFERENCE}")


@needs_reference
def test_reads_the_three_public_formats_in_place():
    nd = sources.read_netdissect(REFERENCE / "NetDissect_results" / "resnet50_imagenet_layer4.csv")
    assert set(nd["layer"]) == {"layer4"} and len(nd) == 2048
    assert nd["unit"].min() == 0 and nd["unit"].max() == 2047  # the file counts from 1
    first = nd.iloc[0]
    assert (first["label"], round(first["score"], 6), first["detail"]) == ("body", 0.042097, "part: body")
    assert not nd["label"].str.contains(r"-[cs]$|_").any()  # Broden suffixes and underscores become words
    milan = sources.read_milan(REFERENCE / "MILAN_results" / "m_base_resnet18_places365.csv")
    assert milan.iloc[0][["layer", "unit", "label"]].tolist() == ["conv1", 0, "Edges of objects"]
    assert milan["score"].isna().all()
    cd = sources.read_clip_dissect(REFERENCE / "CLIP_Dissect_results" / "resnet50_imagenet_broden.csv")
    assert cd.iloc[0][["layer", "unit", "label"]].tolist() == ["conv1", 0, "red"]
    assert cd["score"].iloc[0] == pytest.approx(0.25616455)


def test_netdissect_label_words():
    assert sources.netdissect_label_text("bow_window-outdoor-s") == "bow window outdoor"
    assert sources.netdissect_label_text("green-c") == "green"
    assert sources.netdissect_label_text("plastic-opaque") == "plastic opaque"


def test_layer_map_parsing():
    assert sources.parse_layer_map(["layer4=bn2,layer3=blocks.5", "fc=classifier"]) == {
        "layer4": "bn2",
        "layer3": "blocks.5",
        "fc": "classifier",
    }
    with pytest.raises(ClipevalError, match="SOURCE_LAYER=RUN_LAYER"):
        sources.parse_layer_map(["layer4"])


def _descriptions(path, rows):
    pd.DataFrame(rows, columns=["layer", "unit", "description", "similarity"]).to_csv(path, index=False)
    return path


def test_coverage_is_counted_and_a_source_with_the_runs_labels_scores_like_the_run(run_store, tmp_path):
    store, run_id, cache = run_store
    neurons = store.neurons(run_id)
    neurons = neurons[~neurons["dead"].astype(bool)]  # coverage is of the live units, the units labels are judged on
    layer = neurons["layer"].iloc[0]
    mine = neurons[neurons["layer"] == layer].head(10)
    # the run's own labels on 10 units, plus two rows the run does not have (unit out of range, other layer)
    rows = [(r.layer, r.unit, r.label, 0.5) for r in mine.itertuples()] + [
        (layer, 99999, "dog", 0.1),
        ("layer9", 0, "cat", 0.2),
    ]
    f = _descriptions(tmp_path / "descriptions.csv", rows)
    sid = sources.add_source(store, run_id, "clip-dissect", str(f))
    cov = sources.describe_coverage(store, run_id).set_index("source_id").loc[sid]
    assert (cov["n_labels"], cov["n_matched"], cov["n_units"]) == (12, 10, len(neurons))
    per_layer = store.source_coverage(run_id)
    assert per_layer.set_index("layer").loc[layer, "matched"] == 10
    outcomes = sources.evaluate_source(store, run_id, sid, cache_dir=cache, progress=False)
    assert {o["evaluator"]: o["status"] for o in outcomes} == {
        "cp": "complete",
        "es": "complete",
        "contrast": "complete",
    }
    assert all(
        o["status"] == "cached" for o in sources.evaluate_source(store, run_id, sid, cache_dir=cache, progress=False)
    )
    lv = LabellerView(store, run_id)
    th = default_thresholds()
    for e in ("cp", "es", "contrast"):
        src = lv.verdicts(sid, e, th)
        run = lv.verdicts(RUN_SOURCE, e, th).merge(src[["layer", "unit"]], on=["layer", "unit"])
        # same labels, same images, same evaluator model: the same scores and verdicts as the run's
        np.testing.assert_allclose(src["score"].to_numpy(), run["score"].to_numpy(), rtol=1e-5)
        assert src["verdict"].tolist() == run["verdict"].tolist()
    shares = lv.shares(th)
    row = shares[(shares["source"] == sid) & (shares["evaluator"] == "ES") & (shares["layer"] == "overall")].iloc[0]
    assert row["n"] == 10 and row["correct"] == pytest.approx(row["run real"])
    agree = lv.agreement(th)
    pair = agree[agree["b"] == lv.names[sid]].iloc[0]
    assert pair["n"] == 10 and pair["same label"] == 1.0 and pair["ES agreement"] == 1.0
    one = lv.neuron(layer, int(mine["unit"].iloc[0]), th)
    assert len(one) == 2 and one["label"].nunique() == 1 and one["own score"].iloc[1] == "similarity 0.500"


def test_labels_from_another_network_judged_nearer_to_shuffled(run_store, tmp_path):
    """A source whose labels belong to other units (here: the run's labels rotated by one unit) must
    not pass as often as the run's own: the comparison means something."""
    store, run_id, cache = run_store
    neurons = store.neurons(run_id)
    last = neurons[neurons["layer"] == "classifier"]
    rotated = np.roll(last["label"].to_numpy(), 1)
    f = _descriptions(
        tmp_path / "rotated.csv", [(l, u, lab, 0.0) for l, u, lab in zip(last["layer"], last["unit"], rotated)]
    )
    sid = sources.add_source(store, run_id, "clip-dissect", str(f), name="rotated")
    sources.evaluate_source(store, run_id, sid, ["es"], cache_dir=cache, progress=False)
    tau = {**default_thresholds(), "es": 0.5}
    es = LabellerView(store, run_id).shares(tau)
    es = es[(es["evaluator"] == "ES") & (es["layer"] == "overall")].set_index("source")
    assert es.loc[sid, "correct"] < es.loc[sid, "run real"]


def test_cp_ranks_labels_outside_the_concept_set(run_store):
    """CP for another labeller's words: a label inside the concept set keeps its exact rank; one
    outside it gets 1 + the number of concepts more similar to the image."""
    from clipeval.config import stable_hash
    from clipeval.dissect.pipeline import ArrayCache
    from clipeval.evaluators.base import EvalInputs, image_embeddings, text_embeddings
    from clipeval.evaluators.cp import ConceptProportion
    from clipeval.evaluators.run import OFFLINE_EVAL_MODEL
    from clipeval.models.image_text import load_image_text

    store, run_id, cache_dir = run_store
    run = store.complete_run(run_id)
    concepts = store.concepts(run["concept_hash"])
    images = store.neuron_images(run_id, kinds=("top",)).head(10)
    units = images[["layer", "unit"]].drop_duplicates().reset_index(drop=True)
    word, sentence = units.assign(label=concepts[3]), units.assign(label="a purple sentence about cars")
    paths = store.probe_images(run["probe_fingerprint"]).set_index("image_id")["path"].to_dict()
    model = load_image_text(OFFLINE_EVAL_MODEL)
    key, cache = stable_hash(OFFLINE_EVAL_MODEL, model.info().get("fingerprint", "")), ArrayCache(cache_dir)
    inside = EvalInputs(run_id, run["probe_fingerprint"], int(run["n_images"]), {"real": word}, images, paths, concepts)
    both = EvalInputs(
        run_id,
        run["probe_fingerprint"],
        int(run["n_images"]),
        {"real": word, "shuffled": sentence},
        images,
        paths,
        concepts,
    )
    plain = ConceptProportion(model, key, cache).score(inside, progress=False)
    mixed = ConceptProportion(model, key, cache).score(both, progress=False, outside_labels=True)
    assert mixed[mixed["variant"] == "real"]["raw"].tolist() == plain["raw"].tolist()
    with pytest.raises(ClipevalError, match="not in it"):
        ConceptProportion(model, key, cache).score(both, progress=False)
    out = mixed[mixed["variant"] == "shuffled"]
    E = np.stack(
        [
            image_embeddings(model, key, both, out["image_id"].to_numpy(), cache, progress=False)[int(i)]
            for i in out["image_id"]
        ]
    )
    T = text_embeddings(model, key, concepts, cache)
    own = E @ text_embeddings(model, key, ["a purple sentence about cars"], cache)[0]
    assert out["raw"].tolist() == (1 + ((E @ T.T) > own[:, None]).sum(1)).astype(float).tolist()


def test_a_source_that_matches_nothing_is_refused_before_writing(run_store, tmp_path, capsys):
    store, run_id, _ = run_store
    f = _descriptions(tmp_path / "resnet.csv", [("layer4", 0, "dog", 0.3), ("layer4", 1, "cat", 0.3)])
    with pytest.raises(ClipevalError, match="--layer-map"):
        sources.add_source(store, run_id, "clip-dissect", str(f))
    assert store.label_sources(run_id).empty
    store.close()
    assert main(["--db", str(store.path), "sources", "add", run_id, "--milan", str(tmp_path / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["--db", str(store.path), "sources", "add", run_id, "--clip-dissect", str(f), "--layer-map", "layer4"])
        == 2
    )
    assert main(["--db", str(store.path), "sources", "add", run_id]) == 2


@needs_reference
def test_cli_adds_a_netdissect_file_with_a_layer_map_and_states_coverage(run_store, capsys):
    store, run_id, cache = run_store
    neurons = store.neurons(run_id)
    n_units = int(((neurons["layer"] == "blocks.4") & ~neurons["dead"]).sum())  # live: the units a label is judged on
    store.close()
    f = REFERENCE / "NetDissect_results" / "resnet50_imagenet_layer4.csv"
    assert (
        main(
            [
                "--db",
                str(store.path),
                "sources",
                "add",
                run_id,
                "--netdissect",
                str(f),
                "--layer-map",
                "layer4=blocks.4",
                "--no-evaluate",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{n_units:,} of its 2,048 labels fall on live units of the run" in out
    assert f"blocks.4 {n_units}/{n_units}" in out
    from clipeval.store import Store

    with_store = Store(store.path)
    sid = with_store.label_sources(run_id)["source_id"].iloc[0]
    labels = with_store.source_labels(run_id, sid)
    assert len(labels) == n_units and labels["score"].notna().all()  # the IoU comes along
    with_store.delete_run(run_id)
    assert with_store.df("SELECT count(*) AS n FROM source_labels")["n"].iloc[0] == 0
    with_store.close()


def test_demo_runs_get_each_others_labels_as_sources(run_store, probe_dir):
    """Another CLIP-Dissect configuration on the same units (here: the 3k common words instead of
    the ImageNet class names) is a label source; adding it twice changes nothing."""
    import warnings

    from clipeval.demo.build import add_sibling_sources
    from clipeval.dissect import pipeline
    from tests.conftest import small_config

    store, run_id, cache = run_store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = pipeline.dissect(small_config(probe_dir, "common-3k"), store, cache_dir=cache, progress=False)
    add_sibling_sources(store, [run_id, other], progress=False, cache_dir=cache)
    add_sibling_sources(store, [run_id, other], progress=False, cache_dir=cache)
    mine = store.label_sources(run_id)
    assert list(mine["origin"]) == [other] and mine["n_matched"].iloc[0] == len(store.neurons(run_id))
    assert list(store.label_sources(other)["origin"]) == [run_id]
    lv = LabellerView(store, run_id)
    assert {e for (_, e) in lv.tables} == {"cp", "es", "contrast"}  # the run's evaluators judged its labels
    shares = lv.shares(default_thresholds())
    assert set(shares["kind"]) == {"this run", "CLIP-Dissect run"}


def test_the_demo_shows_the_warnings_of_its_source_evaluations(monkeypatch, tmp_path):
    """Issue 12: the demo build silences no warning (a shared text encoder must be said there too)."""
    import warnings

    from clipeval.demo import build as demo

    class OneSource:
        def label_sources(self, run_id):
            return pd.DataFrame({"origin": []})

    def judge(*args, **kwargs):
        warnings.warn("the evaluator model X shares the labeller's text encoder", stacklevel=2)

    monkeypatch.setattr(demo, "add_source", lambda *a, **k: "src")
    monkeypatch.setattr(demo, "evaluate_source", judge)
    monkeypatch.setattr(demo, "complete_evaluations", lambda store, run_id: pd.DataFrame({"evaluator": ["es"]}))
    with pytest.warns(UserWarning, match="shares the labeller's text encoder"):
        demo.add_sibling_sources(OneSource(), ["a", "b"], progress=False)
