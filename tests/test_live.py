"""Probe a unit live: the run's target network on one image, read like the run reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipeval.dissect.live import LiveProbe, TargetUnavailable, histogram_percentile


def test_a_probe_image_reads_as_the_run_stored_it(built_run):
    """A unit's top image, probed live, gives the activation the run stored for it, a percentile near
    the top (exact, from the run's cached activations), and a 14x14 map whose mean is that activation."""
    from clipeval.store import Store

    db, run_id, _ = built_run
    store = Store(db, read_only=True)
    try:
        probe = LiveProbe(store, run_id)
        top = store.neuron_image_details(run_id, "blocks.4", 5, kinds=("top",))
        n = int(store.complete_run(run_id)["n_images"])
        first = top.sort_values("rank").iloc[0]
        reading = probe.read(Image.open(first["path"]), "blocks.4", 5)
        assert reading.activation == pytest.approx(first["activation"], rel=1e-3, abs=1e-4)
        assert reading.percentile >= 100 * (1 - 1.0 / n) and reading.percentile_how.startswith("exact")
        assert reading.map.shape == (14, 14) and reading.map.mean() == pytest.approx(
            reading.activation, rel=1e-3, abs=1e-4
        )
        last = probe.read(Image.open(first["path"]), "classifier", 5)
        assert last.map is None  # a vector layer has no map
        with pytest.raises(Exception, match="units 0.."):
            probe.read(Image.open(first["path"]), "blocks.4", 10_000)
    finally:
        store.close()


def test_a_keyed_image_runs_the_network_once_per_layer(built_run, monkeypatch):
    """The Neuron explorer reruns on every slider step and unit change: a reading of the same image and
    layer reuses the forward pass (it was 0.1-0.25 s of every rerun of the page), another layer or image
    runs it again, and the answers are those of an uncached reading."""
    from clipeval.store import Store

    db, run_id, _ = built_run
    store = Store(db, read_only=True)
    try:
        probe = LiveProbe(store, run_id)
        path = store.neuron_image_details(run_id, "blocks.4", 5, kinds=("top",))["path"].iloc[0]
        plain = [probe.read(Image.open(path), "blocks.4", u) for u in (5, 6)]
        calls = []
        forward = probe.forward
        monkeypatch.setattr(probe, "forward", lambda image, layer: calls.append(layer) or forward(image, layer))
        keyed = [probe.read(Image.open(path), "blocks.4", u, key=("probe", 1)) for u in (5, 6, 5)]
        assert calls == ["blocks.4"]
        assert [r.activation for r in keyed] == [plain[0].activation, plain[1].activation, plain[0].activation]
        np.testing.assert_array_equal(keyed[2].map, plain[0].map)
        probe.read(Image.open(path), "classifier", 5, key=("probe", 1))
        probe.read(Image.open(path), "blocks.4", 5, key=("probe", 2))
        assert calls == ["blocks.4", "classifier", "blocks.4"]
    finally:
        store.close()


def test_histogram_percentile():
    hist = pd.DataFrame({"bin": [0, 1], "lo": [0.0, 1.0], "hi": [1.0, 2.0], "count": [30, 10]})
    assert histogram_percentile(hist, 1.0) == pytest.approx(75.0)
    assert histogram_percentile(hist, 0.5) == pytest.approx(37.5)
    assert histogram_percentile(hist, 5.0) == 100.0 and histogram_percentile(hist, -1.0) == 0.0


def test_a_run_without_a_target_says_why(run_store, tmp_path):
    from clipeval.dissect.descriptions import import_descriptions

    store, _, _ = run_store
    f = tmp_path / "d.csv"
    pd.DataFrame({"layer": ["layer4"], "unit": [0], "description": ["dog"], "similarity": [0.2]}).to_csv(f, index=False)
    run_id = import_descriptions(store, f, progress=False)
    with pytest.raises(TargetUnavailable, match="without a target"):
        LiveProbe(store, run_id)


def test_neuron_page_probes_a_picked_image(run_store, monkeypatch, fresh_caches):
    from tests.test_app import open_page, texts

    store, run_id, _ = run_store
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    at = open_page("pages/neuron.py", layer="blocks.4", unit=2)
    assert "Probe this unit with an image" in texts(at)
    labels = [m.label for m in at.metric]
    assert any(l.startswith("blocks.4 / unit 2 activation") for l in labels)
    assert any(l.startswith("Percentile") for l in labels)
    assert at.toggle(key="map_on").value is True  # maps stored by the run's probe pass
    # the uploader (its own scripts in the browser) is drawn when its expander is opened
    assert not at.get("file_uploader")
    at.session_state["live_upload_open"] = True
    at.run()
    assert not at.exception and len(at.get("file_uploader")) == 1
    fp = store.run(run_id)["probe_fingerprint"]
    every = store.probe_images(fp).set_index("image_id")
    assert store.probe_image(fp, 3)["path"] == every.loc[3, "path"] and store.probe_image(fp, 10**6) is None


def test_the_run_device_where_this_machine_has_it_else_the_cpu_said():
    import json

    import torch

    from clipeval.dissect.live import run_placement

    gpu_run = {
        "models_json": json.dumps({"compute": {"device": "cuda:0", "dtype": "bfloat16"}}),
        "config_json": json.dumps({"dtype": "bfloat16"}),
    }
    placement, note = run_placement(gpu_run)
    if torch.cuda.is_available():
        assert placement.device.type == "cuda" and placement.dtype == torch.bfloat16 and note == ""
    else:
        assert placement.device.type == "cpu" and placement.dtype == torch.float32
        assert "cuda:0 in bfloat16" in note and "no GPU" in note
    cpu_run = {"models_json": json.dumps({"compute": {"device": "cpu", "dtype": "float32"}}), "config_json": "{}"}
    placement, note = run_placement(cpu_run)
    assert placement.device.type == "cpu" and placement.dtype == torch.float32 and note == ""


@pytest.fixture(scope="module")
def clip_art_run(tmp_path_factory, probe_dir):
    """(db path, run id, the transparent PNG's image id and path) of a small run whose probe holds one
    clip-art PNG: a picture on a transparent background whose hidden pixels are black, as exporters
    leave them; the probe pass puts it on white."""
    import warnings

    from clipeval.dissect import pipeline
    from clipeval.store import Store
    from tests.conftest import small_config

    root = tmp_path_factory.mktemp("clipart")
    folder = root / "probe"
    folder.mkdir()
    photos = sorted(p for p in probe_dir.rglob("*.png"))[:5]
    for i, p in enumerate(photos):
        Image.open(p).convert("RGB").save(folder / f"img{i}.png")
    art = np.asarray(Image.open(photos[0]).convert("RGBA").resize((160, 160))).copy()
    yy, xx = np.mgrid[:160, :160]
    hidden = (yy - 80) ** 2 + (xx - 80) ** 2 > 50**2
    art[hidden] = 0  # rgba (0, 0, 0, 0)
    Image.fromarray(art, "RGBA").save(folder / "img9_clipart.png")
    store = Store(root / "runs.duckdb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_id = pipeline.dissect(small_config(folder, k=2), store, cache_dir=root / "cache", progress=False)
    paths = list(store.probe_images(store.complete_run(run_id)["probe_fingerprint"])["path"])
    store.close()
    i = next(i for i, p in enumerate(paths) if p.endswith("img9_clipart.png"))
    return root / "runs.duckdb", run_id, i, paths[i]


def test_a_transparent_image_reads_live_as_the_probe_pass_stored_it(clip_art_run):
    """Issue 24.6: the live probe read a transparent PNG on black (0.618 where the run stored 1.117)."""
    from clipeval.store import Store

    db, run_id, i, path = clip_art_run
    store = Store(db, read_only=True)
    try:
        probe = LiveProbe(store, run_id)
        for layer in ("blocks.4", "classifier"):
            stored = probe.probe_activations(layer)[i]
            live, _, _ = probe.forward(Image.open(path), layer)
            np.testing.assert_allclose(live.numpy(), stored, rtol=1e-3, atol=1e-4)
    finally:
        store.close()


def test_the_neuron_page_probes_a_transparent_image_as_stored(clip_art_run, monkeypatch, fresh_caches):
    """The page decodes the picked probe image (and an upload) with the probe pass's own decoder: on the
    unit where a black background changes the reading most, it shows the stored activation."""
    from clipeval.store import Store
    from tests.test_app import metric, open_page
    from tests.test_decode import strip_png

    db, run_id, i, path = clip_art_run
    store = Store(db, read_only=True)
    try:
        probe = LiveProbe(store, run_id)
        stored = probe.probe_activations("blocks.4")[i]
        on_black, _, _ = probe.forward(Image.open(path).convert("RGB"), "blocks.4")
    finally:
        store.close()
    unit = int(np.argmax(np.abs(on_black.numpy() - stored)))
    assert abs(float(on_black[unit]) - stored[unit]) > 0.01  # the two decodings tell apart on this unit
    monkeypatch.setenv("CLIPEVAL_DB", str(db))
    at = open_page("pages/neuron.py", layer="blocks.4", unit=unit, live_image=i)
    assert metric(at, f"blocks.4 / unit {unit} activation") == f"{stored[unit]:.3f}"
    at.session_state["live_image"] = 0 if i else 1  # the upload, not the picked image, must be read
    at.session_state["live_upload_open"] = True
    at.run()
    at.get("file_uploader")[0].set_value(("clipart.png", Path(path).read_bytes(), "image/png"))
    at.run()
    assert not at.exception and metric(at, f"blocks.4 / unit {unit} activation") == f"{stored[unit]:.3f}"
    at.get("file_uploader")[0].set_value(("strip.png", strip_png(60000, 1), "image/png"))
    at.run()
    assert not at.exception and any("strip.png: 60000x1 pixels: aspect ratio 60,000:1" in e.value for e in at.error), [
        e.value for e in at.error
    ]
