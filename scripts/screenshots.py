"""Screenshot every page of the explorer: start `streamlit run app.py` on a free localhost port against
a run store, open each page in headless Chromium, and write one PNG per page.

    python scripts/screenshots.py [STORE] [--out screenshots/] [--pages neuron,layers] [--wait 15]
    python scripts/screenshots.py --url http://localhost:8501    # the app `./run app` is serving

STORE defaults to $CLIPEVAL_DB, else clipeval.store.DEFAULT_DB. Chromium: /usr/bin/chromium (Debian:
`apt-get install -y chromium`) or $CHROMIUM. Streamlit renders in the browser, so each shot is taken
over the DevTools protocol once the app is idle and the page has stopped changing (at most --wait
seconds), at the page's full height unless --viewport-only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# page name -> URL path and query (the app keeps its state in the URL, so a link is a view)
PAGES = {
    "overview": "",  # the default page lives at the root URL
    "neuron": "neuron",
    "layers": "layers",
    "thresholds": "thresholds",
    "agreement": "agreement",
    "labellers": "labellers",
    "runs": "runs",
    "report": "report",
    "annotate": "annotate?rater=screenshot",
    "sql": "sql",
    "glossary": "glossary",
}
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium() -> str:
    for c in (
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if c and Path(c).exists():
            return c
    sys.exit("no Chromium found: apt-get install -y chromium (Debian), or set CHROMIUM=/path/to/chrome")


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit("streamlit did not come up in time")


class Cdp:
    """A minimal Chrome DevTools Protocol client over the `websockets` package (a Streamlit dependency)."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._conn = connect(ws_url, max_size=None, open_timeout=30)
        self.ws = self._conn.__enter__()
        self.next_id = 0
        self.events: list[dict] = []  # protocol events received while waiting for answers (Network.*)

    def call(self, method: str, **params):
        import json

        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if "method" in msg:
                self.events.append(msg)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    def close(self):
        self._conn.__exit__(None, None, None)


# Idle = the app finished its script run (stApp's data-test-script-state), every image has loaded and the page's
# text and the number of charts have stopped changing.
READY_JS = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return null;
  const running = app.getAttribute('data-test-script-state') !== 'notRunning';
  const skeleton = document.querySelector('[data-testid="stSkeleton"]');
  const imgs = [...document.images].every(i => i.complete);
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  return JSON.stringify({busy: running || !!skeleton || !imgs, text: main.innerText.length,
                         plots: document.querySelectorAll('.js-plotly-plot .main-svg').length});
})()"""
# the middle of the first chart's plot area, where --hover moves the mouse (plotly then shows its hover)
HOVER_JS = """(() => {
  const d = document.querySelector('.js-plotly-plot .nsewdrag');
  if (!d) return null;
  const r = d.getBoundingClientRect();
  return JSON.stringify({x: r.left + r.width * 0.45, y: r.top + r.height * 0.5});
})()"""
# the tab or button whose text is the given label
CLICK_JS = """((label) => {
  const b = [...document.querySelectorAll('[role="tab"], button')].find(
    b => b.innerText.split('\\n').some(l => l.trim() === label));  // a button's icon is a line of its text
  if (!b) return false; b.click(); return true;
})(%s)"""
HEIGHT_JS = """(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const block = document.querySelector('[data-testid="stMainBlockContainer"]');
  return Math.max(block ? block.scrollHeight + 120 : 0, main ? main.scrollHeight : 0, document.body.scrollHeight);
})()"""


def external_requests(events: list[dict]) -> list[str]:
    """URLs the page requested from anywhere but this machine (the app must work offline)."""
    from urllib.parse import urlparse

    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return [
        u
        for u in urls
        if urlparse(u).scheme in ("http", "https", "ws", "wss")
        and urlparse(u).hostname not in ("127.0.0.1", "localhost", "::1")
    ]


def settle(cdp: Cdp, url: str, wait_s: float) -> None:
    """Wait until the app's script run has finished and the page has stopped changing (at most wait_s)."""
    deadline, last, stable_since = time.time() + wait_s, None, time.time()
    time.sleep(1.0)
    while time.time() < deadline:
        state = cdp.js(READY_JS)
        if state != last:
            last, stable_since = state, time.time()
        elif state and not json.loads(state)["busy"] and time.time() - stable_since > 1.5:
            return
        time.sleep(0.25)
    print(f"  note: {url} still changing after {wait_s:.0f} s; shot taken anyway", file=sys.stderr)


def shoot(
    chromium: str,
    url: str,
    out: Path,
    width: int,
    height: int,
    wait_s: float,
    full: bool,
    external: list | None = None,
    hover: bool = False,
    click: str = "",
) -> bool:
    """Open `url`, wait until Streamlit is idle and stable (at most wait_s), click the tab or button labelled
    `click` if given (a closed tab's chart), screenshot the whole page (with `hover`, the mouse over the first
    chart); append every request that left localhost to `external`."""
    import base64

    with devtools_page(chromium, width, height) as cdp:
        if cdp is None:
            print("  chromium did not start", file=sys.stderr)
            return False
        cdp.call("Page.navigate", url=url)
        settle(cdp, url, wait_s)
        if click:
            if not cdp.js(CLICK_JS % json.dumps(click)):
                print(f"  note: nothing labelled {click!r} to click on {url}", file=sys.stderr)
            settle(cdp, url, wait_s)
        if full:
            h = min(int(cdp.js(HEIGHT_JS) or height), 8000)
            if h > height:
                cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=h, deviceScaleFactor=1, mobile=False)
                time.sleep(1.5)  # let charts and the data grids re-layout at the new height
        point = cdp.js(HOVER_JS) if hover else None
        if point:
            p = json.loads(point)
            cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=p["x"], y=p["y"])
            time.sleep(0.8)
        shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        out.write_bytes(base64.b64decode(shot["data"]))
        cdp.js("1")  # drain the events that arrived meanwhile
        if external is not None:
            external.extend(external_requests(cdp.events))
    return out.exists()


