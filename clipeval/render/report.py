"""One self-contained HTML report of a run, to send around (as NetDissect's per-layer report is).

Everything is inside the file: thumbnails as data: URIs (each image once, in a CSS class), the charts as
plotly figures (the same as the app's, clipeval.render.charts) drawn by the one copy of plotly.js in the
file's head, no web fonts. It holds the run's models and settings, the per-layer shares judged
correct beside their baselines with 95% intervals, the threshold sensitivity plots, agreement
tables with n and intervals, the labellers side by side (if the run has label sources) and a page
of units per layer (top images, label, verdicts). No model runs: it is made from stored raw scores.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from plotly.offline import get_plotlyjs

from clipeval.analysis.headlines import weak_evaluators
from clipeval.analysis.intervals import MIN_N, N_BOOT, pairwise_with_intervals, share_interval
from clipeval.analysis.runview import EVALUATOR_TITLES, RunView
from clipeval.analysis.sources import LabellerView
from clipeval.analysis.sweeps import default_range, sweep
from clipeval.errors import ClipevalError, check_path
from clipeval.evaluators.judges import PAPER_THRESHOLDS
from clipeval.evaluators.rules import RULES
from clipeval.files import atomic_write
from clipeval.formats import json_cell, percent
from clipeval.render.charts import CONFIG, layer_shares, sweep_figure
from clipeval.render.tables import describe_model, stand_in_text, stand_ins, styled
from clipeval.store import Store

# Imported inside the functions that use them: Pillow and the image decoder, only for the report's
# thumbnails.

TEMPLATE = "plotly_white"
THUMB_PX = 72  # thumbnails are shrunk to this square: a 2,600-unit report stays a few MB
ORDER = ("vqa", "cp", "es", "contrast")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;
  background:#fafafa;line-height:1.4}
main{max-width:1280px;margin:0 auto;padding:16px 28px 60px}
h1{font-size:26px;margin:18px 0 4px} h2{font-size:21px;margin:34px 0 8px;border-bottom:2px solid #ddd;
  padding-bottom:4px} h3{font-size:17px;margin:22px 0 6px}
nav{background:#fff;border:1px solid #ddd;padding:8px 14px;margin:12px 0;font-size:14px}
nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f0f2f6}
.note{color:#555;font-size:13px;margin:4px 0 10px} .warn{color:#a55a00}
.units{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px}
.unit{background:#fff;border:1px solid #ddd;padding:6px 8px;font-size:12px}
.unit .head{font-size:13px;margin-bottom:4px} .unit .lab{font-weight:600}
.imgs{display:flex;gap:3px;margin:3px 0}
.im{width:72px;height:72px;background-size:cover;background-position:center;border:1px solid #ccc}
.v{display:inline-block;margin-right:8px} .yes{color:#1e7d32;font-weight:600} .no{color:#b3261e}
.plot{background:#fff;border:1px solid #ddd;margin:6px 0;padding:4px}
.banner{background:#fff4e5;border:1px solid #f0b45a;color:#6b3b00;padding:8px 12px;font-size:14px}
.plots{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-end} .plots>*{flex:1 1 460px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(x, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


def _table(df: pd.DataFrame, left=()) -> str:
    """df through pandas' Styler, every cell escaped; `left` columns align left (the report's cells align right).
    The Styler's id is the table's content hash, so the same run makes the same file."""
    styler = styled(df, markup="html").set_uuid(hashlib.sha1(df.to_csv().encode()).hexdigest()[:8])
    cols = [i for i, c in enumerate(df.columns) if c in left]
    if cols:
        styler = styler.set_properties(subset=[styler.columns[i] for i in cols], **{"text-align": "left"})
        styler = styler.set_table_styles([{"selector": f"th.col{i}", "props": "text-align: left"} for i in cols])
    return styler.to_html()


def _thumb(jpeg: bytes) -> str:
    from PIL import Image

    from clipeval.datasets.probe import load_rgb

    img = load_rgb(io.BytesIO(jpeg))
    img.thumbnail((THUMB_PX, THUMB_PX))
    canvas = Image.new("RGB", (THUMB_PX, THUMB_PX), "white")
    canvas.paste(img, ((THUMB_PX - img.width) // 2, (THUMB_PX - img.height) // 2))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=70)
    return base64.b64encode(out.getvalue()).decode()


def _fig(fig) -> str:
    """A figure (clipeval.render.charts) in a frame, drawn by the plotly.js that the report's head holds once.
    The template is named: plotly's default is the app's Streamlit template once Streamlit is imported (the
    Report page), whose colours are placeholders only Streamlit's page fills in."""
    fig.update_layout(template=TEMPLATE)
    return (
        "<div class='plot'>"
        + fig.to_html(full_html=False, include_plotlyjs=False, config=CONFIG, default_height=fig.layout.height)
        + "</div>"
    )


