"""Widgets every page shares: the sidebar (run, k, thresholds, all kept in the URL), the line that
says which models made the run, the how-to for an empty store, and small formatting helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from clipeval.analysis import sweeps
from clipeval.analysis.runview import EVALUATOR_TITLES
from clipeval.evaluators import judges, thresholds
from clipeval.evaluators.rules import RULES, cp_cutoff
from clipeval.formats import json_cell, text_cell
from clipeval.render import charts, glossary
from clipeval.render.tables import describe_model, short_reason, stand_in_text, stand_ins, styled
from clipeval.store import runnames
from clipeval.ui import data

# Imported inside the functions that use them: Streamlit's page manager internals, only to find the current
# page.

CTX_KEY = "_clipeval_context"
RUN_KEY = "run_choice"  # the run selectbox; its value is mirrored in the URL as ?run=<run id>
K_KEY = "k"
EVALUATOR_ORDER = ("vqa", "cp", "es", "contrast")  # the order the issue and the paper list them
# short enough for one line above a slider that shares the sidebar's width with its number box
THRESHOLD_LABELS = {
    "cp": "CP: p (share of concepts)",
    "es": "ES: tau (cosine)",
    "vqa": "VQA: cut on P(yes)",
    "contrast": "Contrast: AUC at least",
}
RULES_HELP = {e: r.title for e, r in RULES.items()}
DEAD_TEXT = (
    "**Dead unit**: its activation is the same on every probe image, so no image activates it more than "
    "another. It has no label and no top images, and it is left out of every share, agreement and kappa."
)

HOW_TO = """
**No complete run in this store yet.** If a build is running (see above), its runs appear here as they
complete. Otherwise make one:

```bash
./run app                                  # installs, starts this app and builds the offline demo beside it
python -m clipeval demo                    # or only build the offline demo runs (no network needed)
python -m clipeval dissect --help          # label your own network's neurons
python -m clipeval evaluate RUN --evaluators cp,es,contrast,vqa   # judge the labels
```

