"""What a new user tripped on in the explorer (issue 26, points 8, 9, 13, 14 and 15): the neuron's label, top
images and Next in the first screen, with keys; a number box beside each threshold slider and sliders that
span the run's scores, one beside its chart on Thresholds; one short notice per page with the details one
click away; an activation overlay that reads on any image, with a scale, and one map resolution; a "start
here", what the probe is made of, and the whole build's time left."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_app import open_page, texts

from clipeval.analysis import sweeps
from clipeval.analysis.runview import RunView
from clipeval.demo import probe as demo_probe
from clipeval.dissect import maps
from clipeval.ui import build, neuron
from clipeval.ui import maps as ui_maps

pytestmark = pytest.mark.usefixtures("fresh_caches")


def walk(node):
    """Every element of an AppTest tree in page order (a container filled later still shows where it was made)."""
    yield node
    children = getattr(node, "children", None) or {}
    for k in sorted(children):
        yield from walk(children[k])


def page_order(at) -> list:
    return list(walk(at.main))


def first(nodes, test) -> int:
    return next(i for i, n in enumerate(nodes) if test(n))


# ------------------------------------------------------------------------------------ 8: the first screen
def test_neuron_label_and_top_images_come_before_the_details(app_store):
    store, run_id = app_store
    at = open_page("pages/neuron.py")
    nodes = page_order(at)
    label = first(nodes, lambda n: n.type == "markdown" and n.value.startswith("### ") and "“" in n.value)
    summary = first(nodes, lambda n: n.type == "markdown" and n.value.startswith("**Verdicts:**"))
    image = first(nodes, lambda n: n.type == "image")
    details = first(nodes, lambda n: getattr(n, "label", "").startswith("Verdict details"))
    runner_ups = first(nodes, lambda n: getattr(n, "label", "").startswith("Runner-up concepts"))
    toggles = first(nodes, lambda n: n.type == "toggle")
    assert label < summary < image < min(details, runner_ups, toggles)
    # the summary is the verdict table's real-label column in one line
    for judge in ("CP", "ES", "Contrast"):
        assert re.search(rf"{judge} [✓✗] \(", nodes[summary].value), nodes[summary].value


def test_next_and_previous_have_keyboard_shortcuts(app_store):
    at = open_page("pages/neuron.py")
    assert at.button(key="next").proto.shortcut.upper() == "N" and at.button(key="prev").proto.shortcut.upper() == "P"
    at.button(key="next").click().run()
    assert at.number_input(key="unit").value == 1


def test_verdict_summary_leaves_out_judges_that_did_not_score():
    rows = pd.DataFrame(
        [
            {"rater": "VQA", "verdict": "unavailable", "score": "", "threshold": ""},
            {"rater": "CP", "verdict": "✓ correct", "score": "rank 3", "threshold": "p = 0.0100"},
            {"rater": "alice (human)", "verdict": "not judged", "score": "", "threshold": ""},
        ]
    )
    assert neuron.verdict_summary(rows) == "**Verdicts:** CP ✓ (rank 3, p = 0.0100) · alice (human): not judged"


# ------------------------------------------------------------------------------------ 9: thresholds
def test_threshold_range_spans_the_runs_scores(app_store):
    store, run_id = app_store
    view = RunView(store, run_id)
    t = view.table("es")
    scores = np.concatenate([t.neuron_scores(v) for v in t.variants])
    scores = scores[~np.isnan(scores)]
    lo, hi = sweeps.threshold_range(view, "es", 0.25)
    span = scores.max() - scores.min()
    assert lo <= min(scores.min(), 0.25) and hi >= scores.max()
    assert hi - lo < 2.0 and hi - lo <= (max(scores.max(), 0.25) - min(scores.min(), 0.25)) + 0.2 * span + 0.02
    auc_lo, auc_hi = sweeps.threshold_range(view, "contrast", 0.75)
    auc = view.table("contrast").neuron_scores("real")
    assert auc_lo <= np.nanmin(auc) and auc_hi >= max(np.nanmax(auc), 0.75)
    assert sweeps.threshold_range(view, "vqa", 0.5) == (0.0, 1.0)  # not scored here: the rule's whole range


def test_every_threshold_has_a_number_box_and_a_slider_on_the_runs_scores(app_store):
    store, run_id = app_store
    view = RunView(store, run_id)
    at = open_page()
    for e, param in (("cp", "p"), ("es", "tau"), ("contrast", "auc")):
        box = at.sidebar.number_input(key=param)
        slider = at.sidebar.slider(key=f"{param}_sidebar_slider")
        assert slider.value == pytest.approx(box.value), e
        assert (slider.min, slider.max) == sweeps.threshold_range(view, e, box.value), e
    es_slider = at.sidebar.slider(key="tau_sidebar_slider")
    assert es_slider.max - es_slider.min < 2.0  # not -1..1
    # the box and the slider show one value: moving either moves the other
    at.sidebar.number_input(key="tau").set_value(0.5).run()
    assert at.sidebar.slider(key="tau_sidebar_slider").value == pytest.approx(0.5)
    at.sidebar.slider(key="tau_sidebar_slider").set_value(0.4).run()
    assert at.sidebar.number_input(key="tau").value == pytest.approx(0.4)


def test_the_thresholds_page_has_each_slider_beside_its_chart(app_store):
    at = open_page("pages/thresholds.py")
    page = at.main.slider(key="tau_page_slider")
    assert page.value == pytest.approx(at.sidebar.number_input(key="tau").value)
    page.set_value(0.35).run()
    assert at.sidebar.number_input(key="tau").value == pytest.approx(0.35)
    at.main.number_input(key="auc_page_box").set_value(0.6).run()
    assert at.sidebar.number_input(key="auc").value == pytest.approx(0.6)
    assert at.main.slider(key="auc_page_slider").value == pytest.approx(0.6)


# ------------------------------------------------------------------------------------ 13: one notice a page
@pytest.mark.parametrize("page", ["pages/layers.py", "pages/runs.py", "pages/neuron.py"])
def test_one_short_notice_per_page_with_the_details_a_click_away(app_store, page):
    at = open_page(page)
    assert not [c.value for c in at.caption if c.value.startswith(":orange[")], page
    notices = [w.value for w in at.warning if w.value.startswith("**Not CLIP.**")]
    if page != "pages/runs.py":  # Runs lists every run's models itself, not under its title
        assert len(notices) == 1 and len(notices[0]) < 200, notices
    # the models are in the notice's popover, not four lines under every title
    assert not any(c.value.startswith("**Run:**") for c in at.caption), page
    if page != "pages/neuron.py":
        assert any(e.label.startswith("Caveats on these numbers (") for e in at.expander), page


# ------------------------------------------------------------------------------------ 14: overlay and probe
def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_the_overlay_reads_on_a_red_image():
    m = np.zeros((8, 8), np.float32)
    m[:4] = 1.0  # fires on the top half
    out = np.asarray(Image.open(io.BytesIO(maps.overlay(_jpeg((220, 20, 20)), m, 0.55, (0.0, 1.0), None))), float)
    fired, silent = out[10, 48], out[85, 48]
    assert np.abs(fired - silent).sum() > 150, (fired, silent)  # the yellow-to-red map vanished here
    assert silent[0] > 180 and silent[1] < 60  # silent cells keep the image as it is


def test_the_colour_bar_names_both_ends_of_the_scale():
    bar = ui_maps.colour_bar(0.0, 3.25)
    assert ">0</span>" in bar and ">3.25</span>" in bar and "linear-gradient" in bar
    assert all(f"rgb{c}" in bar for c in maps.VIRIDIS)
    assert np.allclose(maps.colormap(np.array([0.0, 1.0])), [maps.VIRIDIS[0], maps.VIRIDIS[-1]])


def test_stored_and_live_maps_say_one_resolution():
    assert (
        ui_maps.resolution_text(24, 24, (56, 56)) == "Map: 24×24 cells (the layer's 56×56, max-pooled to at most 24×24)"
    )
    assert ui_maps.resolution_text(7, 7, (7, 7)) == "Map: 7×7 cells (the layer's 7×7, its own resolution)"


def test_the_live_probe_starts_on_the_units_top_image(run_store, monkeypatch):
    store, run_id, _ = run_store
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    at = open_page("pages/neuron.py", layer="blocks.4", unit=2)
    top = store.neuron_image_details(run_id, "blocks.4", 2, kinds=("top",)).sort_values("rank")
    body = texts(at) + " ".join(i.proto.imgs[0].caption for i in at.get("image") if i.proto.imgs)
    assert f"probe image {int(top['image_id'].iloc[0])} (the unit's top image)" in body
    captions = re.findall(r"Map: (\d+)×(\d+) cells", body)
    assert len(set(captions)) == 1 and all(int(h) <= maps.MAP_SIDE for h, _ in captions), captions
    said = set(re.findall(r"Map: \d+×\d+ cells \(([^)]*)\)", body))
    assert len(said) == 1 and "14×14" in said.pop(), body  # blocks.4 is (112, 14, 14): both give the layer's grid


def test_the_layers_grid_from_its_stored_shape():
    assert ui_maps.layer_grid("(24, 56, 56)", 24, 24, 24) == (56, 56)
    assert ui_maps.layer_grid("(7, 7, 1280)", 1280, 7, 7) == (7, 7)  # channels last
    assert ui_maps.layer_grid("(197, 192)", 192, 14, 14) is None  # tokens: the shape does not say
    assert ui_maps.layer_grid("(24, 56, 56)", 24, 7, 7) is None  # not what these maps were pooled from


# ------------------------------------------------------------------------------------ 15: overview
def test_probe_mix_groups_the_demo_sources():
    mix = demo_probe.probe_mix(
        [("openclipart", 2158), ("procedural", 890), ("scikit-image", 100), ("mvtb-data", 9), ("x", 2)]
    )
    assert mix == [("clip art", 2158), ("drawn colours, shapes and textures", 890), ("photos", 109), ("x", 2)]


def test_the_overview_says_where_to_start_and_what_the_probe_is(app_store):
    store, run_id = app_store
    at = open_page()
    body = texts(at)
    assert "**Start here.**" in body
    assert {p.proto.page.rsplit("/", 1)[-1] for p in at.get("page_link")} >= {"neuron", "layers", "thresholds"}
    fp = store.run(run_id)["probe_fingerprint"]
    n = int(store.probe_sources(fp)["images"].sum())
    assert f"**Probe images:** {n:,}: " in body and "drawn colours, shapes and textures" in body


def test_the_whole_builds_time_left_not_only_the_steps():
    now = time.time()
    state = {"started": now - 600, "steps": 6, "step": 2, "expected_s": 4589.0, "basis": "measured"}
    state["bar"] = {"seconds_left": 180.0}
    assert build.whole_build_text(state, now) == "Whole build: step 2 of 6, about 66 min 29 s left (measured)"
    state["started"] = now - 5000
    assert "longer than a measured build" in build.whole_build_text(state, now)
    assert build.whole_build_text({"started": now}) is None  # a build that gave no plan
