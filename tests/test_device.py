"""--device / --dtype plumbing on the CPU: what is hashed and stored, the error without CUDA, batch
halving on (fake) CUDA out-of-memory errors, and the per-batch workers the DataLoader and Ray share."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipeval.compute.batches import ACT, EMB, THUMB, ImageEmbedder, ProbeBatch
from clipeval.compute.device import DEFAULT_BATCH, OomHalving, Placement, resolve_device, resolve_dtype
from clipeval.datasets.probe import ProbeImage
from clipeval.dissect.activations import ThumbFile, collect
from clipeval.errors import ClipevalError
from clipeval.models.targets import from_module

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")


# ------------------------------------------------------------------------------ device and dtype
def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device(None) == resolve_device("auto")
    for bad in ("gpu", "cuda:x", "tpu", "cuda0"):
        with pytest.raises(ClipevalError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3", "CUDA"])
def test_cuda_without_cuda_names_the_alternative(spec):
    with pytest.raises(ClipevalError, match=r"CUDA is not available .*use --device cpu"):
        resolve_device(spec)


def test_dtype_auto_and_names():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16 and resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.raises(ClipevalError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", cpu)
    if torch.cuda.is_available():
        gpu = torch.device("cuda:0")
        want = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        assert resolve_dtype("auto", gpu) == want


def test_placement_defaults_per_device():
    cpu = Placement.resolve("cpu", "auto")
    assert (cpu.dtype, cpu.batch_size(), cpu.workers(), cpu.vqa_batch_size()) == (torch.float32, 16, 0, 8)
    assert cpu.batch_size(5) == 5 and cpu.workers(3) == 3
    assert cpu.info() == {"device": "cpu", "dtype": "float32"}
    x = torch.ones(2, 3)
    assert cpu.inputs(x).dtype == torch.float32
    assert Placement.resolve("cpu", "bfloat16").inputs(x).dtype == torch.bfloat16
    assert Placement.resolve("cpu", "bfloat16").inputs(torch.ones(2, dtype=torch.long)).dtype == torch.long
    assert DEFAULT_BATCH["cuda"] == 256


@no_cuda
def test_cli_device_cuda_without_cuda_exits_2_before_any_work(probe_dir, tmp_path, capsys):
    from clipeval.cli import main

    db = tmp_path / "runs.duckdb"
    for args in (
        ["dissect", "--layers", "blocks.1", "--probe", str(probe_dir), "--device", "cuda"],
        ["evaluate", "abc", "--device", "cuda:1"],
        ["demo", "--size", "small", "--device", "cuda"],
        [
            "import-descriptions",
            str(tmp_path / "d.csv"),
            "--target",
            "efficientnet_lite0",
            "--probe",
            str(probe_dir),
            "--device",
            "cuda",
        ],
    ):
        assert main(["--db", str(db), *args]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "--device cpu" in err, err
    assert not db.exists()  # nothing opened, nothing written


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dtype", "int8"], "--dtype"),
        (["--batch-size", "0"], "--batch-size: 0 is outside 1..65536"),
        (["--workers", "-1"], "--workers: -1 is outside 0..4096"),
        (["--batch-size", "many"], "'many' is not a whole number"),
    ],
)
def test_cli_bad_dtype_batch_or_workers_is_refused(capsys, args, message):
    from clipeval.cli import main

    with pytest.raises(SystemExit) as e:
        main(["dissect", "--layers", "x", "--probe", "p", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------------------------- OOM halving
def fake_oom(limit: int):
    def check(n: int):
        if n > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} GiB (fake)")

    return check


def test_oom_halving_retries_and_keeps_the_smaller_size():
    logs, seen = [], []
    check = fake_oom(3)

    def fn(a, b):
        check(b - a)
        seen.append((a, b))
        return list(range(a, b))

    oom = OomHalving(16, "images", logs.append)
    out = oom.run(fn, 20)
    assert [x for part in out for x in part] == list(range(20))
    assert max(b - a for a, b in seen) == 2 and oom.size == 2 and oom.halvings == 3  # 16 -> 8 -> 4 -> 2
    assert logs[0] == "CUDA out of memory on a batch of 16 images: retrying in batches of 8"
    assert len(logs) == 3
    # the next batch starts at the size that fitted: no new failures, no new log lines
    oom.run(fn, 7)
    assert len(logs) == 3


def test_oom_on_one_image_is_an_error_and_other_errors_pass_through():
    def always(a, b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")

    with pytest.raises(ClipevalError, match="out of memory on a single one"):
        OomHalving(4, "images", lambda m: None).run(always, 4)

    def broken(a, b):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        OomHalving(4, "images", lambda m: None).run(broken, 4)


class Toy(nn.Module):
    def __init__(self, oom_above: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.oom_above = oom_above
        self.batches: list[int] = []

    def forward(self, x):
        if self.oom_above is not None and len(x) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        self.batches.append(len(x))
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def _images(tmp_path, n: int) -> list[ProbeImage]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(p)
        out.append(ProbeImage(str(p), "t", "CC0", ""))
    return out


def test_collect_halves_the_batch_on_oom_and_gets_the_same_activations(tmp_path, capsys):
    images = _images(tmp_path, 11)
    torch.manual_seed(0)
    ref_module = Toy()
    ref = collect(
        images, target=from_module(ref_module, input_size=8), layers=["conv", "fc"], batch_size=8, progress=False
    )
    flaky = Toy(oom_above=3)
    flaky.load_state_dict(ref_module.state_dict())
    # Layouts given, so the layout detection's forward of one dummy image is not counted among the batches.
    got = collect(
        images,
        target=from_module(flaky, input_size=8),
        layers=["conv", "fc"],
        batch_size=8,
        progress=False,
        layouts={"conv": "nchw", "fc": "flat"},
    )
    for layer in ("conv", "fc"):
        np.testing.assert_allclose(got.activations[layer], ref.activations[layer], rtol=1e-6, atol=1e-6)
    assert max(flaky.batches) <= 2 and sum(flaky.batches) == 11
    err = capsys.readouterr().err
    assert "CUDA out of memory on a batch of 8 images: retrying in batches of 4" in err
    assert "retrying in batches of 2" in err


# ------------------------------------------------------------------ batch workers (Ray's map_batches)
class FakeModel:
    """An image-text model with a preprocess and encode_images, no to_placement (must stay where it is)."""

    def __init__(self):
        self.preprocess = lambda img: torch.from_numpy(np.asarray(img.resize((4, 4)), dtype=np.float32)).permute(
            2, 0, 1
        )

    def encode_images(self, batch):
        return torch.nn.functional.normalize(batch.flatten(1)[:, :6], dim=-1)


def test_probe_batch_call_matches_collect(tmp_path):
    images = _images(tmp_path, 5)
    torch.manual_seed(0)
    target = from_module(Toy(), input_size=8)
    models = {"labelling": FakeModel()}
    thumbs = ThumbFile(tmp_path / "thumbs")
    ref = collect(
        images,
        target=target,
        layers=["conv", "fc"],
        image_models=models,
        thumb_size=16,
        batch_size=2,
        progress=False,
        sinks={THUMB: thumbs},
    )
    with ProbeBatch(target, ["conv", "fc"], "mean", models, thumb_size=16) as work:
        out = work({"path": np.array([im.path for im in images])})
    assert set(out) == {ACT + "conv", ACT + "fc", EMB + "labelling", "thumbnail", "decode_error"}
    assert list(out["decode_error"]) == [""] * len(images)  # every image decoded
    np.testing.assert_allclose(out[ACT + "conv"], ref.activations["conv"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[EMB + "labelling"], ref.embeddings["labelling"], rtol=1e-6, atol=1e-6)
    made = next(thumbs.read(range(len(images))))[1]
    assert list(out[THUMB]) == [made[i] for i in range(len(images))]
    assert not target.module.conv._forward_hooks  # close() removed the hooks
    emb = ImageEmbedder(FakeModel())({"path": [im.path for im in images]})["embedding"]
    np.testing.assert_allclose(emb, ref.embeddings["labelling"], rtol=1e-6, atol=1e-6)


def test_collect_with_decoding_workers_equals_in_process(tmp_path):
    images = _images(tmp_path, 7)
    target = from_module(Toy(), input_size=8)
    a = collect(images, target=target, layers=["conv"], batch_size=3, num_workers=0, progress=False)
    b = collect(images, target=target, layers=["conv"], batch_size=3, num_workers=2, progress=False)
    np.testing.assert_array_equal(a.activations["conv"], b.activations["conv"])


# ----------------------------------------------------------------- hashed and stored, small models
def test_dtype_is_hashed_and_stored_device_stored_not_hashed(built_run, probe_dir, tmp_path):
    """A bfloat16 run of the small models: its own run id; dtype in the stored settings, device and
    dtype with the models. Its labels are NOT all equal to the float32 run's: 931 of 1,136 neurons
    (82%) agree on this probe. Why (docs/performance.md, "bfloat16 on the CPU"): bfloat16 keeps about 3
    significant digits, the rounding compounds through EfficientNet-Lite0's blocks to activations off by
    up to 5-8% of a layer's range, and that reorders images near each neuron's top-20 cut (85 probe
    images), which soft_wpmi's label depends on; the labeller's embeddings in bfloat16 alone change 90."""
    from conftest import small_config

    from clipeval.dissect import pipeline
    from clipeval.store import Store

    db, run_fp32, cache = built_run
    cfg = small_config(probe_dir, dtype="bfloat16")
    store = Store(tmp_path / "bf16.duckdb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_bf16 = pipeline.dissect(cfg, store, cache_dir=tmp_path / "cache", progress=False, device="cpu")
        # the device is no setting: the same settings on 'auto' (the CPU here) are the same run
        assert pipeline.dissect(cfg, store, cache_dir=tmp_path / "cache", progress=False, device="auto") == run_bf16
    assert run_bf16 != run_fp32
    run = store.run(run_bf16)
    assert json.loads(run["config_json"])["dtype"] == "bfloat16"
    assert json.loads(run["models_json"])["compute"] == {"device": "cpu", "dtype": "bfloat16"}
    ref = Store(db, read_only=True)
    assert json.loads(ref.run(run_fp32)["config_json"])["dtype"] == "float32"
    a = ref.neurons(run_fp32).sort_values(["layer", "unit"]).reset_index(drop=True)
    b = store.neurons(run_bf16).sort_values(["layer", "unit"]).reset_index(drop=True)
    ref.close()
    store.close()
    same = (a["label"] == b["label"]).to_numpy()
    assert same.mean() > 0.75, f"only {same.sum()} of {len(same)} labels agree"  # 0.82 measured; broken bf16: ~0


def test_evaluation_dtype_is_hashed_and_stored(run_store):
    from clipeval.evaluators.run import OFFLINE_EVAL_MODEL, evaluate

    store, run_id, cache = run_store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (fp32,) = evaluate(
            store,
            run_id,
            "es",
            eval_model=OFFLINE_EVAL_MODEL,
            cache_dir=cache,
            progress=False,
            device="cpu",
            dtype="auto",
        )
        (bf16,) = evaluate(
            store,
            run_id,
            "es",
            eval_model=OFFLINE_EVAL_MODEL,
            cache_dir=cache,
            progress=False,
            device="cpu",
            dtype="bfloat16",
        )
    assert fp32.status == "cached"  # the fixture's float32 evaluation: 'auto' on the CPU is float32
    assert bf16.status == "complete" and bf16.eval_id != fp32.eval_id
    ev = store.evaluations(run_id).set_index("eval_id")
    assert json.loads(ev.loc[bf16.eval_id, "config_json"])["dtype"] == "bfloat16"
    assert json.loads(ev.loc[bf16.eval_id, "models_json"])["compute"] == {"device": "cpu", "dtype": "bfloat16"}
    a = store.eval_scores(fp32.eval_id).sort_values(["layer", "unit", "variant", "rank"])["raw"].to_numpy()
    b = store.eval_scores(bf16.eval_id).sort_values(["layer", "unit", "variant", "rank"])["raw"].to_numpy()
    # cosines of the ConSE stand-in: bfloat16 keeps about 3 significant digits, and a class entering or
    # leaving an image's top 10 moves its embedding more (largest change seen: 0.13)
    diff = np.abs(a - b)
    assert np.median(diff) < 0.03 and np.corrcoef(a, b)[0, 1] > 0.9, (np.median(diff), np.corrcoef(a, b)[0, 1])


def test_old_configs_without_dtype_read_as_float32():
    from clipeval.config import DissectConfig, EvalConfig, ProbeConfig

    cfg = DissectConfig(layers=("a",), probe=ProbeConfig(("/p",)))
    d = json.loads(cfg.to_json())
    del d["dtype"]
    assert DissectConfig.from_json(json.dumps(d)) == cfg
    with pytest.raises(ClipevalError, match="model dtype must be one of float32, bfloat16, float16"):
        dataclasses.replace(cfg, dtype="auto")
    with pytest.raises(ClipevalError, match="model dtype"):
        EvalConfig("es", dtype="half")


def test_batch_workers_built_from_settings_match_the_run(built_run, probe_dir):
    """What a Ray actor would do: build the per-batch work from the run's settings, map one batch of
    paths, and get the activations the run itself stored for those images."""
    from conftest import small_config

    from clipeval.compute.batches import ProbeBatch
    from clipeval.datasets.probe import load_probe
    from clipeval.store import Store

    db, run_id, _ = built_run
    cfg = small_config(probe_dir)
    paths = [im.path for im in load_probe([str(probe_dir)]).images]
    with ProbeBatch.from_config(cfg, "cpu", layers=["classifier"], labeller=False) as work:
        out = work({"path": paths[:6]})
    store = Store(db, read_only=True)
    top = store.neuron_images(run_id, layer="classifier")
    store.close()
    mine = top[top["image_id"] < 6]
    assert len(mine)
    got = out[ACT + "classifier"][mine["image_id"].to_numpy(), mine["unit"].to_numpy()]
    np.testing.assert_allclose(got, mine["activation"].to_numpy(), rtol=1e-4, atol=1e-4)
