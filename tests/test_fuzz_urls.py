"""Fuzzing the app's URL query parameters with hypothesis (issue 25, "beyond this list"): a link can
carry anything, so for every page and any query parameters (the keys the pages bind to the URL, with
real, odd and junk values, plus junk keys) the page renders without an exception and the store is
left exactly as it was (viewing a page never writes). Pages are opened with Streamlit's AppTest on the
session's real small run (`app_store`), as tests/test_app.py does.

Measured on 2 busy cores: each case opens the Overview and then the page, about 1.1 s; 8 generated
cases a page (99 in all) took 113 s after the shared run's 60-165 s build, so it is bounded at 6 (77
cases, about 85 s). What it found: the Runs page raised AttributeError on any link (widgets.loads,
gone in the formats refactor), and ?unit=-inf raised OverflowError on the Neuron explorer (see
test_an_infinite_whole_number_in_the_url); with both fixed, all 99 cases were clean and no page view
changed the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import APP_PAGES
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = APP_PAGES
TIMEOUT = 90
EXAMPLES_PER_PAGE = 6  # plus the explicit no-parameter case: 7 per page, 77 in all

# The keys the app reads from the URL (grep query_params and bind="query-params" in pages/ and
# clipeval/ui/): the run (widgets._sync_run), k and the four thresholds (sidebar, named by
# clipeval.evaluators.rules.RULES[e].param), the neuron page's layer / unit / toggles, the maps'
# toggle and opacity, the live probe's image, the thresholds page's reference rater, annotate's rater
# and order.
KEYS = [
    "run",
    "k",
    "p",
    "tau",
    "cut",
    "auc",
    "layer",
    "unit",
    "show_vqa",
    "show_cp",
    "show_es",
    "show_contrast",
    "show_human",
    "show_auto",
    "map_on",
    "map_opacity",
    "live_image",
    "ref",
    "rater",
    "ann_order",
]
# names close to the real ones (the run selectbox's session key, a list-style name, case) and nonsense
JUNK_KEYS = st.sampled_from(["run_choice", "Run", "layer[]", "page", "embed", "x", "__proto__", " k"]) | st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8
)

# surrogates cannot travel in a URL (they do not encode as UTF-8); every other character can, NUL included
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
NUMBER = st.one_of(
    st.integers().map(str),  # unbounded: huge and negative
    st.sampled_from([2**31 - 1, 2**31, 2**63, -(2**63) - 1, 10**400, -1, 0]).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),  # nan, inf, -inf, 1e+308, -0.0, 5e-324
    st.sampled_from(["NaN", "Infinity", "-inf", "1e999", "0x10", "1_000", " 1 ", "1,5", "+0.5", ".5", "5."]),
)
# values that are almost right: the real run id (and a prefix of it), real layer names, booleans in
# other spellings, the annotate orders, the reference-rater choice
NEAR = st.sampled_from(
    [
        "{run}",
        "{run_prefix}",
        "{run} ",
        "{run}{run}",
        "blocks.1",
        "blocks.4",
        "classifier",
        "Blocks.1",
        "true",
        "false",
        "True",
        "FALSE",
        "1",
        "0",
        "on",
        "layers",
        "shuffled",
        "none",
        "alice",
        "",
        " ",
        "%00",
        "%",
        "&",
        "=",
        "?",
        "#",
        "\x00",
        "\n",
        "' OR 1=1 --",
    ]
)
VALUE = NEAR | NUMBER | TEXT
# a key given twice (?k=1&k=2) reaches AppTest as a list
VALUES = VALUE | st.lists(VALUE, min_size=2, max_size=3)


@st.composite
def query_params(draw) -> dict:
    # each real key independently present or not, so one case tries many of them (a bound widget takes
    # its own key only, so they do not hide each other's faults), and up to two junk keys
    real = draw(st.fixed_dictionaries({}, optional={k: VALUES for k in KEYS}))
    junk = draw(st.dictionaries(JUNK_KEYS.filter(lambda k: k not in KEYS), VALUES, max_size=2))
    return {**junk, **real}


def fill(value, run_id: str):
    if isinstance(value, list):
        return [fill(v, run_id) for v in value]
    return value.replace("{run_prefix}", run_id[:6]).replace("{run}", run_id)


def store_fingerprint(store) -> tuple:
    """Cheap and complete enough to see any write: the file's size and mtime (and its WAL's), the
    store's data version, and the row count of every table."""
    tables = [r[0] for r in store.rows("SELECT table_name FROM duckdb_tables() ORDER BY table_name")]
    counts = tuple((t, store.scalar(f'SELECT count(*) FROM "{t}"')) for t in tables)
    return store.file_stamp(), store.data_version(), counts


