"""The plotly charts (clipeval.render.charts): each trace's data is the frame it was drawn from, every hover
carries its value (and n where there is one), the current and the paper's thresholds are marked, and no
colour assumes a light page."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from clipeval.render import charts

LONG = "run demo: EfficientNet-Lite0 | demo probe (full) | common-10k"
FILE = "resnet50_imagenet_broden_layer4_tally_netdissect.csv"


def summary(layers=("blocks.1", "classifier")) -> pd.DataFrame:
    rows = []
    for ev, base in (("CP", 0.2), ("ES", 0.9)):
        for layer in [*layers, "overall"]:
            for variant, share in (("real", base), ("shuffled", base / 2), ("constant", base / 4)):
                rows.append((layer, ev, variant, share, 100 if layer != "overall" else 200, 0))
    return pd.DataFrame(rows, columns=["layer", "evaluator", "variant", "share_correct", "n", "n_dead"])


def sweep_frame() -> pd.DataFrame:
    values = np.linspace(0, 0.05, 11)
    rows = []
    for variant in ("real", "shuffled", "constant"):
        for i, layer in enumerate(("blocks.1", "classifier", "overall")):
            for t in values:
                scale = {"real": 1.0, "shuffled": 0.5, "constant": 0.25}[variant]
                rows.append((variant, layer, t, scale * (1 - t * 10) - i / 100, 0.4 - t - i / 10))
    return pd.DataFrame(rows, columns=["variant", "layer", "threshold", "share_correct", "kappa"])


def trace(fig: go.Figure, name: str):
    hits = [t for t in fig.data if t.name == name]
    assert len(hits) == 1, [t.name for t in fig.data]
    return hits[0]


def test_layer_shares_bars_and_baselines_are_the_summary():
    s = summary()
    fig = charts.layer_shares(s, ["blocks.1", "classifier"])
    order = ["blocks.1", "classifier", "overall"]
    for ev in ("CP", "ES"):
        bar = trace(fig, ev)
        real = s[(s["evaluator"] == ev) & (s["variant"] == "real")].set_index("layer").reindex(order)
        assert list(bar.x) == order and list(bar.y) == list(real["share_correct"])
        assert list(bar.customdata) == [100, 100, 200] and "of %{customdata:,} neurons" in bar.hovertemplate
        assert bar.marker.color == charts.COLORS[ev]
    marks = [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert {t.name for t in marks} == {"shuffled labels (×)", "one constant label (–)"}
    shuffled = [t for t in marks if t.legendgroup == "shuffled"]
    assert [list(t.y) for t in shuffled] == [[0.1] * 3, [0.45] * 3]
    assert sum(bool(t.showlegend) for t in shuffled) == 1  # one legend entry per baseline, not per evaluator


def test_layer_shares_values_sit_above_their_baseline_markers():
    s = summary()
    s.loc[(s["evaluator"] == "CP") & (s["variant"] == "shuffled"), "share_correct"] = 0.3  # above CP's 0.2 bar
    fig = charts.layer_shares(s, ["blocks.1", "classifier"])
    texts = {t.offsetgroup: t for t in fig.data if t.type == "scatter" and t.mode == "text"}
    assert set(texts) == {"CP", "ES"}
    assert list(texts["CP"].text) == ["20%"] * 3 and list(texts["ES"].text) == ["90%"] * 3
    assert np.allclose(texts["CP"].y, 0.3 + charts.LABEL_LIFT)  # over the shuffled marker, not on it
    assert np.allclose(texts["ES"].y, 0.9 + charts.LABEL_LIFT)  # over its own bar


def test_sweep_traces_are_the_sweep_with_unified_hover_and_marked_thresholds():
    sw = sweep_frame()
    fig = charts.sweep_figure(sw, "p", 0.02, "share_correct", paper=0.01, current_text="0.0200")
    assert fig.layout.hovermode == "x unified"
    assert [t.name for t in fig.data] == [
        "overall",
        "blocks.1",
        "classifier",
        "overall, shuffled labels",
        "overall, constant labels",
    ]
    for layer in ("blocks.1", "classifier", "overall"):
        want = sw[(sw["variant"] == "real") & (sw["layer"] == layer)]
        got = trace(fig, layer)
        np.testing.assert_allclose(got.x, want["threshold"])
        np.testing.assert_allclose(got.y, want["share_correct"])
        assert got.hovertemplate == f"{layer}: %{{y:.1%}}<extra></extra>"
    want = sw[(sw["variant"] == "shuffled") & (sw["layer"] == "overall")]
    np.testing.assert_allclose(trace(fig, "overall, shuffled labels").y, want["share_correct"])
    assert trace(fig, "overall, shuffled labels").line.dash == "dash"
    colors = [t.line.color for t in fig.data if t.name in ("blocks.1", "classifier")]
    assert len(set(colors)) == 2 and set(colors) <= set(charts.PALETTE)
    lines = {s.x0: s.line for s in fig.layout.shapes}
    assert set(lines) == {0.02, 0.01} and lines[0.01].dash == "dash" and lines[0.02].color == charts.VERMILLION
    texts = [a.text for a in fig.layout.annotations]
    assert "current: p = 0.0200" in texts and "paper (CLIP): 0.01" in texts
    assert fig.layout.title.text == "Share judged correct against p, per layer"
    assert fig.layout.yaxis.tickformat == ".0%"


def test_kappa_sweep_has_no_baselines_and_three_decimals():
    sw = sweep_frame()
    fig = charts.sweep_figure(sw, "tau", 0.02, "kappa", False, title="ES: kappa with alice")
    assert [t.name for t in fig.data] == ["overall", "blocks.1", "classifier"]
    want = sw[(sw["variant"] == "real") & (sw["layer"] == "classifier")]
    np.testing.assert_allclose(trace(fig, "classifier").y, want["kappa"])
    assert trace(fig, "classifier").hovertemplate == "classifier: %{y:.3f}<extra></extra>"
    assert fig.layout.title.text == "ES: kappa with alice" and fig.layout.yaxis.tickformat is None


def test_a_threshold_outside_the_swept_range_is_not_drawn():
    """A vertical line outside the data stretched the x axis: only thresholds inside the range are marked."""
    fig = charts.sweep_figure(sweep_frame(), "p", 0.02, "share_correct", paper=0.5)
    assert [s.x0 for s in fig.layout.shapes] == [0.02]
    assert list(fig.layout.xaxis.range) == [0.0, 0.05]
    assert not charts.sweep_figure(sweep_frame(), "p", 0.9, "share_correct").layout.shapes


def test_kappa_heatmap_hover_has_n_and_interval_and_greys_small_cells():
    names = ["CP", "ES", "human: a reviewer with a long name"]
    kappa = pd.DataFrame([[1, 0.5, 0.2], [0.5, 1, -0.3], [0.2, -0.3, 1]], index=names, columns=names, dtype=float)
    n = pd.DataFrame([[100, 100, 12], [100, 100, 12], [12, 12, 12]], index=names, columns=names)
    fig = charts.kappa_heatmap(kappa, n, kappa - 0.1, kappa + 0.1, min_n=30)
    colored, grey = fig.data
    assert colored.customdata[0][1] == "CP vs ES<br>kappa 0.50<br>95% interval [0.40, 0.60]<br>n=100"
    assert colored.text[0][1] == "0.50<br>[0.40, 0.60]<br>n=100"
    assert grey.customdata[1][2].endswith("kappa -0.30<br>95% interval [-0.40, -0.20]<br>n=12 (under 30: too few)")
    z = np.array(colored.z, dtype=float)
    small = np.isnan(z)
    # the two pairs with the human, both ways, and the human's own 12: grey, not coloured
    assert small.sum() == 5 and small[0, 2] and small[2, 2] and not small[0, 1]
    assert np.array_equal(~np.isnan(np.array(grey.z, dtype=float)), small)
    assert grey.colorscale[0][1] == charts.MUTED_CELL
    assert (colored.zmin, colored.zmax) == (-1, 1)


def test_labeller_shares_are_horizontal_bars_of_the_shares():
    shares = pd.DataFrame(
        [(name, ev, v, 100, 0.01, 0.0) for name in (LONG, FILE) for ev, v in (("CP", 0.2), ("ES", 0.6))],
        columns=["labeller", "evaluator", "correct", "n", "shuffled", "run constant"],
    )
    fig = charts.labeller_shares(shares)
    es = trace(fig, "ES")
    assert es.orientation == "h" and list(es.y) == [LONG, FILE] and list(es.x) == [0.6, 0.6]
    assert "of %{customdata:,} units" in es.hovertemplate and list(es.customdata) == [100, 100]
    assert {t.name for t in fig.data if t.type == "scatter"} == {"shuffled (×)", "constant (|)"}


def test_timings_bar_stacks_steps_per_run_with_the_legend_below():
    steps = ["dissect: load", "dissect: similarity", "evaluate: CP"]
    t = pd.DataFrame(
        [(f"common-{n}k", f"{n:02d}abcdef1234", s, float(n + i)) for n in (10, 20) for i, s in enumerate(steps)],
        columns=["name", "run", "step", "seconds"],
    )
    fig = charts.timings_bar(t)
    assert [tr.name for tr in fig.data] == steps and fig.layout.barmode == "stack"
    cp = trace(fig, "evaluate: CP")
    assert list(cp.y) == ["common-10k<br>10abcdef", "common-20k<br>20abcdef"] and list(cp.x) == [12.0, 22.0]
    # below the axis (in rows above the plot it covered the title at 800 px)
    assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"


def test_label_bars_histogram_and_confusion_values():
    counts = pd.DataFrame({"label": ["dog", FILE], "neurons": [12, 3], "share": [0.5, 0.1]})
    bars = charts.label_bars(counts).data[0]
    assert list(bars.y) == ["dog", FILE] and list(bars.x) == [12, 3]
    hist = pd.DataFrame({"lo": [0.0, 0.5], "hi": [0.5, 1.0], "count": [40, 2]})
    fig = charts.activation_histogram(hist, [0.9, 0.8, 0.7], k=2)
    assert list(fig.data[0].y) == [40, 2] and list(fig.data[0].x) == [0.25, 0.75]
    judged, beyond = fig.data[1], fig.data[2]
    assert list(judged.x) == [0.9, 0.9, None, 0.8, 0.8, None] and judged.line.dash == "solid"
    assert list(beyond.x) == [0.7, 0.7, None] and list(beyond.customdata) == [3, 3, None]
    assert beyond.line.dash == "dot" and beyond.name == "beyond the top k"
    conf = pd.DataFrame([[5, 1], [2, 7]], index=["correct", "not correct"], columns=["correct", "not correct"])
    heat = charts.confusion_heatmap(conf, "CP", "human: alice")
    assert heat.data[0].z.tolist() == [[5, 1], [2, 7]] and "human: alice: %{x}" in heat.data[0].hovertemplate
    assert heat.layout.title.text.replace("<br>", " ") == "Confusion matrix: CP against human: alice, 15 neurons"


def test_names_are_escaped():
    counts = pd.DataFrame({"label": ["<b>&co</b>"], "neurons": [1], "share": [1.0]})
    assert list(charts.label_bars(counts).data[0].y) == ["&lt;b&gt;&amp;co&lt;/b&gt;"]
    fig = charts.confusion_heatmap(pd.DataFrame([[1]], index=["a"], columns=["b"]), "<i>x</i>", "y")
    assert "<i>" not in fig.data[0].hovertemplate


def test_no_chart_sets_a_page_colour_or_template():
    """The app draws charts in Streamlit's theme (light or dark): a figure that named a template, a
    background or a text colour would keep the light page's colours in the dark theme."""
    names = ["CP", "ES"]
    kappa = pd.DataFrame([[1.0, 0.3], [0.3, 1.0]], index=names, columns=names)
    t = pd.DataFrame([("x", "abcdefgh12", "load", 1.0)], columns=["name", "run", "step", "seconds"])
    hist = pd.DataFrame({"lo": [0.0], "hi": [1.0], "count": [3]})
    for fig in (
        charts.layer_shares(summary(), ["blocks.1", "classifier"]),
        charts.sweep_figure(sweep_frame(), "p", 0.02, "share_correct", paper=0.01),
        charts.kappa_heatmap(kappa, kappa * 0 + 100, kappa, kappa, 30),
        charts.timings_bar(t),
        charts.activation_histogram(hist, [0.5], 1),
    ):
        layout = fig.to_plotly_json()["layout"]
        layout.pop("template", None)  # plotly's default, which st.plotly_chart replaces with its theme
        text = json.dumps(layout)
        assert "bgcolor" not in text and '"template"' not in text, text[:300]
        assert "font" not in layout or "color" not in layout["font"]
        assert fig.layout.title.text  # a title that says what the chart shows


def test_empty_inputs_draw_an_empty_chart_not_an_error():
    for fig in (
        charts.kappa_heatmap(pd.DataFrame()),
        charts.timings_bar(pd.DataFrame(columns=["run", "name", "step", "seconds"])),
        charts.labeller_shares(
            pd.DataFrame(columns=["labeller", "evaluator", "correct", "n", "shuffled", "run constant"])
        ),
        charts.activation_histogram(pd.DataFrame(columns=["lo", "hi", "count"]), [], 5),
        charts.label_bars(pd.DataFrame(columns=["label", "neurons", "share"])),
    ):
        assert isinstance(fig, go.Figure)
