"""On a CUDA GPU (skipped elsewhere, with the reason; conftest.py): the same runs as on the CPU, the
device stored and not hashed, a real out-of-memory error halving the batch, VQA on the GPU.

    python -m pytest -m gpu
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def test_dissect_on_cuda_is_the_cpu_run(built_run, probe_dir, tmp_path):
    """float32 on the GPU: the same settings, so the same run id (the device is not hashed); labels equal
    to the CPU run's except where two concepts' scores are within float rounding."""
    from conftest import small_config

    from clipeval.dissect import pipeline
    from clipeval.store import Store

    db, run_cpu, _ = built_run
    store = Store(tmp_path / "gpu.duckdb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_gpu = pipeline.dissect(
            small_config(probe_dir), store, cache_dir=tmp_path / "cache", progress=False, device="cuda"
        )
    assert run_gpu == run_cpu
    compute = json.loads(store.run(run_gpu)["models_json"])["compute"]
    assert compute["device"] == "cuda:0" and compute["dtype"] == "float32" and compute["gpu"]
    ref = Store(db, read_only=True)
    a = ref.neurons(run_cpu).sort_values(["layer", "unit"]).reset_index(drop=True)
    b = store.neurons(run_gpu).sort_values(["layer", "unit"]).reset_index(drop=True)
    ref.close()
    store.close()
    assert (a["label"] == b["label"]).mean() > 0.99
    np.testing.assert_allclose(a["similarity"], b["similarity"], rtol=1e-3, atol=1e-3)


def test_auto_dtype_on_the_gpu():
    from clipeval.compute.device import Placement

    p = Placement.resolve("auto", "auto")
    assert p.device.type == "cuda"
    assert p.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16)
    assert p.batch_size() == 256 and p.vqa_batch_size() == 256 and p.workers() >= 1


def test_evaluate_on_cuda_stores_the_device(run_store):
    from clipeval.evaluators.run import OFFLINE_EVAL_MODEL, evaluate

    store, run_id, cache = run_store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (o,) = evaluate(
            store,
            run_id,
            "es",
            eval_model=OFFLINE_EVAL_MODEL,
            cache_dir=cache,
            progress=False,
            device="cuda",
            dtype="float32",
        )
    assert o.status == "cached"  # float32 on the GPU is the CPU's evaluation: the device is not hashed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (o,) = evaluate(
            store,
            run_id,
            "es",
            eval_model=OFFLINE_EVAL_MODEL,
            cache_dir=cache,
            progress=False,
            device="cuda",
            force=True,
        )
    ev = store.evaluations(run_id).set_index("eval_id").loc[o.eval_id]
    assert json.loads(ev["models_json"])["compute"]["device"] == "cuda:0"


def test_a_real_out_of_memory_error_halves_the_batch():
    from clipeval.compute.device import OomHalving

    per_row = int(0.6 * torch.cuda.get_device_properties(0).total_memory)  # two rows never fit, one does
    logs = []

    def fn(a, b):
        x = torch.empty((b - a) * per_row, dtype=torch.uint8, device="cuda")
        n = x.numel()
        del x
        return n

    out = OomHalving(4, "rows", logs.append).run(fn, 4)
    assert sum(out) == 4 * per_row and len(out) == 4
    assert logs == [
        "CUDA out of memory on a batch of 4 rows: retrying in batches of 2",
        "CUDA out of memory on a batch of 2 rows: retrying in batches of 1",
    ]
    torch.cuda.empty_cache()


def test_vqa_on_cuda_matches_cpu():
    from PIL import Image
    from tiny_blip2 import make_tiny_blip2

    from clipeval.compute.batches import YesNoBatch
    from clipeval.models.vqa import Blip2Vqa

    cpu = make_tiny_blip2()
    other = make_tiny_blip2()  # same seed, same weights
    gpu = Blip2Vqa(other.model, other.processor, device="cuda", name="tiny-blip2")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    questions = [
        ['Question: Is this image related to "cat"? Answer:', 'Question: Is this image related to "red car"? Answer:']
    ] * 5
    a = np.concatenate(cpu.yes_probability(images, questions))
    b = np.concatenate(gpu.yes_probability(images, questions))
    np.testing.assert_allclose(a, b, atol=1e-4)
    pixels = torch.cat([gpu.pixel_values([im]) for im in images])
    c = np.concatenate(YesNoBatch(gpu, image_size=None, batch_size=2).forward(pixels, questions))
    np.testing.assert_allclose(b, c, atol=1e-5)


def test_cp_ranks_on_the_gpu_equal_the_cpu_ranks():
    from clipeval.evaluators.cp import ConceptProportion

    rng = np.random.default_rng(0)
    T = rng.normal(size=(3000, 64)).astype(np.float32)
    rows = {i: rng.normal(size=64).astype(np.float32) for i in range(500)}
    ids = np.arange(500)
    pair_rows = rng.integers(0, 500, 2000)
    pair_labels = rng.integers(0, 3000, 2000)
    want = np.array([1 + (T @ rows[r] > T[l] @ rows[r]).sum() for r, l in zip(pair_rows, pair_labels)], float)
    got = ConceptProportion._ranks_on(torch.device("cuda"), rows, ids, T, pair_rows, pair_labels, chunk=128)
    assert (np.abs(got - want) <= 1).all() and (got == want).mean() > 0.99  # float32 rounding at exact ties only
