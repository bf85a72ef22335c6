"""Reshaping clipeval's results into the tables the pages show (no new numbers are made here beyond
counts and shares of verdicts that analysis.RunView already gave)."""

from __future__ import annotations

import html
import re
from urllib.parse import quote_plus, urlencode

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from clipeval.analysis.intervals import figure, share_interval
from clipeval.analysis.runview import EVALUATOR_TITLES
from clipeval.evaluators.rules import RULES
from clipeval.formats import json_cell, percent, text_cell

INTERPRETABLE = "interpretable"
MUTED_COLOUR = "#9aa0a6"  # a cell too small to read: grey, but readable on the light and the dark theme


def short_reason(text: str, limit: int = 150) -> str:
    """The first sentence of a (possibly long) reason, cut at `limit` characters."""
    text = " ".join(str(text or "").split())
    for stop in (". ", " (", "; "):
        cut = text.find(stop)
        if 0 < cut < limit:
            return text[:cut] + (" ..." if cut + len(stop) < len(text) else "")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def describe_model(info: dict) -> str:
    """A model's recorded info as one honest line (an offline stand-in says it is not CLIP)."""
    if not info:
        return "model not recorded"
    if "description" in info:
        text = info["description"]
        if info.get("is_clip") is False and "not clip" not in text.lower():
            text += " - not CLIP"
        return text
    if "name" in info:  # a VQA model
        extra = f", {info['class']}" if info.get("class") else ""
        params = f", {info['parameters'] / 1e6:.1f} M parameters" if info.get("parameters") else ""
        return f"{info['name']}{extra}{params}"
    return ", ".join(f"{k}: {v}" for k, v in info.items() if k not in ("fingerprint",))


def stand_ins(run: dict, latest: pd.DataFrame) -> list[str]:
    """Which roles of a run were played by an offline stand-in instead of CLIP/OpenCLIP (a model recorded
    with is_clip False): 'labels', and each complete evaluator's title."""
    out = []
    if (json_cell(run.get("models_json")).get("image_text") or {}).get("is_clip") is False:
        out.append("labels")
    order = list(EVALUATOR_TITLES)
    rows = sorted(
        latest.itertuples() if latest is not None and len(latest) else [],
        key=lambda r: order.index(r.evaluator) if r.evaluator in order else len(order),
    )
    for row in rows:
        if row.status == "complete" and (json_cell(row.models_json).get("image_text") or {}).get("is_clip") is False:
            out.append(EVALUATOR_TITLES.get(row.evaluator, row.evaluator))
    return out


def stand_in_text(roles: list[str], short: bool = False) -> str:
    """What the 'not CLIP' warning says for the roles stand_ins found ('' when none); `short` for the one-line
    banner under a page's title."""
    if not roles:
        return ""
    verdicts = [r for r in roles if r != "labels"]
    parts = (["labels"] if "labels" in roles else []) + (
        [f"{', '.join(verdicts[:-1])}{' and ' if len(verdicts) > 1 else ''}{verdicts[-1]} verdicts"] if verdicts else []
    )
    if short:
        return (
            f"This run's {' and '.join(parts)} come from an offline stand-in (ConSE), not CLIP: a demonstration of "
            "the method, not the paper's numbers."
        )
    return (
        f"This run's {' and '.join(parts)} come from an offline stand-in (ConSE: an ImageNet classifier and a "
        "sentence encoder), not from CLIP: read them as a demonstration of the method, not as the paper's numbers."
    )


# Every ASCII punctuation character: st.table reads its cells as Markdown (a label like "*x*" or "$5" or a
# rater named ":red[x]" would be drawn as emphasis, maths or colour), and a backslash keeps any of them literal.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def markdown_literal(text: str) -> str:
    """text as Markdown that reads as exactly that text."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text))


def _plain(v) -> str:
    """A cell's default text: a tick or cross for yes/no, three decimals for a float, empty when missing."""
    if isinstance(v, (bool, np.bool_)):
        return "✓" if v else "✗"
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}"
    return str(v)


