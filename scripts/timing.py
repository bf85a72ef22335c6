"""Time the explorer as a user feels it, in headless Chromium: the first visit of every page (a fresh
browser session on an app that is already serving, as when a collaborator opens a shared link), the same
in a browser that has opened the app before (Streamlit's scripts in its HTTP cache), and the
interactions people repeat (layer change, label search, Next, a threshold step, 20 keyboard steps of
a slider, from the first and from the last press). Prints a Markdown table (docs/performance.md holds the measured ones).

    python scripts/timing.py --url http://localhost:8501 [--repeat 3] [--json out.json]
    python scripts/timing.py STORE            # starts `streamlit run app.py` on STORE first

A page or interaction is done when the app's script run has finished (stApp's data-test-script-state
back to notRunning after it ran), no skeleton is left and every image has loaded. Times come from the
page's own clock (performance.now()), polled every 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import CHROME_FLAGS, Cdp, find_chromium, serve_app, stop  # noqa: E402
from screenshots import PAGES as SHOT_PAGES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = {**SHOT_PAGES, "annotate": "annotate?rater=timing"}  # --pages names -> path; its own rater

# Records every change of the app's script state with the page clock, from the first script run on.
OBSERVER_JS = """(() => {
  window.__runs = [];
  const watch = () => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app) return setTimeout(watch, 10);
    window.__runs.push([app.getAttribute('data-test-script-state'), performance.now()]);
    new MutationObserver(() => window.__runs.push([app.getAttribute('data-test-script-state'), performance.now()]))
      .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  };
  watch();
  // plotly draws after the script run ends (and again after a rerun changes a figure): the last change
  // inside a chart counts as the page's, so a page is settled only once its charts are drawn
  window.__chartChange = 0;
  new MutationObserver(records => {
    if (records.some(r => r.target.closest && r.target.closest('[data-testid="stPlotlyChart"]')))
      window.__chartChange = performance.now();
  }).observe(document, {subtree: true, childList: true, attributes: true});
})()"""
# Settled since t0: a script run started after t0 has finished, nothing is loading, every chart is drawn and
# none has changed for 150 ms (the time returned is the last change's, not the end of that wait).
SETTLED_JS = """((t0) => {
  const runs = window.__runs || [];
  const start = runs.findIndex(r => r[1] >= t0 && r[0] === 'running');
  const end = start < 0 ? null : runs.slice(start).find(r => r[0] === 'notRunning');
  const app = document.querySelector('[data-testid="stApp"]');
  const ready = end && app && app.getAttribute('data-test-script-state') === 'notRunning'
    && !document.querySelector('[data-testid="stSkeleton"]') && [...document.images].every(i => i.complete);
  if (!ready) { window.__readyAt = null; return null; }
  if (window.__readyFor !== t0 || window.__readyAt == null) { window.__readyFor = t0; window.__readyAt = performance.now(); }
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  if (!charts.every(c => c.querySelector('.main-svg'))) return null;
  if (performance.now() - window.__chartChange < 150) return null;  // a chart is still being drawn
  // when it became ready (less the 30 ms poll), or the charts' last change after t0, whichever is later
  return Math.max(end[1], window.__readyAt - 30, window.__chartChange > t0 ? window.__chartChange : 0) - t0;
})(%s)"""


class Browser:
    def __init__(self, chromium: str, width: int, height: int):
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [
                chromium,
                *CHROME_FLAGS,
                f"--user-data-dir={self.profile.name}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if time.time() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.cdp = Cdp(page["webSocketDebuggerUrl"])
        self.cdp.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        self.cdp.call("Page.enable")
        self.cdp.call("Emulation.setFocusEmulationEnabled", enabled=True)  # headless: key events need focus
        self.cdp.call("Page.addScriptToEvaluateOnNewDocument", source=OBSERVER_JS)

    def wait(self, t0: float, timeout: float = 30) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = self.cdp.js(SETTLED_JS % t0)
            if done is not None:
                return done / 1000
            time.sleep(0.03)
        return float("nan")

    def open(self, url: str) -> float:
        """Seconds from navigation start to the first settled page."""
        self.cdp.call("Page.navigate", url=url)
        time.sleep(0.2)
        return self.wait(0.0)

    def act(self, js: str) -> float:
        """Run `js` (which must return true when it did something) and time until settled."""
        t0 = self.cdp.js("performance.now()")
        ok = self.cdp.js(js)
        if not ok:
            raise RuntimeError(f"interaction failed: {js[:80]}")
        return self.wait(t0)

    def keys(self, key: str, code: int, times: int, gap_s: float) -> tuple[float, float]:
        """Seconds from the first press until settled, and from the last press until settled."""
        t0 = self.cdp.js("performance.now()")
        for i in range(times):
            for kind in ("rawKeyDown", "keyUp"):
                self.cdp.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)
            if i == times - 1:
                last = self.cdp.js("performance.now()")
            time.sleep(gap_s)
        # settled after the last press: a run that started after the first press has ended and none is running
        total = self.wait(t0)
        return total, total - (last - t0) / 1000

    def press(self, keys: list[tuple[str, int]], wait: bool = False) -> float:
        t0 = self.cdp.js("performance.now()")
        for key, code in keys:
            for kind in ("rawKeyDown", "keyUp"):
                self.cdp.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)
        return self.wait(t0) if wait else 0.0

    def type_text(self, text: str) -> float:
        t0 = self.cdp.js("performance.now()")
        self.cdp.call("Input.insertText", text=text)
        self.cdp.call("Input.dispatchKeyEvent", type="rawKeyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13)
        self.cdp.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
        return self.wait(t0)

    def close(self):
        self.cdp.close()
        stop(self.proc)
        self.profile.cleanup()


FOCUS_JS = """(() => {
  const el = [...document.querySelectorAll('%s')].find(e => e.innerText.includes(%s));
  const target = el && el.querySelector('%s');
  if (!target) return false;
  target.focus(); if (%s) target.click();
  return true;
})()"""


def focus(container: str, text: str, inner: str, click: bool = False) -> str:
    return FOCUS_JS % (container, json.dumps(text), inner, "true" if click else "false")


def click_button(label: str) -> str:
    return f"""(() => {{ const b = [...document.querySelectorAll('button')].find(b => b.innerText.split('\\n').some(l => l.trim().endsWith({json.dumps(label)})));
      if (!b || b.disabled) return false; b.click(); return true; }})()"""


def measure(
    chromium: str, base: str, width: int, height: int, pages: list[str] | None = None, query: str = ""
) -> dict[str, float]:
    """`query` (e.g. run=abc) goes on every URL: the same run before and after a change, whichever is newest."""

    def url(path: str) -> str:
        return f"{base}/{path}" + (("&" if "?" in path else "?") + query if query else "")

    pages = list(PAGES.values()) if pages is None else pages
    out: dict[str, float] = {}
    for page in pages:
        b = Browser(chromium, width, height)
        try:
            out[f"first visit: /{page.split('?')[0]}"] = b.open(url(page))
        finally:
            b.close()
    # the same pages in one browser that has opened the app before (its scripts in the HTTP cache, as for
    # a collaborator's second link): each load is still a new session with its first script run
    b = Browser(chromium, width, height)
    try:
        b.open(url(""))
        for page in pages:
            out[f"cached scripts: /{page.split('?')[0]}"] = b.open(url(page))
    finally:
        b.close()
    b = Browser(chromium, width, height)
    try:
        out["first visit: shared neuron link"] = b.open(url("neuron?layer=classifier&unit=207&tau=0.3"))
        out["neuron: Next"] = b.act(click_button("Next"))
        # layer change: open the layer select box and pick the second option
        b.cdp.js(focus('[data-testid="stSelectbox"]', "Layer", "input"))
        b.press([("ArrowDown", 40)])  # opens the list on the current layer (the last one: classifier)
        time.sleep(0.3)
        b.press([("ArrowUp", 38)])  # the layer before it
        time.sleep(0.3)
        out["neuron: layer change"] = b.press([("Enter", 13)], wait=True)
        b.cdp.js(focus('[data-testid="stTextInput"]', "Search labels", "input", click=True))
        out["neuron: label search 'dog'"] = b.type_text("dog")
        b.cdp.js(focus('[data-testid="stSlider"]', "ES: tau", "input"))
        out["neuron: tau one keyboard step"] = b.keys("ArrowRight", 39, 1, 0.0)[0]
        out["neuron: tau 20 keyboard steps"], out["neuron: tau 20 keyboard steps, after the last"] = b.keys(
            "ArrowRight", 39, 20, 0.05
        )
        b.open(url("layers"))
        b.cdp.js(focus('[data-testid="stSlider"]', "ES: tau", "input"))
        out["layers: tau one keyboard step"] = b.keys("ArrowLeft", 37, 1, 0.0)[0]
        b.open(url("thresholds"))
        b.cdp.js(focus('[data-testid="stSlider"]', "ES: tau", "input"))
        out["thresholds: tau one keyboard step"] = b.keys("ArrowLeft", 37, 1, 0.0)[0]
        b.open(url("agreement"))
        b.cdp.js(focus('[data-testid="stSlider"]', "ES: tau", "input"))
        out["agreement: tau one keyboard step"] = b.keys("ArrowLeft", 37, 1, 0.0)[0]
    finally:
        b.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", nargs="?")
    ap.add_argument("--url")
    ap.add_argument("--repeat", type=int, default=3, help="measure this many times; the table shows the median")
    ap.add_argument("--width", type=int, default=1440)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--pages", help="comma-separated subset of the pages' first visits, e.g. thresholds,layers")
    ap.add_argument("--query", default="", help="added to every URL, e.g. run=0baa774a8b6c")
    args = ap.parse_args(argv)
    pages = list(PAGES.values())
    if args.pages:
        names = args.pages.split(",")
        unknown = sorted(set(names) - set(PAGES))
        if unknown:
            ap.error(f"unknown page(s) {', '.join(unknown)}: choose from {', '.join(PAGES)}")
        pages = [PAGES[n] for n in names]
    chromium = find_chromium()
    proc = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        store = args.store or os.environ.get("CLIPEVAL_DB")
        if not store or not Path(store).exists():
            sys.exit("give a run store (STORE or $CLIPEVAL_DB) or --url of a running app")
        proc, base = serve_app(store)
    try:
        runs = [measure(chromium, base, args.width, args.height, pages, args.query) for _ in range(args.repeat)]
    finally:
        if proc:
            stop(proc)
    load = os.getloadavg()
    print(
        f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f}; median of {args.repeat} "
        f"(min-max), seconds; {args.width} px wide\n"
    )
    print("| what | seconds | range |\n|---|---|---|")
    for key in runs[0]:
        vals = [r[key] for r in runs]
        print(f"| {key} | {statistics.median(vals):.2f} | {min(vals):.2f}-{max(vals):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
