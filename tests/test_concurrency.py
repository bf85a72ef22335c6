"""Point 1 of issue 11 with real processes: the app and CLI commands on one store at the same time,
two CLI writers at once, an annotation while a CLI write holds the store, `clipeval app` stopping
its Streamlit child. A 'holder' process keeps the store open for writing for a set time, the way a
CLI command's final write transaction does, only longer, so the overlaps are certain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clipeval.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def cli(db: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clipeval", *args, "--db", str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


class Holder:
    """A process that holds the store open for writing (DuckDB's exclusive lock) for `seconds`, or
    until `release()`."""

    def __init__(self, db: Path, seconds: float = 600):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            import duckdb, select, sys
            con = duckdb.connect({str(db)!r})
            print("holding", flush=True)
            select.select([sys.stdin], [], [], {seconds})
            con.close()
        """),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "holding"
        self.pid = self.proc.pid

    def release(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.wait()

    def wait(self):
        self.proc.wait(timeout=60)


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 240) -> tuple[bool, list[str]]:
    """Read proc's stderr until a line contains `text` (True) or it ends / times out (False)."""
    import threading

    lines: list[str] = []
    found = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if text in line:
                found.set()
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    found.wait(timeout)
    return found.is_set(), lines


def verdict_csv(tmp_path: Path, store: Store, run_id: str, rater: str, n: int) -> Path:
    neurons = store.neurons(run_id).head(n)
    path = tmp_path / f"{rater}.csv"
    neurons.assign(verdict=[i % 2 == 0 for i in range(len(neurons))])[["layer", "unit", "verdict"]].to_csv(
        path, index=False
    )
    return path


pytestmark = pytest.mark.usefixtures("fresh_caches")


def test_two_cli_writers_at_once_both_succeed_the_second_saying_it_waits(run_store, tmp_path):
    store, run_id, _ = run_store
    db = store.path
    files = {r: verdict_csv(tmp_path, store, run_id, r, 7) for r in ("ann", "bob")}
    holder = Holder(db)  # a third command's write is under way
    writers = [cli(db, "humans", "import", run_id, str(files[r]), "--rater", r) for r in files]
    reader = cli(db, "runs")
    said = [wait_for_line(p, "waiting for the run store") for p in writers]
    holder.release()
    results = [finish(p) for p in writers]
    rc, out, err = finish(reader)
    for (waited, lines), (code, out_w, err_w) in zip(said, results):
        assert code == 0, "".join(lines) + err_w
        assert "stored 7 verdicts" in out_w
        assert waited and f"process {holder.pid}" in lines[-1]  # it said it waits, and for whom
    assert rc == 0 and run_id in out, err
    got = store.human_verdicts(run_id)
    assert sorted(got["rater"].unique()) == ["ann", "bob"] and len(got) == 14


def test_a_writer_gives_up_after_the_timeout_with_a_message(run_store, tmp_path):
    store, run_id, _ = run_store
    path = verdict_csv(tmp_path, store, run_id, "cy", 3)
    holder = Holder(store.path)
    code, out, err = finish(
        cli(store.path, "humans", "import", run_id, str(path), "--rater", "cy", env={"CLIPEVAL_LOCK_TIMEOUT": "1"})
    )
    holder.release()
    assert code == 2 and "stayed busy" in err and "CLIPEVAL_LOCK_TIMEOUT" in err
    assert store.human_verdicts(run_id, "cy").empty