def styled(
    frame: pd.DataFrame, formats: dict | None = None, muted: pd.DataFrame | None = None, markup: str = "markdown"
) -> Styler:
    """frame as a pandas Styler for a static table: a cell reads formats[column](value), else a tick/cross,
    three decimals or its text (empty when missing); every cell and header is escaped for `markup` ('markdown' for
    st.table, 'html' for the report; labels and rater names are arbitrary text); numeric columns align right;
    cells True in `muted` (a boolean frame of the same columns, by position) are greyed."""
    escape = markdown_literal if markup == "markdown" else html.escape
    # headers escaped in the frame itself: st.table draws the frame's column names, not the Styler's
    names = {c: escape(c) for c in frame.columns}
    frame = frame.reset_index(drop=True).rename(columns=names)
    formats = {names[c]: f for c, f in (formats or {}).items() if c in names}
    numeric = [
        c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]

    def plain(v) -> str:
        return "" if not isinstance(v, str) and bool(np.ndim(v) == 0 and pd.isna(v)) else _plain(v)

    # a column's own format also says how a missing value reads (fmt_pct: 'n/a')
    styler = frame.style.format({c: (lambda f: lambda v: escape(f(v)))(formats.get(c, plain)) for c in frame.columns})
    styler = styler.hide(axis="index")
    if numeric:
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
    if muted is not None:
        grey = (
            muted.reset_index(drop=True)
            .rename(columns=names)
            .reindex(columns=frame.columns)
            .fillna(False)
            .astype(bool)
            .to_numpy()
        )
        styler = styler.apply(lambda d: np.where(grey, f"color: {MUTED_COLOUR}", ""), axis=None)
    return styler


def verdict_marks(df: pd.DataFrame, columns) -> pd.DataFrame:
    """Boolean verdict columns as '✓' / '✗' text ('' where not judged): a read-only grid draws ticked
    checkboxes pale grey, hard to tell from unticked ones."""
    out = df.copy()
    for c in columns:
        if c in out:
            out[c] = (
                out[c]
                .map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else ("✓" if bool(v) else "✗"))
                .astype(str)
            )
    return out


def full_reasons(evals: pd.DataFrame) -> list[tuple[str, str]]:
    """(evaluator title, full reason) of every evaluation that did not complete (the tables show one line)."""
    return [
        (EVALUATOR_TITLES.get(e.evaluator, e.evaluator), text_cell(e.error, "no reason recorded"))
        for e in evals.itertuples()
        if e.status != "complete"
    ]


def summary_table(summary: pd.DataFrame, layers: list[str]) -> pd.DataFrame:
    """layer x (evaluator, variant) shares from RunView.layer_summary, layers in run order, overall last."""
    if summary.empty:
        return pd.DataFrame()
    wide = summary.pivot_table(index="layer", columns=["evaluator", "variant"], values="share_correct", sort=False)
    order = [l for l in layers if l in wide.index] + ["overall"]
    wide = wide.reindex(order)
    n = summary.drop_duplicates("layer").set_index("layer")["n"].reindex(order)
    cols = [
        (e, v)
        for e in dict.fromkeys(summary["evaluator"])
        for v in ("real", "shuffled", "constant")
        if (e, v) in wide.columns
    ]
    wide = wide[cols]
    wide.columns = [e if v == "real" else f"{e} {v}" for e, v in cols]
    wide.insert(0, "neurons", n.astype(int))
    if "n_dead" in summary and summary["n_dead"].any():  # dead units are not in 'neurons': say how many
        dead = summary.drop_duplicates("layer").set_index("layer")["n_dead"].reindex(order)
        wide.insert(1, "dead units (left out)", dead.fillna(0).astype(int))
    return wide.reset_index()


