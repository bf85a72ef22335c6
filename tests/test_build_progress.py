"""The app serves at once while the demo builds (issue 14, point 1): a build reports its stage and its
bars' progress to a status file beside the store; `clipeval demo --background` starts one detached build
and no second; the app shows the stage, the progress and the time left, and says when a build died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_app import open_page, texts

from clipeval.compute import progress

ROOT = Path(__file__).resolve().parents[1]


def test_a_bar_reports_its_progress_to_the_status_file(tmp_path):
    db = tmp_path / "s.duckdb"
    with progress.reporting_to(progress.BuildStatus(progress.status_path(db), "a test build")):
        progress.stage("step one")
        with progress.bar(total=40, desc="probe pass", unit="img", mininterval=0, file=open(os.devnull, "w")) as b:
            for _ in range(10):
                b.update(1)
                time.sleep(0.01)
            state = progress.read(db)
            assert state["state"] == "running" and state["alive"] and state["stage"] == "step one"
            assert state["bar"]["desc"] == "probe pass" and state["bar"]["n"] == 10 and state["bar"]["total"] == 40
            assert state["bar"]["unit"] == "img" and state["bar"]["seconds_left"] > 0
    assert progress.read(db)["state"] == "done"


def test_a_failed_build_records_its_error(tmp_path):
    db = tmp_path / "s.duckdb"
    with pytest.raises(RuntimeError):
        with progress.reporting_to(progress.BuildStatus(progress.status_path(db), "a test build")):
            progress.stage("step two")
            raise RuntimeError("disk full")
    state = progress.read(db)
    assert state["state"] == "failed" and state["error"] == "RuntimeError: disk full" and state["stage"] == "step two"


def test_bars_without_a_status_file_write_none(tmp_path):
    for _ in progress.bar(range(3), file=open(os.devnull, "w")):
        pass
    assert progress.read(tmp_path / "s.duckdb") is None and not list(tmp_path.iterdir())


def _status(db: Path, **state) -> None:
    base = {
        "what": "the offline demo (full)",
        "pid": os.getpid(),
        "started": time.time() - 75,
        "state": "running",
        "stage": "demo run 2 of 3: concept set common-20k",
        "error": None,
        "bar": {"desc": "probe pass", "n": 120, "total": 198, "unit": "batch", "rate": 1.5, "seconds_left": 52.0},
    }
    progress.status_path(db).write_text(json.dumps({**base, **state}))


def test_the_app_shows_the_build_stage_and_time_left(tmp_path, monkeypatch):
    db = tmp_path / "building.duckdb"
    monkeypatch.setenv("CLIPEVAL_DB", str(db))
    _status(db)
    for page in (None, "pages/neuron.py"):
        at = open_page(page)
        body = texts(at)
        assert "Building the offline demo (full) in the background" in body, page
        assert "demo run 2 of 3: concept set common-20k" in body and "0 run(s) complete" in body
        bars = at.get("progress")
        assert len(bars) == 1 and "probe pass: 120/198 batch, 1.50 batch/s, about 52 s left" in str(bars[0].proto)
        assert "No complete run" in body  # and how to make one, below


def test_the_app_says_when_a_build_died_or_failed(tmp_path, monkeypatch):
    db = tmp_path / "building.duckdb"
    monkeypatch.setenv("CLIPEVAL_DB", str(db))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _status(db, pid=dead.pid)
    at = open_page()
    assert any("stopped before it finished" in w.value and "common-20k" in w.value for w in at.warning)
    assert not at.get("progress")
    _status(db, state="failed", error="ClipevalError: no space left", bar=None)
    at = open_page()
    assert any("failed during: demo run 2 of 3" in e.value and "no space left" in e.value for e in at.error)


def test_background_starts_one_detached_build_and_no_second(tmp_path, monkeypatch):
    db = tmp_path / "demo.duckdb"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "clipeval", "--db", str(db), "demo", "--size", "small", "--background"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "building the offline demo in the background" in first.stderr
    pid = int(first.stderr.split("(process ")[1].split(")")[0])
    try:
        deadline = time.time() + 180
        while (progress.read(db) is None or progress.read(db)["pid"] != pid) and time.time() < deadline:
            time.sleep(0.5)
        state = progress.read(db)
        assert state and state["pid"] == pid and state["state"] == "running" and state["alive"]
        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0 and f"already running (process {pid})" in second.stderr
        monkeypatch.setenv("CLIPEVAL_DB", str(db))  # the app beside the build, on the store it writes
        at = open_page()
        assert "Building the offline demo (small) in the background" in texts(at)
    finally:
        os.killpg(pid, signal.SIGKILL)  # its own session: the build and anything it started
    deadline = time.time() + 30
    while not progress.read(db)["stale"] and time.time() < deadline:
        time.sleep(0.2)
    assert progress.read(db)["stale"]
    assert progress.log_path(db).exists()