@contextmanager
def devtools_page(chromium: str, width: int, height: int):
    """Headless Chromium on a fresh profile with one page driven over the DevTools protocol (Page and
    Network events on, a width x height viewport). Yields its Cdp, or None if Chromium did not start."""
    # Chromium's helper processes can still be writing the profile as the browser exits
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [
                chromium,
                *CHROME_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.time() + 30
            while not port_file.exists() or len(port_file.read_text().split()) < 2:
                if time.time() > deadline or proc.poll() is not None:
                    yield None
                    return
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            cdp = Cdp(page["webSocketDebuggerUrl"])  # it keeps the protocol events it reads (cdp.events)
            try:
                cdp.call(
                    "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
                )
                cdp.call("Page.enable")
                cdp.call("Network.enable")
                yield cdp
            finally:
                cdp.close()
        finally:
            stop(proc)
            # Chromium keeps its singleton socket in a /tmp/org.chromium.* folder named by a link in the profile
            link = Path(profile) / "SingletonSocket"
            if link.is_symlink() and Path(os.readlink(link)).parent.name.startswith("org.chromium."):
                shutil.rmtree(Path(os.readlink(link)).parent, ignore_errors=True)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def serve_app(store, log=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free localhost port against `store`, once it answers: (process, base URL).
    Its output goes to `log` (a file, or nothing)."""
    port = free_port()
    env = {**os.environ, "CLIPEVAL_DB": str(Path(store).resolve()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


def shots_of(args) -> dict[str, str]:
    """Page name -> URL path and query, from --pages and --query."""
    shots = {name: PAGES.get(name) for name in args.pages.split(",") if name}
    unknown = [n for n, path in shots.items() if path is None]
    if unknown:
        sys.exit(f"unknown page(s) {unknown}; choose from {', '.join(PAGES)}")
    for extra in args.query:
        name, _, path = extra.partition("=")
        shots[name] = path
    return shots


def shoot_all(chromium: str, base: str, shots: dict[str, str], out: Path, args) -> int:
    ok = True
    external: list[str] = []
    for name, path in shots.items():
        target = out / f"{name}.png"
        target.unlink(missing_ok=True)
        url = f"{base}/{path}"
        t = time.time()
        good = shoot(
            chromium,
            url,
            target,
            args.width,
            args.height,
            args.wait,
            not args.viewport_only,
            external,
            args.hover,
            args.click,
        )
        ok &= good
        print(f"{name:12s} {url}  ->  {target if good else 'FAILED'}  ({time.time() - t:.1f} s)")
    if external:
        print(
            f"{len(external)} request(s) left localhost (the app must work offline):",
            *sorted(set(external)),
            sep="\n  ",
        )
        return 1
    print("no request left localhost")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", nargs="?", help="run store (.duckdb); default $CLIPEVAL_DB or clipeval's default")
    ap.add_argument("--out", default=str(ROOT / "screenshots"), help="output folder (default: screenshots/)")
    ap.add_argument("--pages", default=",".join(PAGES), help=f"comma-separated subset of {', '.join(PAGES)}")
    ap.add_argument("--click", default="", help="click the tab or button with this label first, e.g. 'Chart'")
    ap.add_argument(
        "--query",
        action="append",
        default=[],
        help="extra shot NAME=PATH?QUERY, e.g. neuron-b4=neuron?layer=blocks.4&unit=3&tau=0.3",
    )
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1800)
    ap.add_argument("--wait", type=float, default=30, help="at most this many seconds for a page to settle")
    ap.add_argument("--viewport-only", action="store_true", help="shoot the window only, not the whole page")
    ap.add_argument("--hover", action="store_true", help="move the mouse over the first chart before each shot")
    ap.add_argument(
        "--url",
        help="shoot an app that is already running (e.g. http://localhost:8501, as `./run app` "
        "serves it) instead of starting one on STORE",
    )
    args = ap.parse_args(argv)
    if args.url:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        return shoot_all(find_chromium(), args.url.rstrip("/"), shots_of(args), out, args)

    store = args.store or os.environ.get("CLIPEVAL_DB")
    if not store:
        sys.path.insert(0, str(ROOT))
        from clipeval.store import DEFAULT_DB

        store = str(DEFAULT_DB)
    if not Path(store).exists():
        sys.exit(f"no run store at {store}: build one with `python -m clipeval demo` or pass a path")
    shots = shots_of(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chromium = find_chromium()

    log = open(out / "streamlit.log", "w")
    try:
        proc, base = serve_app(store, log)
        try:
            ok = shoot_all(chromium, base, shots, out, args) == 0
        finally:
            stop(proc)
    finally:
        log.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
