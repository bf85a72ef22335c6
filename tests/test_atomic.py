"""No result is deleted before its replacement exists (issue 11, point 2): a forced recompute and a
repeated evaluation swap old for new in one transaction; kill -9 at any moment leaves one complete
result; an evaluator killed mid-way shows as interrupted."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_a_forced_recompute_keeps_the_old_result_until_the_new_one_is_in(run_store):
    store, run_id, _ = run_store
    old = store.neurons(run_id)
    store.start_run(run_id, "again", "dissect", "{}", run_id)  # what dissect --force does first
    assert store.run(run_id)["status"] == "complete" and store.neurons(run_id).equals(old)
    store.fail_run(run_id, "failed", "the recompute crashed")  # it fails: the old result stays
    assert store.run(run_id)["status"] == "complete" and store.neurons(run_id).equals(old)
    layers = store.layers(run_id).assign(position=range(len(store.layers(run_id))))
    new = old.assign(label="swapped")
    store.finish_run(
        run_id,
        layers=layers[["layer", "position", "shape", "n_units"]],
        neurons=new,
        runner_ups=None,
        neuron_images=None,
        histograms=None,
        meta={"run_id": run_id},
    )
    assert set(store.neurons(run_id)["label"]) == {"swapped"} and len(store.neurons(run_id)) == len(old)


SWAPPER = """
import sys, pandas as pd
from clipeval.store import Store
store = Store(sys.argv[1])
run_id, eval_id = sys.argv[2], sys.argv[3]
neurons = store.neurons(run_id)
base = pd.concat([neurons.assign(variant="real", kind="top", rank=r, image_id=r, raw=0.5) for r in range(1, 6)])
print("ready", flush=True)
i = 0
while True:
    i += 1
    tag = "A" if i % 2 else "B"
    scores = base.assign(label=tag) if tag == "A" else pd.concat([base, base.assign(variant="shuffled")]).assign(label=tag)
    store.record_evaluation(eval_id, run_id, "es", "{}", status="complete", scores=scores)
