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
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import CHROME_FLAGS, Cdp, find_chromium, stop  # noqa: E402

LOCAL = ("file:", "data:", "blob:", "about:", "chrome-error:")
COUNT_JS = """JSON.stringify({plots: document.querySelectorAll('.js-plotly-plot .main-svg').length,
  figures: document.querySelectorAll('.plotly-graph-div').length, units: document.querySelectorAll('.unit').length,
  ready: document.readyState})"""


def check(report: Path, shot: Path | None, wait_s: float, width: int = 1400, height: int = 2400) -> dict:
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium, *CHROME_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                 f"--window-size={width},{height}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.time() + 30
            while not port_file.exists() or len(port_file.read_text().split()) < 2:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("chromium did not start")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            cdp = Cdp(page["webSocketDebuggerUrl"])  # it keeps the protocol events it reads (cdp.events)
            try:
                cdp.call("Network.enable")
                cdp.call("Page.enable")
                cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                         mobile=False)
                start = time.time()
                cdp.call("Page.navigate", url=report.resolve().as_uri())
                state, last, stable = {}, None, time.time()
                while time.time() - start < wait_s:
                    raw = cdp.js(COUNT_JS)
                    state = json.loads(raw) if raw else {}
                    if raw != last:
                        last, stable = raw, time.time()
                    elif state.get("ready") == "complete" and state.get("plots", 0) >= state.get("figures", 1) \
                            and time.time() - stable > 1.5:
                        break
                    time.sleep(0.25)
                load_s = time.time() - start
                if shot:
                    data = cdp.call("Page.captureScreenshot", format="png")
                    shot.write_bytes(base64.b64decode(data["data"]))
                cdp.js("1")  # read the events that arrived since the last answer
                urls = [e["params"]["request"]["url"] for e in cdp.events if e["method"] == "Network.requestWillBeSent"]
            finally:
                cdp.close()
        finally:
            stop(proc)
            link = Path(profile) / "SingletonSocket"
            if link.is_symlink():
                import os

                if Path(os.readlink(link)).parent.name.startswith("org.chromium."):
                    shutil.rmtree(Path(os.readlink(link)).parent, ignore_errors=True)
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
    print(f"{report}: {res['requests']} requests, {len(res['outside'])} outside the file; "
          f"{res.get('plots', 0)} of {res.get('figures', 0)} charts drawn; {res.get('units', 0)} unit cards; "
          f"settled in {res['load_s']} s")
    return 0 if not res["outside"] and res.get("plots", 0) >= res.get("figures", 0) else 1


if __name__ == "__main__":
    sys.exit(main())