def _without_paths(value):
    """A setting with every local file path cut to its last part: the report is sent to people for whom
    this machine's folders mean nothing (and who need not learn them)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or (len(value) > 2 and value[1:3] in (":\\", ":/"))):
        return value.rstrip("/\\").replace("\\", "/").split("/")[-1] or value
    return value


def _without_paths_in(text: str) -> str:
    """_without_paths for the paths inside a sentence (a reason naming the file it did not find)."""
    return re.sub(r"(?<![\w.])~?/(?:[^\s'\"/]+/)*([^\s'\"/]*)", lambda m: m.group(1) or "/", text)


def _score(evaluator_title: str, score) -> str:
    """A unit's score as the report prints it: CP's is a rank, a whole number."""
    if score is None or (isinstance(score, float) and np.isnan(score)):
        return ""
    return f"{int(score)}" if evaluator_title == EVALUATOR_TITLES["cp"] else _num(score, 3)


def stand_in_banner(store: Store, view: RunView) -> str:
    """The report's 'not CLIP' banner when an offline stand-in made the labels or verdicts ('' otherwise)."""
    text = stand_in_text(stand_ins(view.run, store.latest_evaluations(view.run_id)))
    return f"<p class='banner'><strong>Not CLIP.</strong> {_e(text)}</p>" if text else ""


