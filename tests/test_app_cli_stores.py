"""Every page of the explorer renders on a store made by each CLI path alone (issue 25, point 11), and
an answer given in the app on a run that `clipeval rm` removed meanwhile is not stored (point 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import APP_PAGES, SMALL_LAYERS
from streamlit.testing.v1 import AppTest

from clipeval.cli import main
from clipeval.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = [None, *APP_PAGES[1:]]  # None: the default page, the Overview

pytestmark = pytest.mark.usefixtures("fresh_caches")


def render(page: str | None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def errors(at: AppTest) -> list[str]:
    return [str(e.value) for e in at.exception] + [e.value for e in at.error]


@pytest.fixture(scope="module")
def cli_stores(built_run, probe_dir, tmp_path_factory) -> dict[str, Path]:
    """One store per way the CLI makes one, each by that command alone: `import-descriptions FILE`,
    `import-descriptions FILE --target --probe` and `dissect` (no evaluation). The built run's array
    cache is copied beside the dissect's store, so its forward passes are read back, not recomputed."""
    db, run_id, cache = built_run
    labels = Store(db, read_only=True).neurons(run_id)
    root = tmp_path_factory.mktemp("cli_stores")
    csv = root / "descriptions.csv"
    labels.rename(columns={"label": "description"})[["layer", "unit", "description", "similarity"]].to_csv(
        csv, index=False
    )
    stores = {}
    for kind, args in (
        ("import", ["import-descriptions", str(csv)]),
        (
            "import with activations",
            ["import-descriptions", str(csv), "--target", "efficientnet_lite0", "--probe", str(probe_dir)],
        ),
        (
            "dissect",
            [
                "dissect",
                "--layers",
                ",".join(SMALL_LAYERS),
                "--probe",
                str(probe_dir),
                "--concepts",
                "imagenet",
                "--sim-param",
                "top_k=20",
            ],
        ),
    ):
        folder = root / kind.replace(" ", "_")
        shutil.copytree(cache, folder / "cache")
        stores[kind] = folder / "runs.duckdb"
        assert main(["--db", str(stores[kind]), *args]) == 0, kind
    return stores


@pytest.mark.parametrize("kind", ["import", "import with activations", "dissect"])
def test_every_page_renders_on_a_store_made_by_one_cli_command(cli_stores, monkeypatch, kind):
    monkeypatch.setenv("CLIPEVAL_DB", str(cli_stores[kind]))
    for page in PAGES:
        at = render(page, rater="tester")
        assert not errors(at), (kind, page, errors(at))


def test_an_answer_on_a_run_removed_meanwhile_is_not_stored(app_store):
    store, run_id = app_store
    at = render("pages/annotate.py", rater="ivy")
    assert not at.exception
    assert main(["--db", str(store.path), "rm", run_id, "--yes"]) == 0  # another process, between two clicks
    at.button(key="ann_yes").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert store.scalar("SELECT count(*) FROM human_verdicts") == 0
    assert any(f"Not saved: 1 answer(s) on run {run_id}; the run was removed" in w.value for w in at.warning)
    at.run()  # said once
    assert not any("Not saved" in w.value for w in at.warning)
