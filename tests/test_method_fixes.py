"""Issue 12: contrast negatives per unit, activations copied inside the hook, dead units, layer layouts."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipeval.datasets.probe import ProbeImage
from clipeval.dissect.activations import collect, neuron_summaries
from clipeval.dissect.pooling import pool
from clipeval.errors import ClipevalError
from clipeval.models.targets import from_module, layer_layouts


def _images(tmp_path, n=6, size=16):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        out.append(ProbeImage(str(p), "t", "CC0", ""))
    return out


# ---------------------------------------------------------------- 1. contrast negatives per unit


def test_one_dead_or_tied_unit_does_not_take_the_random_negatives_of_the_layer():
    rng = np.random.default_rng(0)
    n = 200
    A = rng.normal(size=(n, 4)).astype(np.float32)
    A[:, 1] = 0.0  # dead
    A[:, 2] = np.where(rng.random(n) < 0.92, 0.0, 6.0)  # ReLU6 unit: 92% of the probe at its minimum
    images, _, stats = neuron_summaries("l", A, k=5, n_contrast=10, seed=0)
    rand = images[images["kind"] == "random"]
    for u in (0, 3):  # ordinary units keep all their random negatives, whatever the other units do
        mine = rand[rand["unit"] == u]
        assert len(mine) == 10
        assert (mine["activation"].to_numpy() < np.sort(A[:, u])[::-1][4]).all()
    tied = rand[rand["unit"] == 2]  # ties at the minimum are drawn by rank position
    assert len(tied) == 10 and (tied["activation"] == 0).all()
    assert not set(tied["image_id"]) & set(images[(images["unit"] == 2) & (images["kind"] == "top")]["image_id"])
    assert dict(zip(stats["unit"], stats["n_negatives"])) == {0: 20, 1: 0, 2: 20, 3: 20}


def test_a_unit_with_few_inactive_images_keeps_what_it_has():
    A = np.tile(np.arange(30, dtype=np.float32)[:, None], (1, 2))
    A[:25, 1] = 100.0  # only 5 images below its top, and all 5 are among its 8 'low' images
    images, _, stats = neuron_summaries("l", A, k=3, n_contrast=8, seed=1)
    rand = images[images["kind"] == "random"]
    assert (rand[rand["unit"] == 0].shape[0], rand[rand["unit"] == 1].shape[0]) == (8, 0)
    assert list(stats["n_negatives"]) == [16, 8]  # distinct images: none drawn as 'low' and 'random' both


# ---------------------------------------------------------------- 2. copy inside the hook


class TinyVgg(nn.Module):
    """torchvision VGG's head: Linear -> ReLU(inplace=True) -> Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_a_linear_layer_is_recorded_before_the_inplace_relu_after_it(tmp_path):
    torch.manual_seed(0)
    module = TinyVgg().eval()
    target = from_module(module, input_size=16)
    images = _images(tmp_path)
    got = collect(images, target=target, layers=["classifier.0"], batch_size=3, progress=False)
    with torch.no_grad():
        x = torch.stack([target.preprocess(Image.open(i.path).convert("RGB")) for i in images])
        want = module.classifier[0](torch.flatten(module.features(x), 1)).numpy()
    assert (want < 0).any()  # the test means something only if the ReLU would change values
    np.testing.assert_allclose(got.activations["classifier.0"], want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 3. dead units


def test_dead_units_get_no_images_and_are_flagged():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 3)).astype(np.float32)
    A[:, 0] = 0.3
    images, hist, stats = neuron_summaries("l", A, k=5, n_contrast=4, seed=0)
    assert list(stats["dead"]) == [True, False, False]
    assert 0 not in set(images["unit"])  # no 'top-5' that would just be images 0-4
    assert hist[hist["unit"] == 0]["count"].sum() == 40