The app reads the store at `{path}` (set `CLIPEVAL_DB` to use another one). A run being written by
another process shows up on the **Runs** page, and a finished one on the next click, without a restart.
"""


@dataclass
class Context:
    """What the sidebar chose, for the page that runs after it."""

    run_id: str | None = None
    run: dict = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # the sidebar's: its run's judges' defaults, or set
    k: int = 5
    latest: pd.DataFrame = field(default_factory=pd.DataFrame)  # newest evaluation per evaluator

    def evaluator_status(self, evaluator: str) -> tuple[str, str]:
        """(status, reason) of an evaluator for this run: complete / unavailable / failed / missing.
        Read once per script run: pages ask 30 times a run, and each filter of the frame costs ~10 ms."""
        statuses = self.__dict__.get("_statuses")
        if statuses is None:
            statuses = self.__dict__["_statuses"] = {}
            for row in self.latest.to_dict("records") if self.latest is not None and len(self.latest) else []:
                statuses.setdefault(row["evaluator"], (row["status"], text_cell(row["error"])))
        return statuses.get(evaluator) or (
            "missing",
            f"not run yet: `clipeval evaluate {self.run_id} --evaluators {evaluator}`",
        )


def fmt_pct(x) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{100 * float(x):.1f}%"


def fmt_rank(x) -> str:
    """A rank (CP's score) as the whole number it is: '128', not '128.000' (empty when there is none)."""
    return "" if x is None or pd.isna(x) else f"{int(x)}"


def fmt_num(x, digits: int = 3) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{float(x):.{digits}f}"


def chart(fig, frame: pd.DataFrame, key: str, where=None) -> None:
    """A plotly figure (clipeval.render.charts) in `where` (a column or container; default the page), as wide
    as its container and in the app's theme, with a button under it that downloads `frame`, the numbers it
    was drawn from, as CSV. `key` names the chart (unique on its page) and the downloaded files."""
    where = where or st
    config = {**charts.CONFIG, "toImageButtonOptions": {"format": "png", "filename": key, "scale": 2}}
    where.plotly_chart(fig, width="stretch", theme="streamlit", config=config, key=f"chart_{key}")
    # the CSV is written when the button is pressed (a callable), not on every rerun
    where.download_button(
        "Download data (CSV)",
        lambda: frame.to_csv(index=False),
        file_name=f"{key}.csv",
        mime="text/csv",
        key=f"csv_{key}",
        on_click="ignore",
        type="tertiary",
        icon=":material/download:",
    )


# side_by_side's containers carry this key prefix; app.py's style lets them share a row when each can have
# charts.HALF_MIN and wrap one under the other when not (800 px with the sidebar open)
HALF_KEY = "half-"


def side_by_side(name: str, where=None) -> list:
    """Two containers that fill a row together (1440, 1920 px) and stack when the row is too narrow."""
    row = (where or st).container(horizontal=True, gap="small")
    return [row.container(width="stretch", key=f"{HALF_KEY}{name}-{i}") for i in range(2)]


def table(frame: pd.DataFrame, where=None, formats: dict | None = None, muted: pd.DataFrame | None = None) -> None:
    """A few rows read at a glance (no sorting or scrolling needed) as st.table in `where` (default the page):
    cells through formats[column] or tables.styled's defaults, escaped, cells True in `muted` (a boolean frame of
    the same columns, by position) greyed. st.dataframe's grid would load ~1.7 MB of scripts into the browser on
    the first page that shows one (0.2-0.3 s of a first visit here)."""
    (where or st).table(styled(frame, formats, muted), hide_index=True)


def glossary_link(anchor: str, text: str | None = None) -> str:
    """A link to the Glossary entry, for the end of a help text."""
    return glossary.link(anchor, text)


def title(evaluator: str) -> str:
    return EVALUATOR_TITLES.get(evaluator, evaluator)


def drop_infinite_url_number(key: str) -> None:
    """Call before drawing an integer st.number_input bound to the URL as `key`: Streamlit (1.67) turns
    ?key=inf (or -inf, 1e999) into int(inf), an OverflowError it does not catch, so a link would crash the
    page. Such a value is dropped from the URL and the script rerun (a widget is seeded from the URL the
    run started with, so dropping it alone is not enough); the widget then starts from its default, as for
    any other invalid value. Costs one rerun, for such a link only."""
    raw = st.query_params.get(key)  # the last one of a repeated key, the one Streamlit takes
    try:
        infinite = raw is not None and not math.isfinite(float(raw))
    except ValueError:
        return  # not a number: Streamlit ignores it itself
    if infinite:
        del st.query_params[key]
        st.rerun()


# ------------------------------------------------------------------------------------ sidebar
def _sync_run(ids: list[str], label: dict[str, str]) -> None:
    """Before the run selectbox exists in this script run: take the run from the URL the first time (an id
    or a unique prefix of one), else the newest fully evaluated run; fall back to it when the chosen run is
    gone (deleted). A ?run= naming no complete run is said, with the run shown instead."""
    wanted = st.query_params.get("run")
    current = st.session_state.get(RUN_KEY)
    if current in ids:
        return
    chosen = wanted if wanted in ids else (_prefix_match(wanted, ids) or data.default_run(ids))
    st.session_state[RUN_KEY] = chosen
    if wanted and chosen not in (wanted, _prefix_match(wanted, ids)):
        every = data.runs()
        hit = every[every["run_id"].astype(str).str.startswith(wanted)]
        why = (
            f"run `{hit['run_id'].iloc[0]}` is {hit['status'].iloc[0]}, not complete"
            if len(hit) == 1
            else f"{len(hit)} runs start with `{wanted}`"
            if len(hit) > 1
            else "this store has no such run"
        )
        link_problem("run", f"The link asks for run `{wanted}`, but {why}: showing {label[chosen]} instead.", chosen)


def _prefix_match(prefix: str | None, ids: list[str]) -> str | None:
    hits = [i for i in ids if prefix and i.startswith(prefix)]
    return hits[0] if len(hits) == 1 else None


LINK_KEY = "_clipeval_link_problems"


def link_problem(param: str, message: str, shown) -> None:
    """Remember that the link's ?param= could not be followed: said above the page while `shown` (what is
    shown instead) is still what the page shows."""
    st.session_state.setdefault(LINK_KEY, {})[param] = (message, shown)


def link_problems(current: dict) -> list[str]:
    """The messages of _link_problem whose fallback is still shown (current: param -> what is shown now)."""
    problems = st.session_state.get(LINK_KEY) or {}
    for p in [p for p, (_, shown) in problems.items() if p in current and current[p] != shown]:
        del problems[p]  # the user chose another value since: the link's problem is behind them
    return [m for p, (m, _) in problems.items() if p in current]


def url_number(param: str, lo: float, hi: float, what: str, fallback: float, integer: bool = False) -> float:
    """The value the link gives as ?param= when it is a number from lo to hi, else `fallback` (and, when the
    link gave another value, a _link_problem naming it and what is shown instead)."""
    raw = st.query_params.get(param)
    if raw is None:
        return fallback
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and lo <= value <= hi and (not integer or value.is_integer()):
        return int(value) if integer else value
    kind = "whole number" if integer else "number"
    link_problem(
        param,
        f"The link's {what} `{param}={raw}` is not a {kind} from {lo:g} to {hi:g}: showing {fallback:g} instead.",
        fallback,
    )
    return fallback


def url_flag(param: str, what: str, fallback: bool) -> bool:
    """url_number for a switch: ?param=true or false (any case; 1 and 0 too)."""
    raw = st.query_params.get(param)
    if raw is None:
        return fallback
    if raw.strip().lower() in ("true", "1", "false", "0"):
        return raw.strip().lower() in ("true", "1")
    link_problem(
        param, f"The link's {what} `{param}={raw}` is not true or false: showing {fallback} instead.", fallback
    )
    return fallback


def pin_in_url(param: str, value: float) -> None:
    """Write a value in effect into the URL, exactly (a link copied now reproduces the same numbers even
    after a calibration moves the defaults; p = 0.00200401 printed as 0.0020 would judge at another rank)."""
    text = str(value).lower() if isinstance(value, bool) else f"{float(value):.12g}"
    if st.query_params.get(param) != text:
        st.query_params[param] = text


def sidebar() -> Context:
    """Run selection, k and the four thresholds; stored for the page as `context()`.
    All of them are kept in the URL (?run=<id>&k=&p=&tau=&cut=&auc=), every one in effect, so a link pins its
    numbers; a link's value that cannot be followed is said above the page, with what is shown instead."""
    data.store()
    ctx = Context()
    complete = data.complete_runs()
    with st.sidebar:
        if complete.empty:
            st.info("No complete run yet: see the home page for how to make one.")
            st.session_state[CTX_KEY] = ctx
            return ctx
        ids = list(complete["run_id"])
        label = run_labels(complete)
        _sync_run(ids, label)
        run_id = st.selectbox(
            "Run",
            ids,
            key=RUN_KEY,
            format_func=label.get,
            help="Every page shows this run. Runs are told apart by what differs between them "
            "(concept set, similarity function, labelling model, ...); rename one on the Runs "
            "page. The URL keeps it as ?run=<run id>.",
        )
        st.query_params["run"] = run_id
        ctx.run_id = run_id
        ctx.run = complete[complete["run_id"] == run_id].iloc[0].to_dict()
        # one line: the picker names the run; its full name is in the picker's help and on the Runs page
        st.caption(
            f"`{run_id[:12]}` · {int(ctx.run['n_neurons']):,} neurons",
            help=f"{ctx.run['name']}, made {str(ctx.run['created_at'])[:16]}",
        )
        ctx.latest = data.latest_evaluations(run_id)

        # k and the thresholds are not bound to the URL by Streamlit, which leaves a widget at its default out of
        # the link: a link then meant other numbers once a calibration moved the defaults. They are read from
        # the link when the session starts and every value in effect is written back (pin_in_url).
        kmax = data.top_k(run_id)
        if kmax > 1:
            ctx.k = st.slider(
                "k: top images judged",
                1,
                kmax,
                url_number(K_KEY, 1, kmax, "k", kmax, integer=True),
                key=K_KEY,
                help="A label is judged correct if ANY of the neuron's top-k images matches it (the paper uses k = 5).",
            )
        else:
            ctx.k = max(kmax, 1)
        pin_in_url(K_KEY, ctx.k)

        st.markdown(
            "**Thresholds**",
            help="Applied live to the stored raw scores on every page, and kept in the URL. Each slider spans "
            "the scores of this run; the box beside it takes any value.",
        )
        n_concepts = _n_concepts(ctx.latest)
        scored = [e for e in EVALUATOR_ORDER if ctx.evaluator_status(e)[0] == "complete"]
        others = [e for e in EVALUATOR_ORDER if e not in scored]
        # the judges that scored this run first, so their sliders are above the sidebar's fold; the others'
        # stay drawn (their values are in the URL) one click away
        rest = None
        for e in scored + others:
            if e in others and rest is None:
                rest = st.expander(f"Thresholds of {', '.join(title(o) for o in others)} (not in this run)")
            where = st if e in scored else rest
            ctx.thresholds[e] = threshold_control(ctx, e, where)
            if e == "cp" and n_concepts:
                where.caption(
                    f"= label in the top {cp_cutoff(ctx.thresholds[e], n_concepts)} of {n_concepts:,} concepts"
                )
        missing = [
            f"{title(e)}: {ctx.evaluator_status(e)[0]}"
            for e in EVALUATOR_ORDER
            if ctx.evaluator_status(e)[0] != "complete"
        ]
        if missing:
            st.caption("Not in this run: " + "; ".join(missing) + " (reasons on each page).")
    shown = {"run": run_id, K_KEY: ctx.k, **{RULES[e].param: v for e, v in ctx.thresholds.items()}}
    for message in link_problems(shown):
        st.warning(message, icon=":material/link_off:")
    st.session_state[CTX_KEY] = ctx
    return ctx


def _take(evaluator: str, source: str) -> None:
    """on_change of a threshold's slider or of the Thresholds page's controls: the sidebar's number box, the
    one bound to the URL, takes the value (so every control of one threshold shows one value)."""
    st.session_state[RULES[evaluator].param] = st.session_state[source]


def threshold_control(ctx: Context, evaluator: str, where=None, mirror: str = "") -> float:
    """A threshold's slider with a number box beside it, in `where` (default the page), both showing one value.
    The sidebar's number box (no `mirror`) is the value, starting at the link's value or the run's judge's
    default (the paper's for CLIP, calibrated for a stand-in, 'calibration pending' while a build may still
    calibrate it) and pinned in the URL (?p=&tau=&cut=&auc=); it takes any value of the rule's range. The
    slider spans where this run's scores lie (sweeps.threshold_range_from). With `mirror` (a name), a second
    pair elsewhere (the Thresholds page, beside its chart) that sets the sidebar's."""
    rule = RULES[evaluator]
    where = where or st
    row = where.columns([2.4, 1], gap="small", vertical_alignment="bottom")
    status = ctx.evaluator_status(evaluator)[0]
    default = data.defaults(ctx.run_id)[evaluator]
    help_text = (
        rule.title
        + ("" if status == "complete" else f"  \n{title(evaluator)} is {status} for this run.")
        + (f"  \nDefault: {default.note}" if default.note else "")
    )
    box = dict(min_value=rule.lo, max_value=rule.hi, step=rule.step, format=thresholds.printf(evaluator))
    if mirror:
        value = ctx.thresholds[evaluator]
        box_key = f"{rule.param}_{mirror}_box"
        st.session_state[box_key] = value
        row[1].number_input(
            THRESHOLD_LABELS[evaluator],
            **box,
            key=box_key,
            on_change=_take,
            args=(evaluator, box_key),
            label_visibility="collapsed",
        )
    else:
        start = url_number(rule.param, rule.lo, rule.hi, f"{title(evaluator)} threshold", float(default.value))
        value = float(
            row[1].number_input(
                THRESHOLD_LABELS[evaluator],
                value=start,
                **box,
                key=rule.param,
                label_visibility="collapsed",
                help=help_text,
            )
        )
        pin_in_url(rule.param, value)
        if default.source == judges.PENDING and value == default.value and status == "complete":
            where.caption(f":orange[{title(evaluator)}: calibration pending, the paper's CLIP value stands in]")
    lo, hi = sweeps.threshold_range_from(evaluator, data.score_spans(ctx.run_id)[evaluator], value)
    slider_key = f"{rule.param}_{mirror or 'sidebar'}_slider"
    st.session_state[slider_key] = min(max(value, lo), hi)
    row[0].slider(
        THRESHOLD_LABELS[evaluator],
        lo,
        hi,
        step=rule.step,
        format=thresholds.printf(evaluator),
        key=slider_key,
        on_change=_take,
        args=(evaluator, slider_key),
        help=help_text + f"  \nThe slider spans this run's scores ({thresholds.fmt(evaluator, lo)} to "
        f"{thresholds.fmt(evaluator, hi)}); the box beside it takes any value.",
    )
    return value


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """{run_id: picker text}: what differs between these runs first, then the run's name and id."""
    diff = runnames.differences(runs)
    return {r: runnames.picker_label(r, n, diff.get(r, "")) for r, n in zip(runs["run_id"], runs["name"])}


def _n_concepts(latest: pd.DataFrame) -> int | None:
    if latest is None or latest.empty or "n_concepts" not in latest:
        return None
    vals = latest["n_concepts"].dropna()
    return int(vals.iloc[0]) if len(vals) else None


def _ensure_navigation() -> None:
    """Streamlit still supports its older multipage mode, where each file of a `pages/` folder is a page
    run on its own: while no script run has called st.navigation yet (a fresh server, and every run of
    AppTest), a request for /<file name> runs that file directly, without app.py. Switch to
    st.navigation (what app.py's call to it does) and rerun through app.py. The rerun drops button
    clicks, so the pages act on buttons through on_click callbacks (they run before the rerun)."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the old mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def context() -> Context:
    """The sidebar's choices for this script run (the sidebar runs in app.py before every page)."""
    _ensure_navigation()
    ctx = st.session_state.get(CTX_KEY)
    return ctx if isinstance(ctx, Context) else sidebar()


def how_to_make_a_run() -> None:
    st.markdown(HOW_TO.format(path=data.db_path()))


def require_run(ctx: Context) -> None:
    """Stop the page with the how-to when the store has no complete run."""
    if ctx.run_id is None:
        how_to_make_a_run()
        st.stop()


def run_page(title: str) -> Context:
    """The head of a page about one run: sidebar context, title, the how-to (and a stop) when there is no
    run, and which models made the run."""
    ctx = context()
    st.title(title)
    require_run(ctx)
    models_banner(ctx)
    return ctx


# ------------------------------------------------------------------------------------ models
def model_lines(run: dict, latest: pd.DataFrame, short: bool = True) -> dict[str, str]:
    """Plain statements of which models made the run: target, labelling model, each evaluator
    (with `short`, an evaluator's reason for being unavailable is cut to its first sentence)."""
    models = json_cell(run.get("models_json"))
    out = {}
    target = models.get("target") or {}
    if target:
        out["Network dissected"] = f"{target.get('name', '?')} ({target.get('source', 'source not recorded')})"
    if "image_text" in models:
        out["Labels"] = f"CLIP-Dissect with {describe_model(models['image_text'])}"
    elif "labels" in models:
        out["Labels"] = str(models["labels"])
    else:
        out["Labels"] = "labelling model not recorded"
    groups: dict[str, list[str]] = {}
    for e in EVALUATOR_ORDER:
        hit = latest[latest["evaluator"] == e] if len(latest) else latest
        if hit is None or hit.empty:
            groups.setdefault("not run yet", []).append(title(e))
            continue
        row = hit.iloc[0]
        if row["status"] == "complete":
            info = json_cell(row["models_json"])
            desc = describe_model(info.get("image_text") or info.get("vqa") or info)
        else:
            model = ""
            if e == "vqa":
                wanted = text_cell(json_cell(row["config_json"]).get("vqa_model"))
                model = "BLIP-2 " if not wanted or "blip" in wanted.lower() else f"{wanted} "
            reason = text_cell(row["error"], "no reason recorded")
            desc = f"{model}{row['status']}: {short_reason(reason) if short else reason}"
        groups.setdefault(desc, []).append(title(e))
    out["Evaluators"] = "; ".join(f"{'/'.join(names)}: {desc}" for desc, names in groups.items())
    return out


def stand_in_notice(run: dict, latest: pd.DataFrame, where=None) -> None:
    """A prominent warning when any model of the run is an offline stand-in for CLIP."""
    text = stand_in_text(stand_ins(run, latest), short=True)
    if text:
        (where or st).warning(f"**Not CLIP.** {text}", icon=":material/report:")


def models_banner(ctx: Context, caveats: list[str] = ()) -> None:
    """One short notice under each page title (the stand-in warning, or the run's name), with which models
    made the run and the page's `caveats` one click away: the same four lines on every page, and six
    paragraphs between a chart and its table, hid what each page is for."""
    if ctx.run_id is None:
        return
    row = st.container(horizontal=True, vertical_alignment="center", gap="small", wrap=False)
    text = stand_in_text(stand_ins(ctx.run, ctx.latest), short=True)
    if text:
        row.warning(f"**Not CLIP.** {text}", icon=":material/report:")
    else:
        row.caption(f"**Run:** {ctx.run.get('name')}")
    with row.popover("Models and caveats", icon=":material/info:"):
        details(ctx, caveats)


def details(ctx: Context, caveats: list[str] = ()) -> None:
    """What the banner's popover holds: the run, its models, why a judge is missing, and the page's caveats."""
    st.markdown(f"**Run:** {ctx.run.get('name')} (`{ctx.run_id}`)")
    for role, line in model_lines(ctx.run, ctx.latest).items():
        st.markdown(f"- **{role}:** {line}")
    if stand_ins(ctx.run, ctx.latest):
        st.caption(
            "ConSE embeds an image as the probability-weighted sentence embedding of its top ImageNet class "
            "names: it knows object nouns, is weak on colours, textures and scenes. "
            + glossary_link("conse", "What ConSE is")
        )
    for line in caveats:
        st.caption(line)


def caveats(lines: list[str], where=None, label: str = "Caveats on these numbers") -> None:
    """A page's caveats as one line that opens to the details (an expander), not a paragraph each."""
    if lines:
        with (where or st).expander(f"{label} ({len(lines)})", icon=":material/warning:"):
            for line in lines:
                st.caption(line)


def thresholds_caption(ctx: Context) -> str:
    """'k = 5; cut = 0.50 (paper default), p = 0.0040 (top 4 of 998 concepts; calibrated default), ...': the
    sidebar's thresholds, each with where it came from (its judge's default, or given in the sidebar)."""
    view = data.run_view(ctx.run_id) if ctx.run_id else None
    parts = [
        thresholds.label(e, ctx.thresholds[e])
        + (f" ({view.threshold_detail(e, ctx.thresholds[e], 'set in the sidebar')})" if view else "")
        for e in EVALUATOR_ORDER
    ]
    # the k the pages apply: no more than the evaluators scored (an evaluation with --k 3 of a run that stored 5)
    k = min(ctx.k, view.kmax) if view is not None and view.available else ctx.k
    return f"k = {k}; " + ", ".join(parts)


def evaluator_note(ctx: Context, evaluator: str, short: bool = True) -> str:
    status, reason = ctx.evaluator_status(evaluator)
    if reason and short and status != "missing" and short_reason(reason) != reason:
        reason = short_reason(reason) + " (the Runs page has the full reason)"
    return f"{title(evaluator)} is {status} for this run" + (f": {reason}" if reason else "")


# ------------------------------------------------------------------------------------ images
def image_grid(frame: pd.DataFrame, thumbs: dict[int, bytes], ncols: int, lines=None, source: bool = True) -> None:
    """Thumbnails in rows of `ncols`; under each, the lines `lines(row)` gives and the image's
    known label, source and licence."""
    if frame.empty:
        st.caption("No images of this kind were stored for this neuron.")
        return
    for start in range(0, len(frame), ncols):
        cols = st.columns(ncols)
        for col, (_, row) in zip(cols, frame.iloc[start : start + ncols].iterrows()):
            with col:
                thumb = thumbs.get(int(row["image_id"]))
                if thumb:
                    st.image(thumb, width="stretch")
                else:
                    st.caption("(no thumbnail stored)")
                text = lines(row) if lines else []
                if text:
                    st.markdown("  \n".join(text))
                if source:
                    label, origin, licence = (
                        row.get(c) if pd.notna(row.get(c)) else "" for c in ("image_label", "source", "license")
                    )
                    st.caption(
                        f"{label + ' · ' if label else ''}{origin or 'source unknown'} · {licence or 'licence unknown'}"
                    )


def judge_caveats(view) -> list[str]:
    """Lines to show beside a run's shares: what each evaluator's model shares with the labeller, where
    its thresholds come from, and how many dead units were left out."""
    out = [
        f"{title(e)} model {view.shared_note(e)}"
        for e in EVALUATOR_ORDER
        if e in view.available and view.shared_note(e)
    ]
    out += [
        f"{title(e)}: {view.defaults[e].note}" for e in EVALUATOR_ORDER if e in view.available and view.defaults[e].note
    ]
    if view.dead_note():
        out.append(view.dead_note())
    return out


def store_busy(busy: Exception) -> None:
    """What the app shows when a clipeval command held the store longer than the app waits."""
    waiting = len(data.pending_verdicts())
    st.warning(
        f"The run store is busy: a clipeval command is writing to it ({busy}). Reload in a moment."
        + (
            f" {waiting} answer(s) wait to be saved in this session; they are saved on your next click."
            if waiting
            else ""
        )
    )
