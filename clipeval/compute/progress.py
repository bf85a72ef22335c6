"""Progress of long steps: the terminal's tqdm bars, and the same numbers in a small JSON status file
that the app reads, so that a build running in the background (the demo `./run app` starts) shows its
stage, items done and time left on the Overview while the app already serves.

Every long loop uses `bar(...)` instead of tqdm directly; it is a plain tqdm bar unless a status file is
being written (`reporting_to`), in which case each refresh of the bar also rewrites the file (atomically:
written under a temporary name and renamed, so a reader never sees half a file).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

_status: "BuildStatus | None" = None


def status_path(db: str | Path) -> Path:
    """Where the build status of the store at `db` is kept: beside it."""
    db = Path(db)
    return db.with_name(db.name + ".build.json")


def log_path(db: str | Path) -> Path:
    """Where a background build writes its terminal output."""
    db = Path(db)
    return db.with_name(db.name + ".build.log")


class BuildStatus:
    """The status file of one build: its process, stage, current bar and outcome."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.state = {
            "what": what,
            "pid": os.getpid(),
            "started": time.time(),
            "state": "running",
            "stage": "",
            "bar": None,
            "error": None,
        }
        self._write()

    def plan(self, steps: int, expected_s: float | None = None, basis: str = "") -> None:
        """The whole build: how many stages it has, and how long a measured build of the same took (`basis`
        says which), so the app can give the time left for all of it, not only the current step's."""
        self.state.update(steps=int(steps), step=0, expected_s=expected_s, basis=basis)
        self._write()

    def stage(self, text: str) -> None:
        self.state.update(stage=text, bar=None, step=int(self.state.get("step") or 0) + 1)
        self._write()

    def bar(self, d: dict) -> None:
        """From a tqdm bar's format_dict: what it counts, how many are done, the rate and time left."""
        rate = d.get("rate") or (d["n"] / d["elapsed"] if d.get("elapsed") else None)
        total = d.get("total")
        left = (total - d["n"]) / rate if rate and total else None
        self.state["bar"] = {
            "desc": (d.get("prefix") or "").rstrip(": "),
            "n": int(d["n"]),
            "total": int(total) if total else None,
            "unit": d.get("unit") or "it",
            "rate": rate,
            "seconds_left": left,
        }
        self._write()

    def finish(self, error: str | None = None) -> None:
        self.state.update(state="failed" if error else "done", error=error, bar=None, ended=time.time())
        self._write()

    def _write(self) -> None:
        self.state["updated"] = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)


@contextlib.contextmanager
def reporting_to(status: BuildStatus):
    """Bars created inside this block also report to `status`; the build's outcome is recorded on exit."""
    global _status
    previous, _status = _status, status
    try:
        yield status
    except BaseException as e:
        status.finish(error=f"{type(e).__name__}: {e}")
        raise
    else:
        status.finish()
    finally:
        _status = previous


def plan(steps: int, expected_s: float | None = None, basis: str = "") -> None:
    """Say how many stages the build has and how long a measured one took (no-op without a status file)."""
    if _status is not None:
        _status.plan(steps, expected_s, basis)


def stage(text: str) -> None:
    """Name the current stage of a build that reports to a status file (no-op otherwise)."""
    if _status is not None:
        _status.stage(text)


class _Bar(tqdm):
    def display(self, *args, **kwargs):
        shown = super().display(*args, **kwargs)
        if _status is not None:
            _status.bar(self.format_dict)
        return shown


def bar(iterable=None, **kwargs):
    """A tqdm progress bar (same arguments) that also reports to the active status file."""
    return _Bar(iterable, **kwargs)


def read(db: str | Path) -> dict | None:
    """The last build status of the store at `db`, with `alive` (its process still exists) and `stale`
    (it says running but its process is gone: killed). None when no build has reported."""
    path = status_path(db)
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    state["alive"] = _alive(int(state.get("pid") or 0))
    state["stale"] = state.get("state") == "running" and not state["alive"]
    return state


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1] != "Z"
    except (OSError, IndexError):
        return True