def test_app_open_while_every_cli_command_works_and_new_results_show_on_the_next_rerun(
    run_store, tmp_path, monkeypatch
):
    store, run_id, _ = run_store
    db = store.path
    monkeypatch.setenv("CLIPEVAL_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    assert not at.exception
    before = {m.label: m.value for m in at.metric}

    # the app is open (it has read the store); every CLI command works on the same store meanwhile
    path = verdict_csv(tmp_path, store, run_id, "erin", 5)
    for args in (
        ["runs"],
        ["report", run_id],
        ["humans", "import", run_id, str(path), "--rater", "erin"],
        ["humans", "export", run_id, str(tmp_path / "out.csv")],
        ["export", run_id, "--out", str(tmp_path / "labels.csv")],
    ):
        code, out, err = finish(cli(db, *args))
        assert code == 0, (args, err)
        assert "locked" not in err

    at.run()  # the very next rerun shows the import, without a restart (no cache outlives a write)
    assert not at.exception
    after = {m.label: m.value for m in at.metric}
    assert after != before
    assert any("5" in str(v) for k, v in after.items() if "verdict" in k.lower() or "human" in k.lower()), after


def _annotate(monkeypatch, db: Path, rater: str, lock_timeout: str) -> AppTest:
    monkeypatch.setenv("CLIPEVAL_DB", str(db))
    monkeypatch.setenv("CLIPEVAL_LOCK_TIMEOUT", lock_timeout)
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params["rater"] = rater
    at.run()
    at.switch_page("pages/annotate.py").run()
    assert not at.exception
    return at


def test_an_annotation_during_a_short_cli_write_waits_and_is_saved(run_store, monkeypatch):
    store, run_id, _ = run_store
    at = _annotate(monkeypatch, store.path, "gil", "60")
    first = store.annotation_queue(run_id, "gil").iloc[0]
    holder = Holder(store.path, seconds=3)  # a CLI command's write transaction
    at.button(key="ann_yes").click().run()
    holder.wait()
    assert not at.exception
    got = store.human_verdicts(run_id, "gil")
    assert len(got) == 1 and (got.iloc[0]["layer"], int(got.iloc[0]["unit"])) == (first["layer"], int(first["unit"]))


def test_an_annotation_during_a_long_cli_write_is_kept_and_saved_later(run_store, monkeypatch):
    store, run_id, _ = run_store
    at = _annotate(monkeypatch, store.path, "fay", "1")  # the app gives up waiting after 1 s
    first = store.annotation_queue(run_id, "fay").iloc[0]
    holder = Holder(store.path)  # a CLI command is writing, for longer than the app waits
    at.button(key="ann_yes").click().run()
    assert not at.exception  # a message, not a traceback
    assert any("1 answer(s) wait to be saved" in w.value for w in at.warning), [w.value for w in at.warning]
    holder.release()
    at.run()  # the next rerun after the write saves it
    assert not at.exception
    got = store.human_verdicts(run_id, "fay")
    assert len(got) == 1 and (got.iloc[0]["layer"], int(got.iloc[0]["unit"]), bool(got.iloc[0]["verdict"])) == (
        first["layer"],
        int(first["unit"]),
        True,
    )
    assert not any("wait to be saved" in w.value for w in at.warning)


def test_a_dissect_run_finishing_while_the_app_is_open_shows_on_the_next_rerun(run_store, monkeypatch):
    """A real writer: `clipeval dissect` (cache warm, so quick) adds a run while the app is open. The
    app's run list is cached by the store's data version, not by time: reruns of an unchanged store
    read no runs from DuckDB, and the first rerun after the CLI's write shows the new run."""
    store, run_id, cache = run_store
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    cfg = json.loads(store.run(run_id)["config_json"])
    n_before = len(store.runs())
    reads = []
    real_runs = Store.runs

    def counted_runs(self):
        if threading.current_thread().name != "clipeval-warm-up":  # the app's one-off background warm-up
            reads.append(1)
        return real_runs(self)

    monkeypatch.setattr(Store, "runs", counted_runs)
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    n_reads = len(reads)
    at.run()
    at.run()
    assert len(reads) == n_reads  # nothing changed: the run list came from the cache
    args = [
        "dissect",
        "--layers",
        "classifier",
        "--probe",
        *cfg["probe"]["paths"],
        "--concepts",
        "imagenet",
        "--sim-param",
        "top_k=20",
        "--name",
        "second",
    ]
    (store.path.parent / "cache").symlink_to(cache)  # the built run's arrays: no probe pass needed
    code, out, err = finish(cli(store.path, *args))
    assert code == 0, err
    at.run()
    assert len(reads) > n_reads  # the write changed the data version: read again
    assert len(real_runs(store)) == n_before + 1
    assert "second" in "\n".join(str(d.value) for d in at.dataframe) + "\n".join(m.value for m in at.markdown)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(tmp_path) -> tuple[subprocess.Popen, int, int]:
    """`clipeval app` on an empty store, listening: (the clipeval process, its streamlit child, the port)."""
    db = tmp_path / "runs.duckdb"
    Store(db)
    port = _port()
    app = subprocess.Popen(
        [sys.executable, "-m", "clipeval", "--db", str(db), "app", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "STREAMLIT_SERVER_HEADLESS": "true", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"},
    )
    deadline = time.time() + 120
    child = None
    while time.time() < deadline and child is None:
        kids = subprocess.run(["pgrep", "-P", str(app.pid)], capture_output=True, text=True).stdout.split()
        child = int(kids[0]) if kids else None
        time.sleep(0.2)
    assert child, "no streamlit child started"
    with socket.socket() as s:  # wait until it listens, so it is fully up
        while time.time() < deadline and s.connect_ex(("127.0.0.1", port)) != 0:
            time.sleep(0.3)
    return app, child, port


def test_the_app_server_runs_on_uvloop_and_the_c_http_parser(tmp_path):
    """A first visit makes ~130-155 requests (75-90 script files) to the server's one thread, beside the
    page's script: on asyncio and pure-Python h11 that cost 0.2-0.4 s of it (docs/performance.md). Streamlit
    picks both up when installed, so this checks the install and that nothing pins the server back to the
    slow ones."""
    app, child, port = _start_app(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200
        maps = Path(f"/proc/{child}/maps").read_text()
        assert "uvloop/loop" in maps and "httptools/parser" in maps
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=30)


def test_sigterm_to_clipeval_app_stops_its_streamlit_child(tmp_path):
    app, child, _ = _start_app(tmp_path)
    app.send_signal(signal.SIGTERM)
    app.wait(timeout=30)
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "zombie" in _state(child):
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "zombie" in _state(child), "orphaned streamlit child"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0].lower()
    except (FileNotFoundError, IndexError):
        return "gone"
