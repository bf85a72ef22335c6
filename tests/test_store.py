"""The run store: bad files, locks, interrupted and failed runs never shown complete, atomic writes."""

import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import pytest

from clipeval.errors import ClipevalError
from clipeval.store import Store, StoreBusy


def test_not_a_duckdb_file(tmp_path):
    bad = tmp_path / "runs.duckdb"
    bad.write_text("this is a text file, not a database\n" * 100)
    with pytest.raises(ClipevalError, match="not a DuckDB run store"):
        Store(bad)


def test_a_store_held_too_long_by_another_process_gives_a_message(tmp_path):
    db = tmp_path / "runs.duckdb"
    Store(db).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(db)!r})
        print("ready", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    said = []
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreBusy, match=rf"stayed busy for \d+ s \(process {holder.pid}\).*CLIPEVAL_LOCK_TIMEOUT"):
            Store(db, timeout_s=1.0, on_wait=said.append).runs()
    finally:
        holder.kill()
        holder.wait()
    assert said and f"process {holder.pid} is using it" in said[0]


def test_read_only_store_must_exist(tmp_path):
    with pytest.raises(ClipevalError, match="does not exist yet"):
        Store(tmp_path / "nothing.duckdb", read_only=True)


def test_a_run_whose_process_died_shows_as_interrupted(tmp_path):
    s = Store(tmp_path / "r.duckdb")
    s.start_run("abc", "n", "dissect", "{}", "abc")
    assert s.runs().iloc[0]["status"] == "running"  # this process is alive
    s.execute("UPDATE runs SET pid = 2147483000")
    assert s.runs().iloc[0]["status"] == "interrupted"
    with pytest.raises(ClipevalError, match="interrupted, not complete"):
        s.complete_run("abc")
    with pytest.raises(ClipevalError, match="no run 'zzz'"):
        s.run("zzz")


def test_finish_is_all_or_nothing(run_store):
    store, run_id, _ = run_store
    before = len(store.neurons(run_id))
    import pandas as pd

    store.start_run("new", "n", "dissect", "{}", "new")
    good = pd.DataFrame({"layer": ["l"], "unit": [0], "label": ["x"], "similarity": [1.0]})
    with pytest.raises(duckdb.Error):  # the bad runner-ups frame fails inside the transaction
        store.finish_run(
            "new",
            layers=pd.DataFrame({"layer": ["l"], "position": [0], "shape": ["(1,)"], "n_units": [1]}),
            neurons=good,
            runner_ups=pd.DataFrame({"layer": ["l"], "unit": [0], "no_such_column": [1]}),
            neuron_images=None,
            histograms=None,
            meta={"run_id": "new"},
        )
    assert store.neurons("new").empty and store.layers("new").empty
    assert store.run("new")["status"] == "running"
    assert len(store.neurons(run_id)) == before


def test_delete_run_removes_everything(run_store):
    store, run_id, _ = run_store
    store.delete_run(run_id)
    assert store.runs().empty
    for table in ("neurons", "neuron_images", "runner_ups", "histograms", "layers", "human_verdicts"):
        assert store.df(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0
    assert store.df("SELECT count(*) AS n FROM eval_scores")["n"][0] == 0


def test_threads_of_one_process_open_the_store_one_at_a_time(tmp_path, monkeypatch):
    """The app's warm-up thread and a page open the store at once: a thread handed the database while
    another still sets it up had its next register() fail ("Table Function with name pandas_scan does
    not exist"), so duckdb.connect runs for one thread at a time."""
    store = Store(tmp_path / "s.duckdb")
    store.runs()  # the file and its tables exist
    real, guard = duckdb.connect, threading.Lock()
    inside = most = 0

    def slow(*args, **kwargs):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.2)  # a connect that takes a while: another thread would come in meanwhile
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(duckdb, "connect", slow)
    readers = [threading.Thread(target=store.runs) for _ in range(4)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    assert most == 1