def open_page_with(page: str, params: dict) -> AppTest:
    """A link to `page` carrying `params`. AppTest reaches a page of st.navigation only through the
    default page (switch_page needs the registered pages of a first run), so the first run is the
    Overview with the parameters (which fuzzes the sidebar's: run, k, thresholds) and the second the
    page, given the parameters again (the first run rewrote the URL to the keys it bound)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.run()
    assert not at.exception, ("pages/home.py", [e.value for e in at.exception])
    if page != "pages/home.py":
        at.switch_page(page)
        at.query_params.update(params)
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
    return at


pytestmark = pytest.mark.usefixtures("fresh_caches")


def test_the_url_reaches_the_widgets(app_store):
    """Without this the fuzz could pass for nothing: parameters given the way it gives them are the
    ones the sidebar and the page's own widgets take."""
    _, run_id = app_store
    at = open_page_with("pages/neuron.py", {"run": run_id[:6], "p": "0.02", "layer": "classifier", "unit": "3"})
    assert at.sidebar.selectbox(key="run_choice").value == run_id
    assert at.sidebar.number_input(key="p").value == pytest.approx(0.02)
    assert at.selectbox(key="layer").value == "classifier"
    assert at.number_input(key="unit").value == 3


def test_an_infinite_whole_number_in_the_url(app_store):
    """Found by the fuzz below: ?unit=-inf made the Neuron explorer raise OverflowError (Streamlit 1.67
    converts a bound integer number_input's URL value with int(), and catches only ValueError), as did
    ?live_image=inf for the probe image picker on the same page. Such a value is ignored like any other
    invalid one: the widget starts from its default, and the other parameters still count."""
    for unit, image, want in [("-inf", "inf", 0), ("1e999", "-1e999", 0), ("Infinity", "nan", 0), ("7", "inf", 7)]:
        at = open_page_with("pages/neuron.py", {"layer": "classifier", "unit": unit, "live_image": image})
        assert at.selectbox(key="layer").value == "classifier"
        assert at.number_input(key="unit").value == want
        assert at.number_input(key="live_image").value is None  # empty: the unit's most activating image


TRIED: dict[str, int] = {}


@pytest.mark.parametrize("page", PAGES)
# No shrinking: a case costs about a second, and shrinking a failure took 5 minutes (the failing case is
# printed as drawn, with the page's exception naming what broke). derandomize: the same cases every run.
@settings(
    max_examples=EXAMPLES_PER_PAGE,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(params=query_params())
@example(params={})  # the page as linked without parameters: a fault there is not the URL's
def test_any_url_parameters_render_and_change_nothing(app_store, page, params):
    store, run_id = app_store
    params = {k: fill(v, run_id) for k, v in params.items()}
    before = store_fingerprint(store)
    open_page_with(page, params)
    assert store_fingerprint(store) == before, (page, params)
    TRIED[page] = TRIED.get(page, 0) + 1
    event(f"{len(params)} parameters")  # pytest --hypothesis-show-statistics
    print(f"{page}: case {TRIED[page]} clean: {params!r}")
