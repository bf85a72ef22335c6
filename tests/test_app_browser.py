"""The explorer in headless Chromium, for what only a browser shows: the widget state the browser sends back
after a rerun (AppTest keeps widget values by id and cannot see it)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

# scripts/screenshots.py serves the app and drives Chromium over the DevTools protocol; it is a script, not
# part of the package, so it is loaded from its path
_spec = importlib.util.spec_from_file_location(
    "screenshots", Path(__file__).resolve().parents[1] / "scripts" / "screenshots.py"
)
screenshots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshots)

PICKER_JS = """document.querySelector('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').value"""
RENAME_BOX_JS = """(() => {
  const box = [...document.querySelectorAll('[data-testid="stTextInput"]')]
    .find(e => e.innerText.includes('New name for this run'));
  if (!box) return false; const i = box.querySelector('input'); i.focus(); i.click(); return true;
})()"""


def press_enter(cdp) -> None:
    for kind in ("keyDown", "keyUp"):
        cdp.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)


def test_a_rename_reaches_the_sidebar_picker_in_the_same_rerun(app_store, chromium):
    """The run picker's state in the browser is its option's text: after a rename the browser sent the old
    text back, so the picker kept showing the old name (or fell back to another run) until a later rerun."""
    store, run_id = app_store
    proc, base = screenshots.serve_app(store.path)
    try:
        with screenshots.devtools_page(chromium, 1440, 900) as cdp:
            assert cdp is not None, "Chromium did not start"
            cdp.call("Page.navigate", url=f"{base}/runs?run={run_id}")
            screenshots.settle(cdp, "runs", 90)
            assert store.run(run_id)["name"] in cdp.js(PICKER_JS)
            assert cdp.js(RENAME_BOX_JS)
            cdp.call("Input.insertText", text="my renamed run")
            press_enter(cdp)  # Streamlit takes a text box's value on Enter or blur
            screenshots.settle(cdp, "runs", 90)
            assert cdp.js(screenshots.CLICK_JS % json.dumps("Rename"))
            screenshots.settle(cdp, "runs", 90)
            deadline = time.time() + 10
            while "my renamed run" not in (cdp.js(PICKER_JS) or "") and time.time() < deadline:
                time.sleep(0.2)
            assert store.run(run_id)["name"] == "my renamed run"
            picked = cdp.js(PICKER_JS)
            assert "my renamed run" in picked and run_id[:8] in picked, picked
    finally:
        screenshots.stop(proc)