def share_texts(frame: pd.DataFrame, n: dict, with_n: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """frame with its shares as text: each column named in `n` (a real labels' share) with its 95% Wilson
    interval over n[column] neurons (a column or a number; intervals.share_interval, as the report), every other
    float column (a baseline) as a percentage; and a boolean frame of the same shape, True in the share cells
    of a row whose shares are over fewer than intervals.MIN_N neurons."""
    text = frame.astype(object)
    small = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for c in frame.columns:
        if c in n:
            counts = pd.Series(n[c], index=frame.index)
            figs = [share_interval(v, m) for v, m in zip(frame[c], counts)]
            text[c] = [f.text(with_n) if pd.notna(f.value) else "" for f in figs]
            small[c] = [f.small and pd.notna(f.value) for f in figs]
    row_small = small[[c for c in frame.columns if c in n]].any(axis=1)
    for c in frame.columns:
        if c not in n and frame[c].dtype.kind == "f":
            text[c] = frame[c].map(lambda v: "" if pd.isna(v) else percent(v))
            small[c] = row_small & frame[c].notna()  # a baseline's share is over the same neurons as its row's
    return text, small


def interpretable_by_layer(grid: pd.DataFrame, column: str, layers: list[str]) -> pd.DataFrame:
    """Per layer (and overall): neurons, how many have `column` true, and the share."""
    rows = []
    for layer in [l for l in layers if l in set(grid["layer"])] + ["overall"]:
        g = grid if layer == "overall" else grid[grid["layer"] == layer]
        hits = int(g[column].fillna(False).astype(bool).sum())
        rows.append(
            {"layer": layer, "neurons": len(g), INTERPRETABLE: hits, "share": hits / len(g) if len(g) else float("nan")}
        )
    return pd.DataFrame(rows)


def unit_grid(
    view, thresholds: dict[str, float], k: int, evaluators: list[str], layer: str | None = None
) -> pd.DataFrame:
    """RunView.unit_grid (of `layer`, or of the run) over every available evaluator, with an 'interpretable'
    column: judged correct by ALL of `evaluators` (RunView's 'all evaluators agree correct' over that subset)."""
    grid = view.unit_grid(thresholds, k, layer=layer).drop(columns=["all evaluators agree correct"], errors="ignore")
    chosen = [EVALUATOR_TITLES[e] for e in evaluators if e in view.available]
    grid[INTERPRETABLE] = grid[chosen].all(axis=1) if chosen else False
    return grid


def filter_grid(grid: pd.DataFrame, layer: str | None, text: str, show: str) -> pd.DataFrame:
    out = grid
    if layer:
        out = out[out["layer"] == layer]
    if text.strip():
        out = out[out["label"].str.contains(text.strip(), case=False, regex=False, na=False)]
    if show == "interpretable":
        out = out[out[INTERPRETABLE].astype(bool)]
    elif show == "not interpretable":
        out = out[~out[INTERPRETABLE].astype(bool)]
    return out


def neuron_link(
    run_id: str,
    layer: str,
    unit: int,
    thresholds: dict[str, float] | None = None,
    k: int | None = None,
    kmax: int | None = None,
) -> str:
    """A relative link to the neuron explorer showing this neuron with the same run, k and thresholds."""
    params = {"run": run_id, "layer": layer, "unit": int(unit)}
    for e, value in (thresholds or {}).items():
        if value != RULES[e].default:
            params[RULES[e].param] = value
    if k is not None and k != kmax:
        params["k"] = k
    return "neuron?" + urlencode(params)


def neuron_links(
    run_id: str,
    layers,
    units,
    thresholds: dict[str, float] | None = None,
    k: int | None = None,
    kmax: int | None = None,
) -> list[str]:
    """neuron_link for many neurons at once (the unit grid has thousands of rows on every rerun)."""

    head = neuron_link(run_id, "", 0, thresholds, k, kmax)
    base, _, rest = head.partition("&layer=&unit=0")
    return [f"{base}&layer={quote_plus(str(l))}&unit={int(u)}{rest}" for l, u in zip(layers, units)]


def measure_by_layer_ci(
    pairwise: dict[str, pd.DataFrame], measure: str, layer_order: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """{rater: intervals.pairwise_with_intervals(rater, reference)} -> (one row per rater, one text cell per layer
    and 'overall' reading '0.62 [0.55, 0.70] n=120'; the same shape of booleans: fewer than MIN_N neurons)."""

    text, small = {}, {}
    for rater, t in pairwise.items():
        rows = t.set_index("layer")
        cols = [l for l in layer_order if l in rows.index]
        text[rater] = {l: figure(rows.loc[l], measure).text() for l in cols}
        small[rater] = {l: bool(rows.loc[l, "small"]) for l in cols}
    order = [l for l in layer_order if any(l in v for v in text.values())]
    return pd.DataFrame(text).T.reindex(columns=order), pd.DataFrame(small).T.reindex(columns=order).fillna(False)


def stack_pairwise(pairwise: dict[str, pd.DataFrame]) -> pd.DataFrame:
    long = pd.concat([t.assign(rater=o) for o, t in pairwise.items()], ignore_index=True)
    return long[["rater", *[c for c in long.columns if c != "rater"]]]


def _probe_text(cfg: dict) -> str:
    probe = cfg.get("probe")
    paths = probe.get("paths", []) if isinstance(probe, dict) else (probe or [])
    return " + ".join(str(p).rstrip("/").split("/")[-1] for p in paths)


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """store.runs() -> one readable row per run: what was dissected with which settings."""
    rows = []
    for r in runs.itertuples():
        cfg, models = json_cell(r.config_json), json_cell(r.models_json)
        concepts = cfg.get("concepts")
        sim = cfg.get("similarity") or {}
        image_text = models.get("image_text") or {}
        rows.append(
            {
                "name": r.name,
                "status": r.status,
                "created": r.created_at,
                "neurons": int(r.n_neurons),
                "target": cfg["target"].get("name") if isinstance(cfg.get("target"), dict) else cfg.get("target"),
                "layers": ", ".join(cfg.get("layers") or []),
                "probe": _probe_text(cfg),
                "images": None if pd.isna(r.n_images) else int(r.n_images),
                "skipped images": None if pd.isna(r.n_skipped_images) else int(r.n_skipped_images),
                "concepts": concepts.get("source") if isinstance(concepts, dict) else concepts,
                "similarity": sim.get("fn") if isinstance(sim, dict) else sim,
                "labelling model": image_text.get("description") or models.get("labels") or "",
                "CLIP?": {True: "yes", False: "no"}.get(image_text.get("is_clip"), "n/a"),
                "peak RSS (MB)": r.peak_rss_mb,
                "kind": r.kind,
                "run": r.run_id,
                "error": text_cell(r.error),
            }
        )
    return pd.DataFrame(rows)


def evaluation_table(evals: pd.DataFrame) -> pd.DataFrame:
    """store.evaluations(run) -> evaluator, status, model, seconds, reason."""
    rows = []
    for e in evals.itertuples():
        info = json_cell(e.models_json)
        rows.append(
            {
                "evaluator": EVALUATOR_TITLES.get(e.evaluator, e.evaluator),
                "status": e.status,
                "model or reason": (describe_model(info.get("image_text") or info.get("vqa") or info) if info else "")
                if e.status == "complete"
                else short_reason(text_cell(e.error, "no reason recorded"), 90),
                "seconds": e.wall_s,
                "concepts": e.n_concepts,
                "constant label": text_cell(e.constant_label),
                "finished": e.finished_at,
                "evaluation": e.eval_id,
            }
        )
    return pd.DataFrame(rows)


def by_run_columns(wide: pd.DataFrame, labels: dict[str, str], keep=("run",)) -> pd.DataFrame:
    """A one-row-per-run table turned round: one column per run (headed by its label), one row per
    measure. Tables with many measures and few runs then fit the page instead of scrolling sideways."""
    body = wide.drop(columns=[c for c in wide.columns if c in ("name", *keep) and c != "run"])
    body = body.set_index("run")
    body.index = [labels.get(r, r[:8]) for r in body.index]
    return body.T.rename_axis("").reset_index()


def timings_table(t: pd.DataFrame) -> pd.DataFrame:
    """analysis.timings -> one row per run, one column per step (seconds)."""
    if t.empty:
        return t
    wide = t.pivot_table(index=["name", "run"], columns="step", values="seconds", sort=False).reset_index()
    steps = [c for c in wide.columns if c not in ("name", "run")]
    wide["total"] = wide[steps].sum(axis=1, min_count=1)
    return wide


def overall_shares(view, thresholds: dict[str, float], k: int) -> dict[str, tuple[float, float]]:
    """Per available evaluator: (share judged correct over all neurons, the same for shuffled labels)."""
    if not view.available:
        return {}
    summary = view.layer_summary(thresholds, min(k, view.kmax))
    out = {}
    for e in view.available:
        g = summary[(summary["layer"] == "overall") & (summary["evaluator"] == EVALUATOR_TITLES[e])]
        share = g.set_index("variant")["share_correct"]
        out[e] = (float(share.get("real", float("nan"))), float(share.get("shuffled", float("nan"))))
    return out