"""


def test_kill_9_during_repeated_swaps_leaves_one_complete_result(run_store):
    store, run_id, _ = run_store
    n = len(store.neurons(run_id)) * 5
    expected = {"A": n, "B": 2 * n}
    random.seed(0)
    for _attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", SWAPPER, str(store.path), run_id, "swap-test"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5 + random.random() * 2.5)
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
        status = store.evaluation_status("swap-test")
        scores = store.eval_scores("swap-test")
        if status is None:  # killed before the first swap committed
            assert scores.empty
            continue
        assert status == "complete"
        labels = set(scores["label"])
        assert len(labels) == 1, labels  # never a mix of the old and the new rows
        assert len(scores) == expected[labels.pop()]


def _running_rows(proc: subprocess.Popen, rows) -> pd.DataFrame:
    """The one 'running' row of `rows()` once the process has written it (at most 300 s)."""
    deadline = time.time() + 300
    running = pd.DataFrame()
    while time.time() < deadline and proc.poll() is None:
        ev = rows()
        running = ev[ev["status"] == "running"]
        if len(running):
            break
        time.sleep(0.2)
    assert len(running) == 1, proc.communicate()
    return running


def test_an_evaluator_killed_mid_way_shows_as_interrupted(run_store):
    store, run_id, cache = run_store
    (store.path.parent / "cache").symlink_to(cache)
    # k=3 at 96 px is a new evaluation with new image embeddings, so it computes for a while
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipeval",
            "evaluate",
            run_id,
            "--evaluators",
            "es",
            "--k",
            "3",
            "--eval-backend",
            "conse",
            "--eval-arch",
            "efficientnet_lite2",
            "--eval-image-size",
            "96",
            "--db",
            str(store.path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = _running_rows(proc, lambda: store.evaluations(run_id))
    proc.kill()
    proc.wait()
    latest = store.latest_evaluations(run_id)
    row = store.evaluations(run_id).set_index("eval_id").loc[running.iloc[0]["eval_id"]]
    assert row["status"] == "interrupted"
    assert store.scalar("SELECT count(*) FROM eval_scores WHERE eval_id = ?", [row.name]) == 0
    # the complete k=5 evaluation of es still counts as es's newest complete result
    assert latest.set_index("evaluator").loc["es", "status"] == "complete"


def _source_with_the_runs_labels(store, run_id, tmp_path) -> str:
    from clipeval.evaluators import sources

    neurons = store.neurons(run_id).head(8)
    f = tmp_path / "descriptions.csv"
    pd.DataFrame(
        {"layer": neurons["layer"], "unit": neurons["unit"], "description": neurons["label"], "similarity": 0.5}
    ).to_csv(f, index=False)
    return sources.add_source(store, run_id, "clip-dissect", str(f))


def test_a_source_evaluation_killed_mid_way_shows_as_interrupted(run_store, tmp_path):
    from clipeval.analysis.sources import LabellerView

    store, run_id, cache = run_store
    sid = _source_with_the_runs_labels(store, run_id, tmp_path)
    # the pass blocks in its scoring step, as a long one would, until it is killed
    script = textwrap.dedent(f"""
        import time
        from clipeval.evaluators import sources
        from clipeval.evaluators.run import EMBEDDING_EVALUATORS
        from clipeval.store import Store
        EMBEDDING_EVALUATORS["es"].score = lambda self, *a, **k: time.sleep(600)
        sources.evaluate_source(Store({str(store.path)!r}), {run_id!r}, {sid!r}, ["es"],
                                cache_dir={str(cache)!r}, progress=False)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _running_rows(proc, lambda: store.source_evaluations(run_id))
    before = store.data_version()
    proc.kill()
    proc.wait()
    row = store.source_evaluations(run_id).set_index("evaluator").loc["es"]
    assert row["status"] == "interrupted"
    assert store.source_evaluation_status(row["source_eval_id"]) == "interrupted"
    assert store.data_version() != before  # the app's caches see the death
    assert LabellerView(store, run_id).status[(sid, "es")] == "interrupted"


def test_a_failed_source_evaluation_says_why_and_keeps_an_earlier_complete_one(run_store, tmp_path, monkeypatch):
    import pytest

    from clipeval.evaluators import sources
    from clipeval.evaluators.run import EMBEDDING_EVALUATORS

    store, run_id, cache = run_store
    sid = _source_with_the_runs_labels(store, run_id, tmp_path)

    def broken(self, *a, **k):
        raise RuntimeError("out of disk")

    monkeypatch.setattr(EMBEDDING_EVALUATORS["es"], "score", broken)
    with pytest.raises(RuntimeError):
        sources.evaluate_source(store, run_id, sid, ["es"], cache_dir=cache, progress=False)
    row = store.source_evaluations(run_id).set_index("evaluator").loc["es"]
    assert (row["status"], row["error"]) == ("failed", "RuntimeError: out of disk")

    def stopped(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(EMBEDDING_EVALUATORS["es"], "score", stopped)
    with pytest.raises(KeyboardInterrupt):
        sources.evaluate_source(store, run_id, sid, ["es"], cache_dir=cache, progress=False)
    assert store.source_evaluations(run_id).set_index("evaluator").loc["es", "status"] == "interrupted"

    monkeypatch.undo()
    assert (
        sources.evaluate_source(store, run_id, sid, ["es"], cache_dir=cache, progress=False)[0]["status"] == "complete"
    )
    complete = store.source_evaluations(run_id).set_index("evaluator").loc["es"]
    n_scores = len(store.source_scores(complete["source_eval_id"]))
    monkeypatch.setattr(EMBEDDING_EVALUATORS["es"], "score", broken)
    with pytest.raises(RuntimeError):
        sources.evaluate_source(store, run_id, sid, ["es"], force=True, cache_dir=cache, progress=False)
    kept = store.source_evaluations(run_id).set_index("evaluator").loc["es"]
    assert kept["status"] == "complete" and len(store.source_scores(kept["source_eval_id"])) == n_scores > 0
