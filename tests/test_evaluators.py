"""Evaluators on runs with KNOWN embeddings: a fake image-text model whose image embeddings come from
a lookup table keyed on the image's colour and whose text embeddings come from a table keyed on the
text, over runs built by hand in a store. Also the BLIP-2 path on a tiny random BLIP-2, the label
baselines, the any-of-k rule, and every bad input the evaluation step must refuse cleanly."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipeval.config import ImageTextConfig
from clipeval.dissect.pipeline import ArrayCache
from clipeval.errors import ClipevalError
from clipeval.evaluators import cp as cp_mod
from clipeval.evaluators import run as run_mod
from clipeval.evaluators.base import EvalInputs, label_variants
from clipeval.evaluators.cp import ConceptProportion
from clipeval.evaluators.es import EmbeddingSimilarity
from clipeval.evaluators.rules import RULES, ScoreTable, cp_cutoff, image_matches
from clipeval.models.vqa import format_prompt
from clipeval.store import Store

FAKE_CFG = ImageTextConfig("open_clip", "fake-colour-model", "lookup-table")


# ============================================================================ a model with known embeddings
class FakeImageText:
    """Image embedding = image_table[the image's (uniform) RGB colour]; text embedding = text_table[text].
    Records every image colour and text it encodes (in this process: encode_* run here)."""

    is_clip = False

    def __init__(
        self, image_table: dict[tuple, np.ndarray], text_table: dict[str, np.ndarray], fingerprint: str = "fake-1"
    ):
        self.image_table, self.text_table, self.fingerprint = image_table, text_table, fingerprint
        self.encoded_images: list[tuple] = []
        self.encoded_texts: list[str] = []
        self.text_calls = 0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0))

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        keys = [tuple(int(round(v)) for v in row.tolist()) for row in batch]
        self.encoded_images.extend(keys)
        return F.normalize(torch.tensor(np.stack([self.image_table[k] for k in keys]), dtype=torch.float32), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.text_calls += 1
        self.encoded_texts.extend(texts)
        return F.normalize(torch.tensor(np.stack([self.text_table[t] for t in texts]), dtype=torch.float32), dim=-1)

    def info(self) -> dict:
        return {"backend": "fake", "description": "lookup tables", "is_clip": False, "fingerprint": self.fingerprint}


def unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def write_images(folder: Path, colours: list[tuple]) -> dict[int, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, rgb in enumerate(colours):
        p = folder / f"img{i:03d}.png"
        Image.new("RGB", (12, 10), rgb).save(p)
        paths[i] = str(p)
    return paths


# ============================================================================ a hand-made run in a store
def build_run(
    store: Store,
    folder: Path,
    colours: list[tuple],
    neurons: list[dict],
    concepts: list[str] | None,
    run_id: str = "handmade01",
    image_labels: list[str] | None = None,
) -> str:
    """A complete run whose neurons have the given labels and top/low/random image ids (into `colours`)."""
    paths = write_images(folder, colours)
    fingerprint = f"probe-{run_id}"
    store.put_probe(
        fingerprint,
        pd.DataFrame(
            {
                "image_id": list(paths),
                "path": list(paths.values()),
                "source": "test",
                "license": "",
                "label": image_labels or [""] * len(paths),
                "thumbnail": [b""] * len(paths),
            }
        ),
    )
    concept_hash = None
    if concepts is not None:
        concept_hash = f"concepts-{run_id}"
        store.put_concepts(concept_hash, "test concepts", concepts)
    layer_order = list(dict.fromkeys(n["layer"] for n in neurons))
    layers = pd.DataFrame(
        {
            "layer": layer_order,
            "position": range(len(layer_order)),
            "shape": "(1,)",
            "n_units": [sum(n["layer"] == l for n in neurons) for l in layer_order],
        }
    )
    nrn = pd.DataFrame(
        {
            "layer": [n["layer"] for n in neurons],
            "unit": [n["unit"] for n in neurons],
            "label": [n["label"] for n in neurons],
            "similarity": 1.0,
        }
    )
    runner = nrn.assign(rank=1, concept=nrn["label"], score=1.0)[["layer", "unit", "rank", "concept", "score"]]
    rows = []
    for n in neurons:
        for kind in ("top", "low", "random"):
            for r, img in enumerate(n.get(kind, [])):
                act = {"top": 10.0 - r, "low": -5.0 - r, "random": 0.0}[kind]
                rows.append((n["layer"], n["unit"], kind, r + 1, img, act))
    images = pd.DataFrame(rows, columns=["layer", "unit", "kind", "rank", "image_id", "activation"])
    store.start_run(run_id, f"hand-made {run_id}", "import", "{}", run_id)
    store.finish_run(
        run_id,
        layers=layers,
        neurons=nrn,
        runner_ups=runner,
        neuron_images=images,
        histograms=None,
        meta={
            "run_id": run_id,
            "probe_fingerprint": fingerprint,
            "concept_hash": concept_hash,
            "n_images": len(paths),
            "models": {},
            "timings": {"load": 0.1},
        },
    )
    return run_id


def counts(store: Store) -> dict[str, int]:
    return {
        t: store.scalar(f"SELECT count(*) FROM {t}")
        for t in ("evaluations", "eval_scores", "eval_neurons", "human_verdicts", "runs", "neurons")
    }


# ---------------------------------------------------------------------------- the colour world
COLOUR_NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple"]
BASE_RGB = {
    "red": (230, 20, 20),
    "green": (20, 200, 20),
    "blue": (20, 20, 230),
    "yellow": (230, 230, 20),
    "cyan": (20, 230, 230),
    "magenta": (230, 20, 230),
    "orange": (240, 140, 20),
    "purple": (120, 20, 140),
}
CONCEPTS = COLOUR_NAMES + ["dog", "car", "tree", "house"]  # |S| = 12
SHADES = 5


def colour_world(seed: int = 0):
    """Colours of the 40 probe images (5 shades per colour), the image/text tables of a model that knows
    colours (an image's embedding is close to its colour name's), and image ids per colour."""
    rng = np.random.default_rng(seed)
    dim = len(CONCEPTS)
    colours, image_table, ids_of = [], {}, {}
    for ci, name in enumerate(COLOUR_NAMES):
        ids_of[name] = []
        for j in range(SHADES):
            rgb = tuple(int(np.clip(c + 3 * j, 0, 255)) for c in BASE_RGB[name])
            ids_of[name].append(len(colours))
            colours.append(rgb)
            image_table[rgb] = unit(np.eye(dim)[ci] + 0.04 * rng.random(dim))
    text_table = {c: np.eye(dim)[i] for i, c in enumerate(CONCEPTS)}
    return colours, image_table, text_table, ids_of


def colour_neurons(ids_of) -> list[dict]:
    """Two layers; each neuron's top-5 images are shades of its label's colour, its inactive ones other colours."""
    specs = [
        ("layer1", ["red", "green", "blue", "yellow", "cyan", "magenta"]),
        ("layer2", ["orange", "purple", "red", "green", "blue", "red"]),
    ]  # red: the most frequent label
    out = []
    for layer, labels in specs:
        for u, lab in enumerate(labels):
            ci = COLOUR_NAMES.index(lab)
            out.append(
                {
                    "layer": layer,
                    "unit": u,
                    "label": lab,
                    "top": ids_of[lab],
                    "low": ids_of[COLOUR_NAMES[(ci + 3) % 8]][:3],
                    "random": ids_of[COLOUR_NAMES[(ci + 5) % 8]][:3],
                }
            )
    return out


@pytest.fixture
def colour_run(tmp_path, monkeypatch):
    """(store, run id, fake model, ids_of, cache dir): a complete hand-made colour run; `evaluate` uses the fake model."""
    colours, image_table, text_table, ids_of = colour_world()
    model = FakeImageText(image_table, text_table)
    store = Store(tmp_path / "runs.duckdb")
    run_id = build_run(
        store,
        tmp_path / "probe",
        colours,
        colour_neurons(ids_of),
        CONCEPTS,
        image_labels=[c for c in COLOUR_NAMES for _ in range(SHADES)],
    )
    monkeypatch.setattr(run_mod, "resolve_eval_model", lambda cfg=None, progress=True: (FAKE_CFG, model))
    yield store, run_id, model, ids_of, tmp_path / "cache"
    store.close()


def run_view(store, run_id):
    from clipeval.analysis.runview import RunView

    return RunView(store, run_id)


# ============================================================================ CP and ES on a hand-built EvalInputs
def small_inputs(tmp_path, neurons: pd.DataFrame, images: pd.DataFrame, colours, concepts=None, variants=None):
    paths = write_images(tmp_path / "imgs", colours)
    labels = variants or {"real": neurons[["layer", "unit", "label"]]}
    return EvalInputs("r", "probe-fp", len(colours), labels, images, paths, concepts)


# five concepts with one-hot text embeddings, three images with known directions
EXACT_CONCEPTS = ["c0", "c1", "c2", "c3", "c4"]
EXACT_COLOURS = [(10, 10, 10), (20, 20, 20), (30, 30, 30)]
EXACT_IMAGES = {
    (10, 10, 10): unit([5, 4, 3, 2, 1]),  # ranks c0..c4: 1 2 3 4 5
    (20, 20, 20): unit([1, 2, 3, 4, 5]),  # ranks 5 4 3 2 1
    (30, 30, 30): unit([1, 1, 0, 0, 0]),
}  # c0, c1 tie first -> both rank 1; c2..c4 tie -> rank 3
EXACT_TEXTS = {c: np.eye(5)[i] for i, c in enumerate(EXACT_CONCEPTS)}


def exact_case(tmp_path):
    neurons = pd.DataFrame({"layer": ["l", "l", "m"], "unit": [0, 1, 0], "label": ["c0", "c3", "c4"]})
    top = [("l", 0, [0, 1, 2]), ("l", 1, [0, 1, 2]), ("m", 0, [2, 0])]
    images = pd.DataFrame(
        [(l, u, "top", r + 1, i) for l, u, ids in top for r, i in enumerate(ids)],
        columns=["layer", "unit", "kind", "rank", "image_id"],
    )
    return small_inputs(tmp_path, neurons, images, EXACT_COLOURS, EXACT_CONCEPTS)


EXPECTED_RANKS = {("l", 0): [1, 5, 1], ("l", 1): [4, 2, 3], ("m", 0): [3, 5]}


def by_neuron(scores: pd.DataFrame) -> dict:
    s = scores.sort_values(["layer", "unit", "rank"])
    return {k: g["raw"].tolist() for k, g in s.groupby(["layer", "unit"])}


def test_cp_exact_ranks(tmp_path):
    model = FakeImageText(EXACT_IMAGES, EXACT_TEXTS)
    scores = ConceptProportion(model, "m", ArrayCache(tmp_path / "cache")).score(exact_case(tmp_path), progress=False)
    assert by_neuron(scores) == EXPECTED_RANKS
    assert set(scores.columns) >= {"layer", "unit", "variant", "kind", "rank", "image_id", "label", "raw"}
    assert (scores["variant"] == "real").all() and (scores["kind"] == "top").all()
    # each unique image encoded once, the concept set encoded once, in one call
    assert sorted(model.encoded_images) == sorted(EXACT_COLOURS)
    assert model.encoded_texts == EXACT_CONCEPTS and model.text_calls == 1


def test_cp_ranks_do_not_depend_on_chunking(tmp_path, monkeypatch):
    monkeypatch.setattr(cp_mod, "CHUNK", 2)  # images split over two similarity blocks
    model = FakeImageText(EXACT_IMAGES, EXACT_TEXTS)
    scores = ConceptProportion(model, "m", ArrayCache(tmp_path / "cache")).score(exact_case(tmp_path), progress=False)
    assert by_neuron(scores) == EXPECTED_RANKS


def test_cp_rank_one_when_the_label_is_the_nearest_concept(tmp_path):
    colours, image_table, text_table, ids_of = colour_world()
    nrn = pd.DataFrame({"layer": "l", "unit": range(8), "label": COLOUR_NAMES})
    images = pd.DataFrame(
        [("l", u, "top", r + 1, i) for u, c in enumerate(COLOUR_NAMES) for r, i in enumerate(ids_of[c])],
        columns=["layer", "unit", "kind", "rank", "image_id"],
    )
    inputs = small_inputs(tmp_path, nrn, images, colours, CONCEPTS)
    model = FakeImageText(image_table, text_table)
    scores = ConceptProportion(model, "m", ArrayCache(tmp_path / "cache")).score(inputs, progress=False)
    assert (scores["raw"] == 1).all()
    wrong = {"real": nrn.assign(label=np.roll(COLOUR_NAMES, 1))}  # every label another colour
    scores = ConceptProportion(model, "m", ArrayCache(tmp_path / "cache")).score(
        small_inputs(tmp_path, nrn, images, colours, CONCEPTS, wrong), progress=False
    )
    assert (scores["raw"] > 1).all()


def test_cp_cutoff_is_int_of_size_times_p():
    assert cp_cutoff(0.01, 12) == 0  # a tiny set with a small p admits nothing
    assert cp_cutoff(0.1, 12) == 1
    assert cp_cutoff(0.25, 12) == 3
    assert cp_cutoff(0.249, 12) == 2  # int() truncates: 2.988 -> 2
    assert cp_cutoff(0.01, 10000) == 100
    with pytest.raises(ClipevalError):
        cp_cutoff(0.1, None)
    ranks = np.array([1, 2, 3, 4])
    np.testing.assert_array_equal(image_matches("cp", ranks, 0.25, 12), [True, True, True, False])
    np.testing.assert_array_equal(image_matches("cp", ranks, 0.01, 12), [False] * 4)
    # the per-neuron rule applies the same cut-off: best rank of the top-k against int(|S| * p)
    neurons = pd.DataFrame({"layer": "l", "unit": [0, 1, 2]})
    scores = pd.DataFrame(
        {
            "layer": "l",
            "unit": [0, 0, 1, 1, 2, 2],
            "variant": "real",
            "kind": "top",
            "rank": [1, 2, 1, 2, 1, 2],
            "image_id": 0,
            "label": "x",
            "raw": [5, 3, 4, 7, 2, 1],
        }
    )
    t = ScoreTable(scores, "cp", neurons, n_concepts=12)
    np.testing.assert_array_equal(t.neuron_scores(), [3, 4, 1])
    np.testing.assert_array_equal(t.verdicts(0.25), [True, False, True])  # cut 3
    np.testing.assert_array_equal(t.verdicts(0.249), [False, False, True])  # cut 2
    np.testing.assert_array_equal(t.verdicts(0.01), [False, False, False])  # cut 0
    np.testing.assert_array_equal(t.verdicts(1.0), [True, True, True])
    with pytest.raises(ClipevalError, match="size of the concept set"):
        ScoreTable(scores, "cp", neurons, n_concepts=None).verdicts(0.1)


def test_es_cosines_equal_hand_computed_dot_products(tmp_path):
    rng = np.random.default_rng(7)
    texts = {c: rng.normal(size=5) for c in EXACT_CONCEPTS}  # not one-hot: real dot products
    images = {k: rng.normal(size=5) for k in EXACT_IMAGES}
    model = FakeImageText(images, texts)
    inputs = exact_case(tmp_path)
    scores = EmbeddingSimilarity(model, "m", ArrayCache(tmp_path / "cache")).score(inputs, progress=False)
    for row in scores.itertuples():
        expected = float(unit(images[EXACT_COLOURS[row.image_id]]) @ unit(texts[row.label]))
        assert row.raw == pytest.approx(expected, abs=1e-6)
    # each unique image once; only the labels (each once), not the concept set
    assert sorted(model.encoded_images) == sorted(EXACT_COLOURS)
    assert sorted(model.encoded_texts) == ["c0", "c3", "c4"] and model.text_calls == 1


def test_embeddings_are_cached_across_passes(tmp_path):
    model = FakeImageText(EXACT_IMAGES, EXACT_TEXTS)
    cache = ArrayCache(tmp_path / "cache")
    inputs = exact_case(tmp_path)
    first = EmbeddingSimilarity(model, "m", cache).score(inputs, progress=False)
    n_img, n_txt = len(model.encoded_images), len(model.encoded_texts)
    again = EmbeddingSimilarity(model, "m", cache).score(inputs, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert (len(model.encoded_images), len(model.encoded_texts)) == (n_img, n_txt)  # nothing re-encoded
    # CP needs the concept set, not cached yet; the images are
    ConceptProportion(model, "m", cache).score(inputs, progress=False)
    assert len(model.encoded_images) == n_img
    # another model key: everything is encoded again
    EmbeddingSimilarity(model, "other", cache).score(inputs, progress=False)
    assert len(model.encoded_images) == 2 * n_img


def test_embedding_caches_are_keyed_by_the_model(tmp_path):
    """Two models that embed the same texts and images differently must never share cache entries
    (a model need not report a separate text fingerprint: its key then covers the whole model)."""
    cache = ArrayCache(tmp_path / "cache")
    inputs = exact_case(tmp_path)
    one = FakeImageText(EXACT_IMAGES, EXACT_TEXTS, fingerprint="one")
    two = FakeImageText(
        {k: v[::-1] for k, v in EXACT_IMAGES.items()}, {c: -v for c, v in EXACT_TEXTS.items()}, fingerprint="two"
    )
    s1 = EmbeddingSimilarity(one, "key-one", cache).score(inputs, progress=False)
    s2 = EmbeddingSimilarity(two, "key-two", cache).score(inputs, progress=False)
    assert two.encoded_texts and two.encoded_images
    for r1, r2 in zip(s1.itertuples(), s2.itertuples()):
        img = EXACT_COLOURS[r1.image_id]
        assert r1.raw == pytest.approx(float(EXACT_IMAGES[img] @ EXACT_TEXTS[r1.label]), abs=1e-6)
        assert r2.raw == pytest.approx(float(EXACT_IMAGES[img][::-1] @ -EXACT_TEXTS[r2.label]), abs=1e-6)
    c2 = ConceptProportion(two, "key-two", cache).score(inputs, progress=False)
    c1 = ConceptProportion(one, "key-one", cache).score(inputs, progress=False)
    assert by_neuron(c1) == EXPECTED_RANKS and by_neuron(c2) != EXPECTED_RANKS


def test_es_verdict_threshold_is_inclusive():
    neurons = pd.DataFrame({"layer": "l", "unit": [0, 1, 2]})
    scores = pd.DataFrame(
        {
            "layer": "l",
            "unit": [0, 0, 1, 1, 2],
            "variant": "real",
            "kind": "top",
            "rank": [1, 2, 1, 2, 1],
            "image_id": 0,
            "label": "x",
            "raw": [0.1, 0.25, 0.2, 0.249, 0.5],
        }
    )
    t = ScoreTable(scores, "es", neurons)
    np.testing.assert_allclose(t.neuron_scores(), [0.25, 0.249, 0.5])  # max over the top-k
    np.testing.assert_array_equal(t.verdicts(0.25), [True, False, True])  # cosine == tau matches
    np.testing.assert_array_equal(image_matches("es", [0.25, 0.2499], 0.25), [True, False])
    # VQA is strict: P(yes) must be ABOVE the cut
    v = ScoreTable(scores.assign(raw=[0.1, 0.5, 0.2, 0.49, 0.51]), "vqa", neurons)
    np.testing.assert_array_equal(v.verdicts(0.5), [False, False, True])
    np.testing.assert_array_equal(image_matches("vqa", [0.5, 0.51], 0.5), [False, True])


def test_contrast_neuron_score_is_the_auc_top_vs_inactive():
    from clipeval.analysis.metrics import roc_auc

    neurons = pd.DataFrame({"layer": "l", "unit": [0, 1]})
    rows = [
        (0, "top", 1, 0.9),
        (0, "top", 2, 0.5),
        (0, "low", 1, 0.5),
        (0, "random", 1, 0.1),
        (1, "top", 1, 0.1),
        (1, "top", 2, 0.2),
        (1, "low", 1, 0.3),
        (1, "low", 2, 0.4),
    ]
    scores = pd.DataFrame(
        [("l", u, "real", k, r, 0, "x", s) for u, k, r, s in rows],
        columns=["layer", "unit", "variant", "kind", "rank", "image_id", "label", "raw"],
    )
    t = ScoreTable(scores, "contrast", neurons)
    np.testing.assert_allclose(t.neuron_scores(), [roc_auc([0.9, 0.5], [0.5, 0.1]), 0.0])
    assert t.neuron_scores()[0] == pytest.approx(3.5 / 4)
    np.testing.assert_allclose(t.neuron_scores(k=1), [1.0, 0.0])
    np.testing.assert_array_equal(t.verdicts(0.75), [True, False])


def test_neuron_scores_are_computed_once_per_variant_and_k_and_cannot_be_changed():
    """A threshold only changes the comparison: the pages ask for the same scores many times per slider
    step, so they are kept per (variant, k), read-only so that no caller can change them for the others."""
    neurons = pd.DataFrame({"layer": "l", "unit": [0, 1]})
    rows = [(0, "top", 1, 0.9), (0, "top", 2, 0.5), (0, "low", 1, 0.5), (1, "top", 1, 0.1), (1, "low", 1, 0.3)]
    scores = pd.DataFrame(
        [("l", u, "real", k, r, 0, "x", s) for u, k, r, s in rows],
        columns=["layer", "unit", "variant", "kind", "rank", "image_id", "label", "raw"],
    )
    t = ScoreTable(scores, "contrast", neurons)
    first = t.neuron_scores(k=2)
    assert t.neuron_scores(k=2) is first and t.neuron_scores() is first  # k=None is kmax = 2
    assert t.neuron_scores(k=1) is not first
    with pytest.raises(ValueError):
        first[0] = 0.0
    np.testing.assert_array_equal(t.verdicts(0.75, k=2), [True, False])
    np.testing.assert_array_equal(t.verdicts(0.5, k=2), [True, False])
    np.testing.assert_array_equal(t.verdict_frame(0.99, k=2)["verdict"], [False, False])


# ============================================================================ the any-of-k rule
def test_any_of_k_rule_on_a_neuron_whose_third_image_matches(tmp_path, monkeypatch):
    colours, image_table, text_table, ids_of = colour_world()
    # unit 0 (red): only its 3rd image is red; unit 1 (green): its 1st image is green
    neurons = [
        {
            "layer": "l",
            "unit": 0,
            "label": "red",
            "top": [ids_of["blue"][0], ids_of["green"][0], ids_of["red"][0], ids_of["cyan"][0], ids_of["yellow"][0]],
        },
        {"layer": "l", "unit": 1, "label": "green", "top": ids_of["green"]},
    ]
    store = Store(tmp_path / "runs.duckdb")
    run_id = build_run(store, tmp_path / "probe", colours, neurons, CONCEPTS)
    model = FakeImageText(image_table, text_table)
    monkeypatch.setattr(run_mod, "resolve_eval_model", lambda cfg=None, progress=True: (FAKE_CFG, model))
    run_mod.evaluate(store, run_id, "cp,es", cache_dir=tmp_path / "cache", progress=False, baselines=False)
    view = run_view(store, run_id)
    es, cp = view.table("es"), view.table("cp")
    assert es.kmax == cp.kmax == 5
    for k, expected in [(1, False), (2, False), (3, True), (4, True), (5, True), (None, True)]:
        assert es.verdicts(0.5, k=k)[0] == expected, k
        assert cp.verdicts(0.1, k=k)[0] == expected, k
        assert es.verdicts(0.5, k=k)[1] and cp.verdicts(0.1, k=k)[1]
    ranks = store.eval_scores(view.evaluators["cp"].eval_id, "l", 0).query("kind == 'top' and variant == 'real'")
    assert ranks.sort_values("rank")["raw"].tolist()[2] == 1 and (ranks["raw"] > 1).sum() == 4
    # the same through the evaluation's own k: only the top-k images are scored and stored
    for k, expected in [(2, False), (3, True)]:
        store2 = Store(tmp_path / f"k{k}.duckdb")
        build_run(store2, tmp_path / "probe", colours, neurons, CONCEPTS)
        run_mod.evaluate(store2, run_id, "es", k=k, cache_dir=tmp_path / "cache", progress=False)
        t = run_view(store2, run_id).table("es")
        assert t.kmax == k
        assert t.verdicts(0.5)[0] == expected
        assert counts(store2)["eval_scores"] == 2 * k * 3  # 2 neurons x k images x 3 label variants
        store2.close()
    store.close()


def test_k_above_the_stored_top_k_is_an_error(colour_run):
    store, run_id, model, _, cache = colour_run
    before = counts(store)
    for k in (6, 0):
        with pytest.raises(ClipevalError, match=f"k={k} is outside 1..5"):
            run_mod.evaluate(store, run_id, "es", k=k, cache_dir=cache, progress=False)
    assert counts(store) == before and not model.encoded_images
    run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False)
    t = run_view(store, run_id).table("es")
    with pytest.raises(ClipevalError, match="k=6 is outside 1..5"):
        t.verdicts(0.25, k=6)
    with pytest.raises(ClipevalError, match="k=0"):
        t.neuron_scores(k=0)


# ============================================================================ label baselines
def _neurons(n_per_layer=(12, 12, 5)) -> pd.DataFrame:
    rows = []
    for li, n in enumerate(n_per_layer):
        rows += [(f"layer{li}", u, f"L{li}-label{u % 7}") for u in range(n)]
    return pd.DataFrame(rows, columns=["layer", "unit", "label"]).assign(similarity=0.3)


def test_label_variants_shuffle_within_each_layer_only():
    neurons = _neurons()
    variants, constant = label_variants(neurons, seed=0)
    assert list(variants) == ["real", "shuffled", "constant"]
    real, shuffled = variants["real"], variants["shuffled"]
    pd.testing.assert_frame_equal(real, neurons[["layer", "unit", "label"]])
    pd.testing.assert_frame_equal(shuffled[["layer", "unit"]], real[["layer", "unit"]])
    for layer, g in real.groupby("layer"):
        s = shuffled[shuffled["layer"] == layer]
        assert sorted(s["label"]) == sorted(g["label"])  # the layer's multiset of labels
    assert (shuffled["label"] != real["label"]).any()  # actually shuffled
    same = label_variants(neurons, seed=0)[0]["shuffled"]
    pd.testing.assert_frame_equal(shuffled, same)  # seeded
    other = label_variants(neurons, seed=1)[0]["shuffled"]
    assert (other["label"] != shuffled["label"]).any()
    assert not label_variants(neurons, seed=0)[0]["real"].equals(shuffled)
    # the input frame is not modified
    pd.testing.assert_frame_equal(neurons, _neurons())


def test_label_variants_constant():
    neurons = _neurons()
    neurons.loc[[0, 3, 13, 20], "label"] = "object"  # most frequent label of the run (4 times)
    variants, constant = label_variants(neurons, seed=0)
    assert constant == "object"
    assert (variants["constant"]["label"] == "object").all()
    pd.testing.assert_frame_equal(variants["constant"][["layer", "unit"]], neurons[["layer", "unit"]])
    variants, constant = label_variants(neurons, seed=0, constant_label="thing")
    assert constant == "thing" and (variants["constant"]["label"] == "thing").all()
    variants, constant = label_variants(neurons, seed=0, baselines=False)
    assert list(variants) == ["real"]


def test_baselines_are_stored_with_the_evaluation(colour_run):
    store, run_id, model, _, cache = colour_run
    run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False, seed=3)
    ev = store.evaluations(run_id)
    assert ev["constant_label"].tolist() == ["red"]  # the most frequent label of the run
    scores = store.eval_scores(ev["eval_id"].iloc[0])
    assert set(scores["variant"]) == {"real", "shuffled", "constant"}
    assert (scores.loc[scores["variant"] == "constant", "label"] == "red").all()
    expected, _ = label_variants(store.neurons(run_id), seed=3)
    got = scores[scores["variant"] == "shuffled"].drop_duplicates(["layer", "unit"])[["layer", "unit", "label"]]
    merged = got.merge(expected["shuffled"], on=["layer", "unit"], suffixes=("", "_expected"))
    assert len(merged) == 12 and (merged["label"] == merged["label_expected"]).all()
    run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False, constant_label="blue")
    assert run_view(store, run_id).evaluators["es"].constant_label == "blue"


# ============================================================================ evaluate() through the store
def test_real_labels_beat_shuffled_and_constant(colour_run):
    store, run_id, model, ids_of, cache = colour_run
    out = run_mod.evaluate(store, run_id, "cp,es,contrast", cache_dir=cache, progress=False)
    assert [(o.evaluator, o.status) for o in out] == [("cp", "complete"), ("es", "complete"), ("contrast", "complete")]
    # 40 probe images, each encoded once over the three evaluators (one cache); concepts once, labels once
    assert len(model.encoded_images) == len(set(model.encoded_images)) == 40
    assert sorted(model.encoded_texts[: len(CONCEPTS)]) == sorted(CONCEPTS)
    view = run_view(store, run_id)
    summary = view.layer_summary({"cp": 1 / 12, "es": 0.5, "contrast": 0.75})
    overall = summary[summary["layer"] == "overall"].set_index(["evaluator", "variant"])["share_correct"]
    for e in ("CP", "ES", "Contrast"):
        assert overall[(e, "real")] == 1.0
        assert overall[(e, "shuffled")] < 0.5
        assert overall[(e, "real")] > overall[(e, "shuffled")]
    assert overall[("ES", "constant")] == pytest.approx(3 / 12)  # only the three red neurons
    auc = view.table("contrast").neuron_scores("real")
    assert auc.min() == 1.0
    assert view.table("contrast").neuron_scores("shuffled").mean() < 0.6
    assert (view.table("cp").neuron_scores("real") == 1).all()
    # a cached re-run recomputes nothing
    n = len(model.encoded_images)
    again = run_mod.evaluate(store, run_id, "cp,es,contrast", cache_dir=cache, progress=False)
    assert [o.status for o in again] == ["cached"] * 3 and len(model.encoded_images) == n


def test_stored_scores_round_trip_and_provenance(colour_run):
    store, run_id, model, ids_of, cache = colour_run
    (o,) = run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False)
    ev = store.evaluations(run_id).iloc[0]
    assert ev["eval_id"] == o.eval_id and ev["status"] == "complete" and ev["wall_s"] >= 0
    assert "lookup tables" in ev["models_json"]
    scores = store.eval_scores(o.eval_id)
    assert len(scores) == 12 * 5 * 3
    _, image_table, text_table, _ = colour_world()
    colours = colour_world()[0]
    for r in scores.sample(20, random_state=0).itertuples():
        assert r.raw == pytest.approx(float(image_table[colours[r.image_id]] @ text_table[r.label]), abs=1e-6)
    # different settings -> a new evaluation beside the old; the newest is shown
    (o2,) = run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False, seed=5)
    assert o2.eval_id != o.eval_id and len(store.evaluations(run_id)) == 2
    assert run_view(store, run_id).evaluators["es"].eval_id == o2.eval_id


# ============================================================================ BLIP-2 through the evaluator
@pytest.fixture(scope="module")
def tiny_vqa():
    from tiny_blip2 import make_tiny_blip2

    return make_tiny_blip2()


def test_vqa_path_on_a_tiny_blip2(colour_run, tiny_vqa, monkeypatch):
    from clipeval.evaluators import vqa as vqa_mod

    store, run_id, model, ids_of, cache = colour_run
    template = 'Q: is "{label}" shown here? A:'
    calls, vision_images = [], []

    real_yes = tiny_vqa.yes_probability
    from clipeval.compute.batches import DecodeVqa

    real_image, shown = DecodeVqa.image, []

    def recording_image(self, path):  # the image as the VQA model is shown it, before its processor
        img = real_image(self, path)
        shown.append(img.size)
        return img

    def recording_yes(images, questions, *a, **kw):
        # workers hand over the processor's pixels, one (3, H, W) per image
        calls.append(([tuple(im.shape) for im in images], [list(q) for q in questions]))
        return real_yes(images, questions, *a, **kw)

    monkeypatch.setattr(tiny_vqa, "yes_probability", recording_yes)
    monkeypatch.setattr(DecodeVqa, "image", recording_image)
    hook = tiny_vqa.model.vision_model.register_forward_hook(
        lambda mod, args, out: vision_images.append(int(out[0].shape[0]))
    )
    try:
        (o,) = run_mod.evaluate(
            store, run_id, "vqa", prompt=template, k=3, cache_dir=cache, progress=False, vqa_backend=tiny_vqa
        )
    finally:
        hook.remove()
    assert o.status == "complete"
    # which labels each image is asked about: every variant's label of every neuron it is a top-3 image of
    inputs, constant = run_mod.load_inputs(store, run_id, ("top",), 0, True, "", 3)
    pairs = inputs.pairs()
    expected = pairs.groupby("image_id")["label"].agg(lambda s: sorted(set(s)))
    n_unique = len(expected)
    assert n_unique == 24  # 8 colours x 3 shades
    asked = [q for _, qs in calls for q in qs]
    assert sorted(q for qs in asked for q in qs) == sorted(format_prompt(template, l) for ls in expected for l in ls)
    for qs in asked:  # the template, filled in with the label
        for q in qs:
            assert q.startswith('Q: is "') and q.endswith('" shown here? A:')
            assert q[len('Q: is "') : -len('" shown here? A:')] in CONCEPTS
    # batching: images go to the backend a few at a time, at 128 x 128
    sizes = [len(s) for s, _ in calls]
    assert sum(sizes) == n_unique and max(sizes) <= vqa_mod.VisualQuestionAnswering(tiny_vqa, template).images_per_call
    assert len(calls) == math.ceil(n_unique / 8)
    assert len(shown) == n_unique and all(sz == (vqa_mod.IMAGE_SIZE, vqa_mod.IMAGE_SIZE) for sz in shown)
    assert len({sz for s, _ in calls for sz in s}) == 1  # the processor's pixels
    # one vision pass per unique image across the real/shuffled/constant variants
    assert sum(vision_images) == n_unique
    # stored and retrievable
    scores = store.eval_scores(o.eval_id)
    assert len(scores) == len(pairs) == 12 * 3 * 3
    assert scores["raw"].between(0, 1).all() and scores["raw"].nunique() > 1
    # one P(yes) per (image, label), whatever the variant that asked
    assert (scores.groupby(["image_id", "label"])["raw"].nunique() == 1).all()
    ev = store.evaluations(run_id).iloc[0]
    cfg = json.loads(ev["config_json"])
    assert ev["evaluator"] == "vqa" and json.loads(ev["models_json"])["vqa"]["name"] == "tiny-blip2"
    assert cfg["prompt"] == template and cfg["k"] == 3
    assert cfg["vqa_model"] == "tiny-blip2"  # the model that answered, not the default name it was not
    t = run_view(store, run_id).table("vqa")
    assert t.kmax == 3 and set(t.variants) == {"real", "shuffled", "constant"}
    s = t.neuron_scores("real")
    assert ((s >= 0) & (s <= 1)).all()
    np.testing.assert_array_equal(t.verdicts(0.5), s > 0.5)
    # the stored score is the model's P(yes) for that image and question
    r = scores.iloc[0]
    img = Image.open(inputs.paths[int(r["image_id"])]).convert("RGB").resize((128, 128), Image.BICUBIC)
    direct = real_yes([img], [[format_prompt(template, r["label"])]])[0][0]
    assert r["raw"] == pytest.approx(direct, abs=1e-5)


def test_vqa_rejects_a_template_without_label(colour_run, tiny_vqa, monkeypatch):
    from clipeval.models.vqa import Blip2Vqa

    store, run_id, model, _, cache = colour_run
    before = counts(store)
    with pytest.raises(ClipevalError, match=r"\{label\}"):
        run_mod.evaluate(
            store, run_id, "vqa", prompt="Is this a cat?", cache_dir=cache, progress=False, vqa_backend=tiny_vqa
        )
    assert counts(store) == before

    def no_load(*a, **kw):
        raise AssertionError("the template is checked before a (multi-GB) model is loaded")

    monkeypatch.setattr(Blip2Vqa, "load", no_load)
    with pytest.raises(ClipevalError, match=r"\{label\}"):  # and before the other evaluators run
        run_mod.evaluate(store, run_id, "es,vqa", prompt="Is this a cat?", cache_dir=cache, progress=False)
    assert counts(store) == before and not model.encoded_images


def test_vqa_without_weights_is_recorded_unavailable(colour_run, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    store, run_id, _, _, cache = colour_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # no weights anywhere
    (o,) = run_mod.evaluate(store, run_id, "vqa", cache_dir=cache, progress=False)
    assert o.status == "unavailable"
    assert run_mod.DEFAULT_VQA_MODEL in o.message and "not in the local Hugging Face cache" in o.message
    ev = store.evaluations(run_id)
    assert len(ev) == 1 and ev.iloc[0]["status"] == "unavailable" and ev.iloc[0]["error"] == o.message
    assert counts(store)["eval_scores"] == 0
    view = run_view(store, run_id)
    state = view.evaluators["vqa"]
    assert state.status == "unavailable" and state.table is None and state.reason == o.message
    assert "vqa" not in view.available
    with pytest.raises(ClipevalError, match="not available"):
        view.table("vqa")
    # a folder that is not a model: unavailable too, saying so
    (o,) = run_mod.evaluate(store, run_id, "vqa", vqa_model=str(tmp_path), cache_dir=cache, progress=False)
    assert o.status == "unavailable" and "does not hold a complete BLIP-2" in o.message


# ============================================================================ bad input
def test_parse_evaluators():
    assert run_mod.parse_evaluators(" CP, es ,cp,") == ["cp", "es"]
    assert run_mod.parse_evaluators(["vqa", "contrast"]) == ["vqa", "contrast"]
    with pytest.raises(ClipevalError, match="bogus") as e:
        run_mod.parse_evaluators("cp,bogus")
    assert "cp, es, vqa, contrast" in str(e.value)
    with pytest.raises(ClipevalError, match="unknown evaluator"):
        run_mod.parse_evaluators(" , ")


def test_unknown_evaluator_writes_nothing(colour_run):
    store, run_id, model, _, cache = colour_run
    before = counts(store)
    with pytest.raises(ClipevalError, match="clip"):
        run_mod.evaluate(store, run_id, "es,clip", cache_dir=cache, progress=False)
    assert counts(store) == before and not model.encoded_images


def test_cp_label_not_in_the_concept_set(tmp_path, monkeypatch):
    colours, image_table, text_table, ids_of = colour_world()
    neurons = colour_neurons(ids_of)
    neurons[3]["label"] = "chartreuse"  # not a concept
    text_table["chartreuse"] = np.eye(len(CONCEPTS))[0]
    store = Store(tmp_path / "runs.duckdb")
    run_id = build_run(store, tmp_path / "probe", colours, neurons, CONCEPTS)
    model = FakeImageText(image_table, text_table)
    monkeypatch.setattr(run_mod, "resolve_eval_model", lambda cfg=None, progress=True: (FAKE_CFG, model))
    before = counts(store)
    with pytest.raises(ClipevalError, match="not in it: chartreuse"):
        run_mod.evaluate(store, run_id, "cp", cache_dir=tmp_path / "cache", progress=False)
    assert counts(store) == before
    # checked before any evaluator runs: ES listed first is not recorded either, and no model is used
    with pytest.raises(ClipevalError, match="not in it: chartreuse"):
        run_mod.evaluate(store, run_id, "es,contrast,cp", cache_dir=tmp_path / "cache", progress=False)
    assert counts(store) == before and not model.encoded_images and not model.encoded_texts
    store.close()


def test_cp_constant_label_not_in_the_concept_set(colour_run):
    store, run_id, model, _, cache = colour_run
    before = counts(store)
    with pytest.raises(ClipevalError, match="not in it: something vague"):
        run_mod.evaluate(store, run_id, "cp", constant_label="something vague", cache_dir=cache, progress=False)
    assert counts(store) == before


def test_cp_without_a_concept_set(tmp_path, monkeypatch):
    colours, image_table, text_table, ids_of = colour_world()
    store = Store(tmp_path / "runs.duckdb")
    run_id = build_run(store, tmp_path / "probe", colours, colour_neurons(ids_of), None)
    model = FakeImageText(image_table, text_table)
    monkeypatch.setattr(run_mod, "resolve_eval_model", lambda cfg=None, progress=True: (FAKE_CFG, model))
    with pytest.raises(ClipevalError, match="concept set"):
        run_mod.evaluate(store, run_id, "cp", cache_dir=tmp_path / "cache", progress=False)
    assert counts(store)["evaluations"] == 0
    run_mod.evaluate(store, run_id, "es", cache_dir=tmp_path / "cache", progress=False)  # ES does not need one
    assert counts(store)["evaluations"] == 1
    store.close()


def test_labels_without_images_cannot_be_evaluated(tmp_path, monkeypatch):
    colours, image_table, text_table, ids_of = colour_world()
    neurons = [{"layer": "l", "unit": 0, "label": "red"}]  # imported labels, no activations
    store = Store(tmp_path / "runs.duckdb")
    run_id = build_run(store, tmp_path / "probe", colours, neurons, CONCEPTS)
    monkeypatch.setattr(
        run_mod,
        "resolve_eval_model",
        lambda cfg=None, progress=True: (FAKE_CFG, FakeImageText(image_table, text_table)),
    )
    with pytest.raises(ClipevalError, match="no top-k images"):
        run_mod.evaluate(store, run_id, "es", cache_dir=tmp_path / "cache", progress=False)
    assert counts(store)["evaluations"] == 0
    store.close()


@pytest.mark.parametrize("status", ["failed", "running"])
def test_a_run_that_is_not_complete_is_refused(colour_run, status):
    store, run_id, model, _, cache = colour_run
    store.execute("UPDATE runs SET status = ?, pid = NULL WHERE run_id = ?", [status, run_id])  # killed
    before = counts(store)
    for names in ("es", "cp,es,contrast", "vqa"):
        with pytest.raises(ClipevalError, match="not complete") as e:
            run_mod.evaluate(store, run_id, names, cache_dir=cache, progress=False)
        assert run_id in str(e.value)
    assert counts(store) == before and not model.encoded_images
    with pytest.raises(ClipevalError, match="not complete"):
        run_view(store, run_id)


@pytest.mark.parametrize("evaluator", list(RULES))
def test_thresholds_out_of_range(evaluator):
    rule = RULES[evaluator]
    assert rule.check(rule.default) == rule.default
    assert rule.check(rule.lo) == rule.lo and rule.check(rule.hi) == rule.hi
    for bad in (rule.lo - 0.01, rule.hi + 0.01, float("nan")):
        with pytest.raises(ClipevalError, match=f"{rule.param}="):
            rule.check(bad)
    neurons = pd.DataFrame({"layer": "l", "unit": [0]})
    scores = pd.DataFrame(
        {
            "layer": "l",
            "unit": [0, 0],
            "variant": "real",
            "kind": ["top", "low"],
            "rank": 1,
            "image_id": 0,
            "label": "x",
            "raw": [0.5, 0.1],
        }
    )
    t = ScoreTable(scores, evaluator, neurons, n_concepts=10)
    t.verdicts(rule.default)
    with pytest.raises(ClipevalError, match="outside"):
        t.verdicts(rule.hi + 1)
    with pytest.raises(ClipevalError, match="outside"):
        t.verdict_frame(rule.lo - 1)


def test_score_table_refuses_unknown_neurons_and_evaluators():
    neurons = pd.DataFrame({"layer": "l", "unit": [0]})
    scores = pd.DataFrame(
        {
            "layer": "l",
            "unit": [0, 7],
            "variant": "real",
            "kind": "top",
            "rank": 1,
            "image_id": 0,
            "label": "x",
            "raw": [0.5, 0.1],
        }
    )
    with pytest.raises(ClipevalError, match="neurons the run does not have"):
        ScoreTable(scores, "es", neurons)
    with pytest.raises(ClipevalError, match="unknown evaluator"):
        ScoreTable(scores.iloc[:1], "bleu", neurons)


# ============================================================================ caches keyed by the weights (issue 12)
def test_vqa_scores_follow_the_weights_of_a_replaced_local_folder(colour_run, tmp_path):
    from tiny_blip2 import make_model, make_processor

    from clipeval.models.vqa import vqa_identity

    store, run_id, _, _, cache = colour_run
    folder = tmp_path / "blip2"

    def save(seed):
        processor = make_processor()
        tok = processor.tokenizer
        make_model(len(tok), tok.convert_tokens_to_ids("<image>"), seed=seed).save_pretrained(folder)
        processor.save_pretrained(folder)

    save(0)
    (first,) = run_mod.evaluate(store, run_id, "vqa", vqa_model=str(folder), k=1, cache_dir=cache, progress=False)
    (again,) = run_mod.evaluate(store, run_id, "vqa", vqa_model=str(folder), k=1, cache_dir=cache, progress=False)
    assert (first.status, again.status, again.eval_id) == ("complete", "cached", first.eval_id)
    save(1)  # the same folder, other weights
    (replaced,) = run_mod.evaluate(store, run_id, "vqa", vqa_model=str(folder), k=1, cache_dir=cache, progress=False)
    assert replaced.status == "complete" and replaced.eval_id != first.eval_id
    old, new = (store.eval_scores(o.eval_id)["raw"].to_numpy() for o in (first, replaced))
    assert not np.allclose(old, new)
    # the dtype it runs in is part of the key as well; the prompt template is in the settings
    assert vqa_identity(str(folder), dtype="float16") != vqa_identity(str(folder), dtype="float32")


def test_in_memory_vqa_models_with_other_weights_get_other_evaluations(colour_run):
    from tiny_blip2 import make_model, make_processor

    from clipeval.models.vqa import Blip2Vqa

    store, run_id, _, _, cache = colour_run
    ids = []
    for seed in (0, 1):
        processor = make_processor()
        model = make_model(len(processor.tokenizer), processor.tokenizer.convert_tokens_to_ids("<image>"), seed=seed)
        (o,) = run_mod.evaluate(
            store,
            run_id,
            "vqa",
            k=1,
            cache_dir=cache,
            progress=False,
            vqa_backend=Blip2Vqa(model, processor, name="tiny-blip2"),
        )
        ids.append((o.status, o.eval_id))
    assert ids[0][0] == ids[1][0] == "complete" and ids[0][1] != ids[1][1]


def test_random_weight_open_clip_models_are_fingerprinted_by_their_weights():
    from torch import nn

    from clipeval.models.image_text import OpenClipModel

    def random_model(seed):
        torch.manual_seed(seed)
        return OpenClipModel(nn.Linear(4, 3), lambda im: im, None, "ViT-B-32", "")

    a, b, a2 = random_model(0).info(), random_model(1).info(), random_model(0).info()
    assert a["fingerprint"] and a["fingerprint"] != b["fingerprint"] and a["fingerprint"] == a2["fingerprint"]
    assert a["text_fingerprint"] != b["text_fingerprint"]
    assert (
        OpenClipModel(nn.Linear(4, 3), lambda im: im, None, "ViT-B-32", "laion2b_s34b_b79k").info()["fingerprint"]
        == "laion2b_s34b_b79k"
    )


# ============================================================================ judges independent of the labeller (issue 12)
LITE1_MINILM = {
    "backend": "conse",
    "classifier": "efficientnet_lite1",
    "fingerprint": "a",
    "text_fingerprint": "minilm:x",
    "text_encoder_name": "all-MiniLM-L6-v2",
    "description": "ConSE lite1",
}


def test_shared_components_name_what_the_judge_shares_with_the_labeller():
    from clipeval.evaluators.judges import shared_components

    same_text = {**LITE1_MINILM, "classifier": "efficientnet_lite2", "fingerprint": "b"}
    other_text = {**same_text, "text_fingerprint": "mpnet:y", "text_encoder_name": "all-mpnet-base-v2"}
    got = shared_components(LITE1_MINILM, same_text)
    assert [g.split(" (")[0] for g in got] == ["text encoder", "classifier family", "label space"]
    assert [g.split(" (")[0] for g in shared_components(LITE1_MINILM, other_text)] == [
        "classifier family",
        "label space",
    ]
    assert "circular" in shared_components(LITE1_MINILM, dict(LITE1_MINILM))[0]
    clip = {"backend": "open_clip", "fingerprint": "laion", "text_fingerprint": "open_clip:ViT-B-32:laion"}
    assert (
        shared_components(
            {"backend": "open_clip", "fingerprint": "openai", "text_fingerprint": "open_clip:ViT-B-16:openai"}, clip
        )
        == []
    )


def test_evaluate_warns_when_the_judge_shares_the_labellers_text_encoder(colour_run, monkeypatch):
    store, run_id, model, _, cache = colour_run
    store.execute(
        "UPDATE runs SET models_json = ? WHERE run_id = ?", [json.dumps({"image_text": LITE1_MINILM}), run_id]
    )
    judge = {**LITE1_MINILM, "classifier": "efficientnet_lite2", "fingerprint": "b"}
    monkeypatch.setattr(model, "info", lambda: judge)
    with pytest.warns(UserWarning, match="shares the labeller's text encoder"):
        run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False)
    monkeypatch.setattr(model, "info", lambda: {**judge, "text_fingerprint": "mpnet:y"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False, seed=1)


def test_calibration_over_repeated_splits_finds_the_threshold_and_reports_intervals():
    from clipeval.evaluators.judges import calibrate_splits

    rng = np.random.default_rng(0)
    scores = rng.uniform(0.3, 0.9, 400)
    reference = (scores + rng.normal(0, 0.03, 400)) > 0.6
    r = calibrate_splits(scores, reference, "es", n_splits=20)
    assert abs(r["value"] - 0.6) < 0.03 and r["interval"][0] <= r["value"] <= r["interval"][1]
    assert r["n_splits"] == 20 and 0.7 < r["heldout_kappa"] <= 1
    assert r["heldout_kappa_interval"][0] <= r["heldout_kappa"] <= r["heldout_kappa_interval"][1]
    # CP on rank / |S|: 'rank <= int(|S| p)' is exactly 'rank / |S| <= p'
    ranks = rng.integers(1, 200, 400)
    cp = calibrate_splits(ranks / 1000, ranks <= 20, "cp", n_splits=10)
    # the lowest cut-off with the best kappa on the fit half: 20, or 19 where a split left rank 20 out of it
    assert int(1000 * cp["value"] + 1e-9) in (19, 20) and cp["heldout_kappa"] > 0.95


def test_each_backend_starts_from_its_own_default_thresholds(colour_run):
    from clipeval.evaluators.judges import PAPER_THRESHOLDS, save_calibration

    store, run_id, model, _, cache = colour_run
    run_mod.evaluate(store, run_id, "cp,es", cache_dir=cache, progress=False)
    view = run_view(store, run_id)
    assert view.default_thresholds() == PAPER_THRESHOLDS  # not calibrated: the paper's, and it says so
    assert view.defaults["es"].source == "paper (uncalibrated)" and "not CLIP" in view.defaults["es"].note
    save_calibration(
        store,
        model.info(),
        {
            "es": {
                "value": 0.7,
                "interval": (0.65, 0.75),
                "heldout_kappa": 0.5,
                "heldout_kappa_interval": (0.4, 0.6),
                "n_neurons": 100,
                "n_splits": 50,
            }
        },
        "ref",
        "somewhere",
    )
    view = run_view(store, run_id)
    assert view.default_thresholds()["es"] == 0.7 and view.defaults["es"].source == "calibrated"
    assert "held-out kappa 0.500 [0.400, 0.600]" in view.defaults["es"].note
    assert view.default_thresholds()["cp"] == PAPER_THRESHOLDS["cp"]  # CP has no calibration stored


def test_a_calibrated_default_near_chance_says_so(colour_run):
    """A default whose held-out kappa is hardly better than chance (the demo's ES: 0.025) must say so beside the
    kappa and its interval, wherever its note is shown."""
    from clipeval.evaluators.judges import save_calibration

    store, run_id, model, _, cache = colour_run
    run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False)
    result = {"value": 0.7, "interval": (0.65, 0.75), "n_neurons": 100, "n_splits": 50}
    for kappa, interval, near in ((0.025, (-0.03, 0.08), True), (0.15, (0.05, 0.25), True), (0.5, (0.4, 0.6), False)):
        save_calibration(
            store,
            model.info(),
            {"es": {**result, "heldout_kappa": kappa, "heldout_kappa_interval": interval}},
            "r",
            "x",
        )
        note = run_view(store, run_id).defaults["es"].note
        assert f"held-out kappa {kappa:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" in note
        assert ("near chance" in note) is near, note
