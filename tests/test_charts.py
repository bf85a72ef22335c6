"""The SVG charts (clipeval.ui.charts): one line of SVG each (st.markdown passes an HTML block through
only until a blank line), every mark with its value as a hover title, and no text outside the drawing,
even with the long names real runs have (a file name, a run's settings, a rater's name)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from clipeval.render import charts
from clipeval.render.svg import nice_ticks, text_width, wrap
from clipeval.ui.sources import shares_figure

NS = "{http://www.w3.org/2000/svg}"
LONG = "run demo: EfficientNet-Lite0 | demo probe (full) | common-10k"
FILE = "resnet50_imagenet_broden_layer4_tally_netdissect.csv"


def parse(chart) -> ET.Element:
    svg = chart.svg()
    assert "\n" not in svg  # one line: no blank line can end st.markdown's HTML block
    return ET.fromstring(svg)


def titles(root: ET.Element) -> list[str]:
    return [t.text for t in root.iter(f"{NS}title")]


def text_boxes(root: ET.Element):
    """(left, right, y, text) of every line of text that is not turned, by the same width estimate."""
    for t in root.iter(f"{NS}text"):
        if "transform" in t.attrib:
            continue
        size = float(t.get("font-size"))
        spans = list(t.iter(f"{NS}tspan")) or [t]
        for s in spans:
            x, y, line = float(s.get("x")), float(s.get("y")), s.text or ""
            w = text_width(line, size)
            left = {"start": x, "middle": x - w / 2, "end": x - w}[t.get("text-anchor")]
            yield left, left + w, y, line


def assert_inside(chart):
    root = parse(chart)
    _, _, width, height = (float(v) for v in root.get("viewBox").split())
    for left, right, y, line in text_boxes(root):
        assert left >= -1 and right <= width + 1, (line, left, right, width)
        assert 0 <= y <= height, (line, y, height)


def summary(layers=("blocks.1", "classifier")) -> pd.DataFrame:
    rows = []
    for ev, base in (("CP", 0.2), ("ES", 0.9)):
        for layer in [*layers, "overall"]:
            for variant, share in (("real", base), ("shuffled", base / 2), ("constant", base / 4)):
                rows.append((layer, ev, variant, share, 100, 0))
    return pd.DataFrame(rows, columns=["layer", "evaluator", "variant", "share_correct", "n", "n_dead"])


def sweep_frame() -> pd.DataFrame:
    values = np.linspace(0, 0.05, 11)
    rows = []
    for variant in ("real", "shuffled", "constant"):
        for layer in ("blocks.1", "classifier", "overall"):
            for t in values:
                rows.append((variant, layer, t, 1 - t * 10, 0.4 - t))
    return pd.DataFrame(rows, columns=["variant", "layer", "threshold", "share_correct", "kappa"])


def test_layer_shares_bars_baselines_and_values():
    root = parse(charts.layer_shares(summary(), ["blocks.1", "classifier"]))
    got = titles(root)
    assert "CP blocks.1: 20.0%" in got and "ES overall: 90.0%" in got
    assert "CP, shuffled labels, classifier: 10.0%" in got and "ES, constant labels, overall: 22.5%" in got
    texts = [t for *_, t in text_boxes(root)]
    assert texts.count("90%") == 3 and texts.count("20%") == 4  # a value above the plot per layer (+ a y tick)
    assert "shuffled labels (×)" in texts and "one constant label (–)" in texts


def test_sweep_hover_reads_every_line_at_a_threshold_and_marks_current_and_paper():
    root = parse(charts.sweep_figure(sweep_frame(), "p", 0.02, "share_correct", paper=0.01, current_text="0.0200"))
    got = titles(root)
    at = next(t for t in got if t.startswith("p = 0.02\n"))
    assert "blocks.1: 80%" in at and "overall, shuffled labels: 80%" in at and "overall, constant labels" in at
    assert "current: p = 0.0200" in got and "the paper's value (CLIP): 0.01" in got
    texts = [t for *_, t in text_boxes(root)]
    assert "p = 0.0200" in texts and "paper (CLIP): 0.01" in texts
    kappa = parse(charts.sweep_figure(sweep_frame(), "p", 0.02, "kappa", False))
    at = next(t for t in titles(kappa) if t.startswith("p = 0.02\n"))
    assert "classifier: 0.380" in at and "shuffled" not in at


def test_kappa_heatmap_cells_carry_interval_and_n_and_grey_the_small_ones():
    names = ["CP", "ES", "human: a reviewer with a long name"]
    kappa = pd.DataFrame([[1, 0.5, 0.2], [0.5, 1, -0.3], [0.2, -0.3, 1]], index=names, columns=names, dtype=float)
    n = pd.DataFrame([[100, 100, 12], [100, 100, 12], [12, 12, 12]], index=names, columns=names)
    lo, hi = kappa - 0.1, kappa + 0.1
    chart = charts.kappa_heatmap(kappa, n, lo, hi, min_n=30)
    root = parse(chart)
    got = titles(root)
    assert "CP vs ES: 0.50 [0.40, 0.60] n=100" in got
    assert "ES vs human: a reviewer with a long name: -0.30 [-0.40, -0.20] n=12 (too few)" in got
    grey = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None and r.get("fill") == "#e6e6e6"]
    assert len(grey) == 5  # the two pairs with the human, both ways, and the human's own 12
    assert_inside(chart)


def test_labellers_chart_is_horizontal_with_long_names_wrapped():
    """Labellers' names are long (a run's settings, a file name): as x labels they were turned and cut;
    the bars go horizontal, with the names wrapped left of them."""
    shares = pd.DataFrame(
        [(name, ev, v, 100, 0.01, 0.0) for name in (LONG, FILE) for ev, v in (("CP", 0.2), ("ES", 0.6))],
        columns=["labeller", "evaluator", "correct", "n", "shuffled", "run constant"],
    )
    chart = shares_figure(shares)
    root = parse(chart)
    bars = [r for r in root.iter(f"{NS}rect") if (r.find(f"{NS}title") is not None)]
    assert len(bars) == 4 and len({r.get("height") for r in bars}) == 1
    widths = {r.find(f"{NS}title").text.split(":")[0]: float(r.get("width")) for r in bars}
    assert widths[f"ES, {FILE}"] == pytest.approx(3 * widths[f"CP, {FILE}"], rel=0.01)
    lines = [t for *_, t in text_boxes(root)]
    assert "run demo: EfficientNet-Lite0 |" in lines and all(len(t) <= 30 for t in lines)
    assert_inside(chart)


def test_time_per_stage_chart_has_its_legend_above_and_run_names_on_two_lines():
    """At 800 px a legend on the right took half the chart and cut the run names: the legend goes above
    the bars in rows, each run's name is wrapped with its id on a line of its own."""
    steps = ["dissect: load", "dissect: similarity", "evaluate: CP", "evaluate: ES"]
    t = pd.DataFrame(
        [(f"concepts common-{n}k · {LONG}", f"{n:02d}abcdef1234", s, 10.0) for n in (10, 20) for s in steps],
        columns=["name", "run", "step", "seconds"],
    )
    chart = charts.timings_bar(t)
    root = parse(chart)
    boxes = list(text_boxes(root))
    legend_y = max(y for _, _, y, line in boxes if line in steps)
    bar_y = min(float(r.get("y")) for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None)
    assert legend_y < bar_y
    lines = [line for *_, line in boxes]
    assert "10abcdef" in lines and "20abcdef" in lines
    assert "evaluate: CP: 10.0 s" in titles(root)
    assert_inside(chart)