def test_dead_units_are_stored_without_label_and_left_out_of_shares(built_run, probe_dir, tmp_path):
    from conftest import small_config

    from clipeval.analysis.runview import RunView
    from clipeval.datasets.concepts import load_concepts
    from clipeval.datasets.probe import load_probe
    from clipeval.dissect import pipeline
    from clipeval.evaluators.run import OFFLINE_EVAL_MODEL, evaluate
    from clipeval.models.image_text import load_image_text
    from clipeval.store import Store

    class HalfDead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            with torch.no_grad():
                self.conv.weight[:2] = 0  # units 0 and 1: constant (their bias) on every image
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.conv(x)).flatten(1)

    _, _, cache = built_run
    cfg = small_config(probe_dir, concepts="common-3k")
    cfg = cfg.__class__(**{**cfg.__dict__, "layers": ("conv",)})
    target = from_module(HalfDead().eval(), name="half-dead", input_size=224)
    resolved = pipeline.Resolved(
        cfg,
        load_probe(cfg.probe.paths),
        load_concepts("common-3k"),
        target,
        {"conv": (6, 224, 224)},
        load_image_text(cfg.image_text),
        "halfdead",
    )
    store = Store(tmp_path / "s.duckdb")
    try:
        with pytest.warns(UserWarning, match="2 of 6 units have a constant activation"):
            pipeline.dissect(cfg, store, cache_dir=cache, progress=False, resolved=resolved)
        neurons = store.neurons("halfdead")
        assert list(neurons["dead"]) == [True, True, False, False, False, False]
        assert neurons["label"].isna().tolist() == [True, True, False, False, False, False]
        assert store.all_runner_ups("halfdead")["unit"].min() == 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(
                store, "halfdead", "cp,es,contrast", eval_model=OFFLINE_EVAL_MODEL, cache_dir=cache, progress=False
            )
        import pandas as pd

        store.add_human_verdicts(
            "halfdead",
            pd.DataFrame({"layer": "conv", "unit": range(6), "rater": "ann", "verdict": [True, False] * 3}),
            source="test",
        )
        view = RunView(store, "halfdead")
        agree = view.rater_agreement({"cp": 0.01, "es": 0.25, "contrast": 0.75, "vqa": 0.5})
        assert set(agree["n"]) == {4}  # the rater's verdicts on the two dead units are left out too
        summary = view.layer_summary({"cp": 0.01, "es": 0.25, "contrast": 0.75, "vqa": 0.5})
        assert set(summary["n"]) == {4} and set(summary["n_dead"]) == {2}
        assert "2 dead unit(s)" in view.dead_note() and "conv 2" in view.dead_note()
        assert len(view.unit_grid({"cp": 0.01, "es": 0.25, "contrast": 0.75, "vqa": 0.5})) == 4
    finally:
        store.close()


# ---------------------------------------------------------------- 4. layer layouts


def _timm(name, **kw):
    import timm

    return timm.create_model(name, pretrained=False, **kw).eval()


