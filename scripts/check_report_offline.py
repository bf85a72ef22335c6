"""Open an HTML report in headless Chromium and check it is self-contained: every request the page
makes is logged over the DevTools protocol, and any that is not file:, data:, blob: or about: is a
failure. Also counts the plotly charts that drew, and writes a screenshot of the top of the page.

    python scripts/check_report_offline.py REPORT.html [--shot report.png] [--wait 20]

Prints one line per request that left the file (none, when it passes) and exits 1 if there was one
or if a chart did not draw. Chromium: /usr/bin/chromium (Debian `chromium`) or $CHROMIUM.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import devtools_page, find_chromium  # noqa: E402

LOCAL = ("file:", "data:", "blob:", "about:", "chrome-error:")
# a chart counts as drawn when plotly.js has drawn marks into its frame: a plotly div with a size on the page
# and data marks (lines, bars, heatmap images) in its plot area (a count of svg elements once said "21 of 7
# charts drawn" and passed with some charts undrawn; axes alone are not a chart)
COUNT_JS = """JSON.stringify({plots: [...document.querySelectorAll('.plot')].filter(d => {
    const g = d.querySelector('.js-plotly-plot');
    return g && g.getBoundingClientRect().height > 0 && (g._fullData || []).length > 0
      && g.querySelector('.cartesianlayer .trace path, .cartesianlayer .trace image, .heatmaplayer image') !== null;
  }).length,
  figures: document.querySelectorAll('.plot').length, units: document.querySelectorAll('.unit').length,
  ready: document.readyState})"""


def check(report: Path, shot: Path | None, wait_s: float, width: int = 1400, height: int = 2400) -> dict:
    with devtools_page(find_chromium(), width, height) as cdp:
        if cdp is None:
            raise SystemExit("chromium did not start")
        start = time.time()
        cdp.call("Page.navigate", url=report.resolve().as_uri())
        state, last, stable = {}, None, time.time()
        while time.time() - start < wait_s:
            raw = cdp.js(COUNT_JS)
            state = json.loads(raw) if raw else {}
            if raw != last:
                last, stable = raw, time.time()
            elif (
                state.get("ready") == "complete"
                and state.get("plots", 0) >= state.get("figures", 1)
                and time.time() - stable > 1.5
            ):
                break
            time.sleep(0.25)
        load_s = time.time() - start
        if shot:
            data = cdp.call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(data["data"]))
        cdp.js("1")  # read the events that arrived since the last answer
        urls = [e["params"]["request"]["url"] for e in cdp.events if e["method"] == "Network.requestWillBeSent"]
    outside = [u for u in urls if not u.startswith(LOCAL)]
    return {"requests": len(urls), "outside": outside, "load_s": round(load_s, 1), **state}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--shot", help="PNG of the top of the page")
    ap.add_argument("--wait", type=float, default=30)
    args = ap.parse_args(argv)
    report = Path(args.report)
    if not report.is_file():
        print(f"error: {report} does not exist", file=sys.stderr)
        return 2
    res = check(report, Path(args.shot) if args.shot else None, args.wait)
    for u in res["outside"]:
        print(f"request left the file: {u[:200]}")
    print(
        f"{report}: {res['requests']} requests, {len(res['outside'])} outside the file; "
        f"{res.get('plots', 0)} of {res.get('figures', 0)} charts drawn; {res.get('units', 0)} unit cards; "
        f"settled in {res['load_s']} s"
    )
    return 0 if not res["outside"] and res.get("plots", 0) >= res.get("figures", 0) else 1


if __name__ == "__main__":
    sys.exit(main())