def test_label_bars_histogram_and_confusion_values():
    counts = pd.DataFrame({"label": ["dog", FILE], "neurons": [12, 3], "share": [0.5, 0.1]})
    chart = charts.label_bars(counts)
    assert {"dog: 12 neurons", f"{FILE}: 3 neurons"} <= set(titles(parse(chart)))
    assert_inside(chart)
    hist = pd.DataFrame({"lo": [0.0, 0.5], "hi": [0.5, 1.0], "count": [40, 2]})
    got = titles(parse(charts.activation_histogram(hist, [0.9, 0.8, 0.7], k=2)))
    assert "activation 0.000 to 0.500: 40 images" in got and "top image #1: activation 0.900" in got
    assert "top image #3: activation 0.700 (not judged: beyond top-2)" in got
    conf = pd.DataFrame([[5, 1], [2, 7]], index=["correct", "not correct"], columns=["correct", "not correct"])
    chart = charts.confusion_heatmap(conf, "CP", "human: alice")
    assert "CP: not correct, human: alice: correct: 2 neurons" in titles(parse(chart))
    assert_inside(chart)


def test_titles_and_names_are_escaped():
    counts = pd.DataFrame({"label": ["<b>&co</b>"], "neurons": [1], "share": [1.0]})
    svg = charts.label_bars(counts).svg()
    assert "<b>" not in svg and "&lt;b&gt;&amp;co&lt;/b&gt;" in svg
    assert ET.fromstring(svg) is not None