def test_swin_stages_are_channels_last_and_pooled_per_channel(tmp_path):
    module = _timm(
        "swin_tiny_patch4_window7_224",
        embed_dim=8,
        depths=(1, 1),
        num_heads=(1, 1),
        img_size=32,
        window_size=2,
        num_classes=5,
    )
    target = from_module(module, input_size=32)
    layouts = layer_layouts(target, ["layers.0", "layers.1", "patch_embed.proj"])
    assert layouts == {"layers.0": "nhwc", "layers.1": "nhwc", "patch_embed.proj": "nchw"}
    images = _images(tmp_path, n=3, size=32)
    got = collect(images, target=target, layers=["layers.1"], progress=False)
    assert got.activations["layers.1"].shape == (3, 16)  # 16 channels, not 4 image rows
    with torch.no_grad():
        x = torch.stack([target.preprocess(Image.open(i.path).convert("RGB")) for i in images])
        want = module.layers[1](module.layers[0](module.patch_embed(x))).mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(got.activations["layers.1"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("class_token", [True, False])
def test_vit_with_and_without_class_token(tmp_path, class_token):
    kw = {} if class_token else {"class_token": False, "global_pool": "avg"}
    module = _timm("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5, **kw)
    target = from_module(module, input_size=32)
    layout = layer_layouts(target, ["blocks.1"])["blocks.1"]
    assert layout == ("tokens:cls:1" if class_token else "tokens:avg:0")
    images = _images(tmp_path, n=2, size=32)
    got = collect(images, target=target, layers=["blocks.1"], progress=False)
    with torch.no_grad():
        x = torch.stack([target.preprocess(Image.open(i.path).convert("RGB")) for i in images])
        tokens = module.blocks(module._pos_embed(module.patch_embed(x)))
        want = tokens[:, 0] if class_token else tokens.mean(dim=1)
    np.testing.assert_allclose(got.activations["blocks.1"], want.numpy(), rtol=1e-4, atol=1e-5)


def test_vit_with_register_tokens_and_no_class_token_skips_them():
    out = torch.randn(2, 3 + 4, 5)
    np.testing.assert_allclose(pool(out, "mean", "l", "tokens:avg:3"), out[:, 3:].mean(1))


def test_convnext_and_resnet_layouts():
    import torchvision

    # ConvNeXt blocks run their MLP channels-last (Linear layers) unless conv_mlp=True (1x1 convolutions)
    for conv_mlp, mlp in ((False, "nhwc"), (True, "nchw")):
        convnext = from_module(_timm("convnext_atto", num_classes=5, conv_mlp=conv_mlp), input_size=64)
        assert layer_layouts(convnext, ["stages.1", "stages.1.blocks.0.mlp.fc1", "head.fc"]) == {
            "stages.1": "nchw",
            "stages.1.blocks.0.mlp.fc1": mlp,
            "head.fc": "flat",
        }
    resnet = from_module(torchvision.models.resnet18(weights=None, num_classes=5), input_size=64)
    assert layer_layouts(resnet, ["layer1", "layer4", "avgpool", "fc"]) == {
        "layer1": "nchw",
        "layer4": "nchw",
        "avgpool": "nchw",
        "fc": "flat",
    }


def test_tokens_of_a_model_that_does_not_say_what_its_tokens_are_are_refused():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 4, 4, stride=4)
            self.blk = nn.Identity()

        def forward(self, x):
            return self.blk(self.proj(x).flatten(2).transpose(1, 2))

    with pytest.raises(ClipevalError, match="class token"):
        layer_layouts(from_module(Tokens(), input_size=16), ["blk"])


# ---------------------------------------------------------------- 7. the stand-in's thresholds, calibrated


def test_demo_calibration_sets_the_stand_ins_defaults_with_intervals(run_store):
    from clipeval.analysis.runview import RunView
    from clipeval.demo.build import REFERENCE_RATER, calibrate_stand_in, reference_verdicts
    from clipeval.evaluators.judges import PAPER_THRESHOLDS

    store, run_id, _ = run_store
    store.add_human_verdicts(run_id, reference_verdicts(store, run_id), source="auto: test")
    before = RunView(store, run_id)
    assert before.default_thresholds()["es"] == PAPER_THRESHOLDS["es"]
    results = calibrate_stand_in(store, [run_id])
    assert set(results) == {"cp", "es", "contrast"}
    for r in results.values():
        assert r["interval"][0] <= r["value"] <= r["interval"][1] and r["n_neurons"] == 1000
        assert r["heldout_kappa_interval"][0] <= r["heldout_kappa"] <= r["heldout_kappa_interval"][1]
    view = RunView(store, run_id)
    for e in ("cp", "es", "contrast"):
        assert view.defaults[e].source == "calibrated" and view.default_thresholds()[e] == results[e]["value"]
        assert REFERENCE_RATER in view.defaults[e].note and "held-out kappa" in view.defaults[e].note
    assert view.defaults["vqa"].source == "paper"
    # the evaluator (Lite2 + all-mpnet-base-v2) shares no text encoder with the labeller (Lite1 + MiniLM)
    assert "text encoder" not in view.shared_note("es") and "label space" in view.shared_note("es")
