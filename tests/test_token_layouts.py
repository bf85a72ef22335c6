"""Issue 24 point 1: a token layer is read by what its own tokens are (class token, prefix tokens, patch
tokens), decided per layer, on real timm architectures with random weights built from their configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipeval.datasets.probe import ProbeImage
from clipeval.dissect.activations import collect
from clipeval.errors import ClipevalError
from clipeval.models.targets import from_module, layer_layouts

SIZE, GRID = 64, 4  # 16-pixel patches: a 4x4 grid of 16 patch tokens


def CLS(out):  # the class token
    return out[:, 0]


def PATCHES(n_prefix):  # the mean over the patch tokens after n_prefix prefix tokens
    return lambda out: out[:, n_prefix:].mean(dim=1)


# arch, model kwargs, {layer: (layout, its pooled value from the layer's output, patch tokens start at)}
CASES = {
    "cait": (
        "cait_xxs24_224",
        dict(depth=2, depth_token_only=1),
        {
            "patch_embed": ("tokens:avg:0", PATCHES(0), 0),
            "blocks.0": ("tokens:avg:0", PATCHES(0), 0),  # the class token joins only in blocks_token_only
            "blocks.1": ("tokens:avg:0", PATCHES(0), 0),
            "blocks_token_only.0": ("tokens:cls:1", CLS, None),  # the class token alone
            "norm": ("tokens:cls:1", CLS, 1),
        },
    ),
    "xcit": (
        "xcit_nano_12_p16_224",
        dict(depth=2, cls_attn_layers=1),
        {
            "blocks.1": ("tokens:avg:0", PATCHES(0), 0),
            "cls_attn_blocks.0": ("tokens:cls:1", CLS, 1),
            "norm": ("tokens:cls:1", CLS, 1),
        },
    ),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        dict(depth=2),
        {  # class + distillation token
            "patch_embed": ("tokens:avg:0", PATCHES(0), 0),
            "blocks.1": ("tokens:cls:2", CLS, 2),
        },
    ),
    "vit": (
        "vit_tiny_patch16_224",
        dict(depth=2),
        {
            "patch_embed": ("tokens:avg:0", PATCHES(0), 0),
            "patch_embed.norm": ("tokens:avg:0", PATCHES(0), 0),
            "blocks.1": ("tokens:cls:1", CLS, 1),
        },
    ),
    "vit_no_class_token": (
        "vit_tiny_patch16_224",
        dict(depth=2, class_token=False, global_pool="avg"),
        {"patch_embed": ("tokens:avg:0", PATCHES(0), 0), "blocks.1": ("tokens:avg:0", PATCHES(0), 0)},
    ),
    "vit_global_pool_avg": (
        "vit_tiny_patch16_224",
        dict(depth=2, global_pool="avg"),
        {  # its head never reads
            "patch_embed": ("tokens:avg:0", PATCHES(0), 0),  # the class token
            "blocks.1": ("tokens:avg:1", PATCHES(1), 1),
        },
    ),
    "vit_registers": (
        "vit_little_patch16_reg4_gap_256",
        dict(depth=2),
        {  # 4 registers, no class token
            "patch_embed": ("tokens:avg:0", PATCHES(0), 0),  # all 16 patches: no register to skip yet
            "blocks.1": ("tokens:avg:4", PATCHES(4), 4),
        },
    ),
    "vit_registers_and_class_token": (
        "vit_small_patch14_reg4_dinov2",
        dict(depth=2, patch_size=16),
        {"patch_embed": ("tokens:avg:0", PATCHES(0), 0), "blocks.1": ("tokens:cls:5", CLS, 5)},
    ),
}


def _model(arch, kw):
    import timm

    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, img_size=SIZE, num_classes=5, **kw).eval()


def _images(tmp_path, n=4):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(p)
        out.append(ProbeImage(str(p), "t", "CC0", ""))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_each_token_layer_is_pooled_and_mapped_by_what_its_tokens_are(tmp_path, case):
    """The layout of every layer, the pooled value (against the layer's output read with a hook of the
    test's own) and the map (the patch tokens as their 4x4 grid, or none for the class token alone)."""
    arch, kw, want = CASES[case]
    module = _model(arch, kw)
    target = from_module(module, name=arch, input_size=SIZE)
    layers = list(want)
    assert layer_layouts(target, layers) == {layer: w[0] for layer, w in want.items()}

    images = _images(tmp_path)
    got = collect(images, target=target, layers=layers, maps_keep=2, batch_size=4, progress=False)
    outs, hooks = {}, []
    for layer in layers:
        hooks.append(
            target.modules()[layer].register_forward_hook(
                lambda _m, _i, o, layer=layer: outs.__setitem__(layer, o.detach().clone())
            )
        )
    with torch.no_grad():
        module(torch.stack([target.preprocess(Image.open(i.path).convert("RGB")) for i in images]))
    for h in hooks:
        h.remove()
    for layer, (_, read, start) in want.items():
        np.testing.assert_allclose(
            got.activations[layer], read(outs[layer]).numpy(), rtol=1e-4, atol=1e-5, err_msg=layer
        )
        if start is None:
            assert layer not in got.maps, layer
            continue
        kept = got.maps[layer]
        for u in (0, 7):
            for image_id in kept.ids[kept.units == u].tolist():
                np.testing.assert_allclose(
                    kept.get(u, image_id),
                    outs[layer][image_id, start:, u].reshape(GRID, GRID).numpy(),
                    rtol=1e-4,
                    atol=1e-4,
                    err_msg=layer,
                )


def test_max_pooling_takes_the_strongest_patch_of_a_patch_token_layer(tmp_path):
    module = _model("cait_xxs24_224", dict(depth=1, depth_token_only=1))
    target = from_module(module, input_size=SIZE)
    images = _images(tmp_path, 2)
    got = collect(images, target=target, layers=["blocks.0"], pooling="max", progress=False)
    with torch.no_grad():
        x = torch.stack([target.preprocess(Image.open(i.path).convert("RGB")) for i in images])
        tokens = module.blocks(module.pos_drop(module.patch_embed(x) + module.pos_embed))
    np.testing.assert_allclose(got.activations["blocks.0"], tokens.amax(dim=1).numpy(), rtol=1e-4, atol=1e-5)


def test_a_token_layer_whose_tokens_cannot_be_told_apart_is_refused():
    """A ViT with a class token whose head pools by attention (global_pool='map'): the attention pool's
    query is one latent token, which is neither the class token nor a patch."""
    module = _model("vit_tiny_patch16_224", dict(depth=1, global_pool="map"))
    target = from_module(module, name="vit-map", input_size=SIZE)
    assert layer_layouts(target, ["blocks.0"]) == {"blocks.0": "tokens:avg:1"}
    with pytest.raises(
        ClipevalError,
        match=r"attn_pool.q.*outputs 1 tokens.*1 prefix token.*16 patch tokens "
        r"\(a 4x4 patch grid\).*cannot be known",
    ):
        layer_layouts(target, ["attn_pool.q"])


def test_a_refused_layer_stops_the_run_before_anything_is_written(tmp_path, monkeypatch, probe_dir, capsys):
    """`clipeval dissect` on such a layer of a timm target exits 2 naming it, before any run is recorded."""
    import timm

    from clipeval.cli import main

    real = timm.create_model
    monkeypatch.setattr(
        timm,
        "create_model",
        lambda name, **kw: real(
            name,
            **({**kw, "depth": 1, "num_classes": 5, "global_pool": "map"} if name == "vit_tiny_patch16_224" else kw),
        ),
    )
    weights = tmp_path / "w.pt"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), weights)
    db = tmp_path / "runs.duckdb"
    rc = main(
        [
            "--db",
            str(db),
            "dissect",
            "--target",
            "timm:vit_tiny_patch16_224",
            "--weights",
            str(weights),
            "--layers",
            "blocks.0,attn_pool.q",
            "--probe",
            str(probe_dir),
            "--concepts",
            "imagenet",
        ]
    )
    assert rc == 2
    assert "layer 'attn_pool.q' of vit_tiny_patch16_224 outputs 1 tokens" in capsys.readouterr().err
    assert not db.exists()  # refused before the store's first access: not even an empty store is made


def test_the_run_stores_its_layouts_and_the_live_probe_refuses_a_run_pooled_otherwise(run_store):
    """A run records how each layer was pooled; a live reading of a run whose layers were pooled
    otherwise (by another version) would not compare with the run's activations, so it is refused."""
    import json

    from clipeval.dissect.live import LiveProbe, TargetUnavailable

    store, run_id, _ = run_store
    models = json.loads(store.run(run_id)["models_json"])
    assert models["target"]["layouts"] == {"blocks.1": "nchw", "blocks.4": "nchw", "classifier": "flat"}
    assert LiveProbe(store, run_id).layouts == models["target"]["layouts"]
    models["target"]["layouts"]["blocks.4"] = "nhwc"
    store.execute("UPDATE runs SET models_json = ? WHERE run_id = ?", [json.dumps(models), run_id])
    with pytest.raises(TargetUnavailable, match="the run pooled blocks.4 as nhwc, this version pools it as nchw"):
        LiveProbe(store, run_id)