def test_ticks_wrap_and_nan_breaks_a_line():
    assert nice_ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 0.05, 5) == [0, 0.01, 0.02, 0.03, 0.04, 0.05]
    assert nice_ticks(-0.3, 0.45, 4) == pytest.approx([-0.2, 0, 0.2, 0.4])
    assert wrap("a b c", 3) == ["a b", "c"] and wrap("x" * 7, 3) == ["xxx", "xxx", "x"]
    frame = sweep_frame()
    frame.loc[(frame["layer"] == "blocks.1") & (frame["threshold"] == 0.025), "share_correct"] = np.nan
    svg = charts.sweep_figure(frame, "p", 0.02, "share_correct").svg()
    assert len(re.findall(r"<polyline[^>]*><title>blocks\.1</title>", svg)) == 2  # the gap is left open


@pytest.mark.parametrize("width", [charts.FULL, charts.NARROW])
def test_full_width_charts_keep_their_text_inside_and_apart_at_both_drawings(width):
    """A full-width chart is drawn at FULL and at NARROW (an 800 px window's column): at both, no text
    leaves the drawing and no two labels on one line run into each other."""
    layers = ["blocks.1", "blocks.3", "blocks.5", "bn2", "classifier"]
    rows = [
        (layer, ev, variant, 0.19, 100, 0)
        for ev in ("CP", "ES", "Contrast")
        for layer in [*layers, "overall"]
        for variant in ("real", "shuffled", "constant")
    ]
    shares = pd.DataFrame(rows, columns=["layer", "evaluator", "variant", "share_correct", "n", "n_dead"])
    names = ["CP", "ES", "Contrast", "automatic: ImageNet class (automatic)"]
    kappa = pd.DataFrame(np.full((4, 4), -0.25), index=names, columns=names)
    n = pd.DataFrame(np.full((4, 4), 1000), index=names, columns=names)
    labellers = pd.DataFrame(
        [(name, ev, 0.5, 100, 0.01, 0.0) for name in (LONG, FILE) for ev in ("CP", "ES")],
        columns=["labeller", "evaluator", "correct", "n", "shuffled", "run constant"],
    )
    t = pd.DataFrame(
        [(LONG, "10abcdef1234", s, 10.0) for s in ("dissect: load", "evaluate: CP")],
        columns=["name", "run", "step", "seconds"],
    )
    hist = pd.DataFrame({"lo": [0.0, 0.5], "hi": [0.5, 1.0], "count": [40, 2]})
    for chart in (
        charts.layer_shares(shares, layers, width=width),
        charts.kappa_heatmap(kappa, n, kappa - 0.5, kappa + 0.5, 30, width=width),
        shares_figure(labellers, width=width),
        charts.timings_bar(t, width=width),
        charts.activation_histogram(hist, [0.9], 1, width=width),
    ):
        assert_inside(chart)
        boxes = sorted(text_boxes(parse(chart)), key=lambda b: (round(b[2], 1), b[0]))
        for a, b in zip(boxes, boxes[1:]):
            if round(a[2], 1) == round(b[2], 1):
                assert a[1] <= b[0] + 1, (a, b)


def test_a_layer_name_wider_than_its_bars_gets_smaller_not_cut():
    layers = ["blocks.1", "blocks.3", "blocks.5", "bn2", "classifier"]
    rows = [(layer, "CP", "real", 0.2, 100, 0) for layer in [*layers, "overall"]]
    shares = pd.DataFrame(rows, columns=["layer", "evaluator", "variant", "share_correct", "n", "n_dead"])
    lines = [t for *_, t in text_boxes(parse(charts.layer_shares(shares, layers, width=charts.NARROW)))]
    assert "classifier" in lines and "classifie" not in lines


def test_empty_inputs_draw_an_empty_chart_not_an_error():
    """A pair matrix, a timings table or a labellers' table with no rows is drawn empty (the longest name
    of no names was a ValueError)."""
    for chart in (
        charts.kappa_heatmap(pd.DataFrame()),
        charts.timings_bar(pd.DataFrame(columns=["run", "name", "step", "seconds"])),
        shares_figure(pd.DataFrame(columns=["labeller", "evaluator", "correct", "n", "shuffled", "run constant"])),
    ):
        assert not titles(parse(chart))