def check_output(out) -> Path:
    """Bad output paths fail before any work."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ClipevalError(f"the report is an HTML file: give OUT.html, not {out.name!r}")
    return check_path(out, "report", "write")


def settings_section(view: RunView) -> str:

    run = view.run
    cfg = json_cell(run.get("config_json"))
    models = json_cell(run.get("models_json"))
    rows = [
        ("run", f"{run['run_id']} ({run.get('name') or ''})"),
        ("status", run["status"]),
        ("created", str(run.get("created_at"))[:19]),
        ("probe images", f"{int(run.get('n_images') or 0):,}"),
    ]
    target = models.get("target") or {}
    if target:
        rows.append(("network dissected", f"{target.get('name', '?')} ({target.get('source', 'source not recorded')})"))
    it = models.get("image_text") or {}
    if it:
        rows.append(("labelling image-text model", describe_model(it)))
    elif models.get("labels"):
        rows.append(("labels", str(models["labels"])))
    for key in ("layers", "pooling", "k"):
        if key in cfg:
            rows.append((key, ", ".join(cfg[key]) if isinstance(cfg[key], list) else str(cfg[key])))
    for key in ("probe", "concepts", "similarity", "image_text", "target"):
        if isinstance(cfg.get(key), dict):
            rows.append((f"{key} settings", json.dumps(_without_paths(cfg[key]), sort_keys=True)))
    for e in ORDER:
        s = view.evaluators.get(e)
        if s is None:
            continue
        if s.status == "complete":
            desc = describe_model(s.models.get("image_text") or s.models.get("vqa") or s.models)
            rows.append((f"evaluator {EVALUATOR_TITLES[e]}", f"{desc}; {s.wall_s or 0:.1f} s"))
        else:
            rows.append(
                (
                    f"evaluator {EVALUATOR_TITLES[e]}",
                    f"{s.status}: {_without_paths_in(s.reason.splitlines()[0]) if s.reason else ''}",
                )
            )
    return _table(pd.DataFrame(rows, columns=["setting", "value"]), left=("setting", "value"))


def shares_section(view: RunView, thresholds: dict[str, float], k: int) -> str:

    summary = view.layer_summary(thresholds, k)
    if summary.empty:
        return "<p class='note'>No evaluator has scored this run.</p>"
    rows = []
    for (layer, ev), g in summary.groupby(["layer", "evaluator"], sort=False):
        share = dict(zip(g["variant"], g["share_correct"]))
        n = int(g["n"].iloc[0])
        real = share_interval(share["real"], n)
        rows.append(
            {
                "layer": layer,
                "evaluator": ev,
                "units": n,
                "real labels": percent(share["real"], none="–"),
                "95% interval": f"{percent(real.lo, none='–')} – {percent(real.hi, none='–')}",
                "shuffled labels": percent(share.get("shuffled"), none="–"),
                "one constant label": percent(share.get("constant"), none="–"),
                "note": f"n < {MIN_N}: too few to read" if real.small else "",
            }
        )

    warn = "".join(
        f"<p class='note warn'>{_e(w['evaluator'])} judges {percent(w['baseline_share'], none='–')} of "
        f"{_e(w['baseline'])} labels correct against {percent(w['real'], none='–')} of the real ones: at this "
        f"threshold it barely tells right labels from wrong.</p>"
        for w in weak_evaluators(summary)
    )
    return (
        _fig(layer_shares(summary, view.layers))
        + _table(pd.DataFrame(rows), left=("layer", "evaluator", "note"))
        + "<p class='note'>Share of labels judged correct (any of the top-k images matches). Interval: 95% Wilson "
        "score interval over units. 'overall' pools all units (not the mean of the layers). Baselines: the same "
        "evaluator on labels shuffled across the units of each layer, and on one constant label.</p>" + warn
    )


def sensitivity_section(view: RunView, thresholds: dict[str, float], k: int) -> str:

    parts = []
    reference = view.reference_rater()
    for e in [x for x in ORDER if x in view.available]:
        rule = RULES[e]
        lo, hi = default_range(view, e, thresholds[e])
        sw = sweep(view, e, lo, hi, k, reference)
        parts.append(f"<h3>{_e(rule.title)}</h3>")
        shown = f"{thresholds[e]:.3g}"  # as the thresholds line prints it (RunView.threshold_text)
        paper = PAPER_THRESHOLDS[e]
        figs = [_fig(sweep_figure(sw, rule.param, thresholds[e], "share_correct", current_text=shown, paper=paper))]
        if reference and "kappa" in sw and sw["kappa"].notna().any():
            n_ref = int(sw["n_reference"].dropna().max())
            few = (
                f"<p class='note warn'>Only {n_ref} units: fewer than {MIN_N}, so this kappa can move a lot with a "
                "few more verdicts.</p>"
                if n_ref < MIN_N
                else ""
            )
            figs.append(
                f"<div><p class='note'>Cohen's kappa with {_e(reference)} over the {n_ref} units it judged:"
                f"</p>{few}{_fig(sweep_figure(sw, rule.param, thresholds[e], 'kappa', False, current_text=shown, paper=paper))}</div>"
            )
        parts.append("<div class='plots'>" + "".join(figs) + "</div>")
    if not parts:
        return "<p class='note'>No evaluator has scored this run.</p>"
    counts = view.rater_counts()
    which = (
        f"<p class='note'>Kappa is against {_e(reference)}, the reference rater who judged the most units "
        f"({counts[reference]:,}" + "".join(f"; {_e(r)}: {n:,}" for r, n in counts.items() if r != reference) + ").</p>"
        if reference
        else "<p class='note'>No reference rater judged this run's units, so no kappa is drawn.</p>"
    )
    return (
        which
        + "".join(parts)
        + (
            "<p class='note'>Share judged correct against the threshold, per layer (the paper's "
            "Figure 3); dashed and dotted: shuffled and constant labels; solid vertical line: the report's threshold, "
            "dashed: the paper's. Hover a plot to read every line at a threshold; click a legend entry to hide its line."
            "</p>"
        )
    )


def agreement_section(view: RunView, thresholds: dict[str, float], k: int) -> str:

    raters = view.rater_verdicts(thresholds, k)
    names = list(raters)
    if len(names) < 2:
        return "<p class='note'>Agreement needs two raters (evaluators or humans); this run has fewer.</p>"
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for r in pairwise_with_intervals(raters[a], raters[b]).to_dict("records"):
                rows.append(
                    {
                        "rater A": a,
                        "rater B": b,
                        "layer": r["layer"],
                        "n": r["n"],
                        "agreement": percent(r["agreement"], none="–"),
                        "95% interval": f"{percent(r['agreement lo'], none='–')} – {percent(r['agreement hi'], none='–')}",
                        "Cohen's kappa": _num(r["kappa"]),
                        "kappa 95% interval": f"{_num(r['kappa lo'])} – {_num(r['kappa hi'])}",
                        "Jaccard": _num(r["jaccard"]),
                        "note": f"n < {MIN_N}: too few to read" if r["small"] else "",
                    }
                )
    return (
        _table(pd.DataFrame(rows), left=("rater A", "rater B", "layer", "note"))
        + "<p class='note'>Over the units both raters judged. Agreement is the share of units with the same verdict "
        f"(what the paper calls IoU); intervals are 95% percentile bootstraps over units ({N_BOOT:,} resamples, seed "
        "0); n/a where undefined (both raters constant).</p>"
    )


def labellers_section(store: Store, view: RunView, thresholds: dict[str, float], k: int) -> str:

    lv = LabellerView(store, view.run_id, view)
    if len(lv.source_ids) < 2:
        return ""
    cov = lv.sources.assign(coverage=lambda d: d["coverage"].map(lambda x: percent(x, none="–")))[
        ["name", "kind", "n_labels", "n_matched", "n_on_dead", "coverage"]
    ]
    shares = lv.shares(thresholds, k)
    table = shares.assign(
        **{
            c: shares[c].map(lambda x: percent(x, none="–"))
            for c in ("correct", "shuffled", "run real", "run shuffled", "run constant")
        }
    )
    table = table[["labeller", "evaluator", "layer", "n", "correct", "shuffled", "run real", "run constant"]].rename(
        columns={
            "n": "units",
            "correct": "judged correct",
            "shuffled": "its labels shuffled",
            "run real": "this run's labels, same units",
            "run constant": "constant label, same units",
        }
    )
    return (
        "<h2 id='labellers'>Labellers side by side</h2>"
        + _table(
            cov.rename(
                columns={
                    "n_labels": "labels",
                    "n_matched": "on this run's live units",
                    "n_on_dead": "on dead units (not judged)",
                }
            ),
            left=("name", "kind"),
        )
        + _table(table, left=("labeller", "evaluator", "layer"))
        + "<p class='note'>Each source's labels judged by this run's evaluators on this run's top images; every "
        "share is over the live units the source covers (dead units have no images to judge a label on).</p>"
    )


def units_section(
    store: Store,
    view: RunView,
    thresholds: dict[str, float],
    k: int,
    units_per_layer: int | None,
    images: dict[int, str],
) -> str:
    grid = view.unit_grid(thresholds, k) if view.available else view.neurons.copy()
    top = store.neuron_images(view.run_id, kinds=("top",))
    top = top[top["rank"] <= k]
    by_unit = {key: g["image_id"].tolist() for key, g in top.groupby(["layer", "unit"], sort=False)}
    acts = {key: g["activation"].tolist() for key, g in top.groupby(["layer", "unit"], sort=False)}
    evals = [EVALUATOR_TITLES[e] for e in ORDER if e in view.available]
    humans = view.rater_labels
    parts = []
    for layer in view.layers:
        g = grid[grid["layer"] == layer]
        total = len(g)
        if units_per_layer:
            g = g.head(units_per_layer)
        correct = {ev: int(g[ev].sum()) for ev in evals}
        head = ", ".join(f"{ev} judges {correct[ev]:,} of {len(g):,} labels correct" for ev in evals)
        parts.append(
            f"<h3 id='layer-{_e(layer)}'>{_e(layer)}: {total:,} units"
            f"{f' (first {len(g):,} shown)' if len(g) < total else ''}</h3><p class='note'>{_e(head)}</p>"
            "<div class='units'>"
        )
        for row in g.to_dict("records"):
            key = (layer, int(row["unit"]))
            imgs = "".join(
                f"<div class='im i{i}' title='activation {a:.3f}'></div>"
                for i, a in zip(by_unit.get(key, []), acts.get(key, []))
            )
            for i in by_unit.get(key, []):
                images.setdefault(int(i), "")
            verdicts = []
            for ev in evals:
                v, s = row.get(ev), row.get(f"{ev} score")
                verdicts.append(
                    f"<span class='v {'yes' if v else 'no'}'>{_e(ev)} {'✓' if v else '✗'} {_score(ev, s)}</span>"
                )
            for h in humans:
                v = row.get(h)
                if v is not None and not (isinstance(v, float) and np.isnan(v)):
                    verdicts.append(f"<span class='v {'yes' if v else 'no'}'>{_e(h)} {'✓' if v else '✗'}</span>")
            parts.append(
                f"<div class='unit'><div class='head'>unit {row['unit']} · <span class='lab'>"
                f"{_e(row['label'])}</span> · similarity {_num(row.get('similarity'), 3)}</div>"
                f"<div class='imgs'>{imgs}</div>{''.join(verdicts)}</div>"
            )
        parts.append("</div>")
    return "".join(parts)


def build_report(
    store: Store,
    run_id: str,
    thresholds: dict[str, float] | None = None,
    k: int | None = None,
    units_per_layer: int | None = None,
) -> str:
    """The whole report as one HTML string."""
    view = RunView(store, run_id)
    thresholds = view.thresholds(thresholds)
    for e, t in thresholds.items():
        RULES[e].check(t)
    kmax = view.kmax if view.available else 0
    if k is not None and view.available and not 1 <= k <= kmax:
        raise ClipevalError(f"k={k} is outside 1..{kmax}, the top-k images scored for run {view.run_id}")
    k = k or kmax or 5
    if units_per_layer is not None and units_per_layer < 1:
        raise ClipevalError("units per layer must be at least 1")
    images: dict[int, str] = {}
    units = units_section(store, view, thresholds, k, units_per_layer, images)
    thumbs = store.thumbnails(view.run.get("probe_fingerprint") or "", list(images)) if images else {}
    css_images = "".join(
        f".i{i}{{background-image:url(data:image/jpeg;base64,{_thumb(t)})}}\n" for i, t in thumbs.items()
    )
    th_text = view.thresholds_text(thresholds, ORDER)
    notes = "".join(f"<p class='note'>{_e(line)}</p>" for line in view.default_notes(thresholds))
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f"<a href='#layer-{_e(l)}'>{_e(l)}</a>" for l in view.layers)
    labellers = labellers_section(store, view, thresholds, k)
    body = (
        f"<main><h1>clipeval report: {_e(view.run.get('name') or view.run_id)}</h1>"
        + stand_in_banner(store, view)
        + f"<p class='note'>Run <code>{_e(view.run_id)}</code>; made {made} from the stored raw scores. A label is "
        f"judged correct if any of its unit's top-{k} images matches it; thresholds: {_e(th_text) or 'none'}.</p>"
        + notes
        + "<nav><a href='#settings'>Models and settings</a><a href='#shares'>Shares per layer</a>"
        "<a href='#sensitivity'>Sensitivity</a><a href='#agreement'>Agreement</a>"
        + ("<a href='#labellers'>Labellers</a>" if labellers else "")
        + "<a href='#units'>Units:</a>"
        + nav
        + "</nav>"
        "<h2 id='settings'>Models and settings</h2>"
        + settings_section(view)
        + "<h2 id='shares'>Share judged correct per layer, beside baselines</h2>"
        + shares_section(view, thresholds, k)
        + "<h2 id='sensitivity'>Threshold sensitivity</h2>"
        + sensitivity_section(view, thresholds, k)
        + "<h2 id='agreement'>Agreement between raters</h2>"
        + agreement_section(view, thresholds, k)
        + labellers
        + "<h2 id='units'>Units per layer</h2><p class='note'>Per unit: its label and CLIP-Dissect similarity, its "
        f"top-{k} images (hover for the activation), each evaluator's verdict and score, human verdicts.</p>"
        + units
        + "</main>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>clipeval report {_e(view.run_id)}</title><style>{CSS}{css_images}</style>"
        # plotly.js once, for every chart: the file opens with no network
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>{body}</body></html>"
    )


def write_report(
    store: Store,
    run_id: str,
    out,
    thresholds: dict[str, float] | None = None,
    k: int | None = None,
    units_per_layer: int | None = None,
) -> Path:
    """Check the output path, build the report, write it atomically."""

    out = check_output(out)
    text = build_report(store, run_id, thresholds, k, units_per_layer)
    return atomic_write(out, text.encode("utf-8"))
