"""Issue 24 point 5: an activation map is drawn on exactly the pixels the network saw, taken from the
target's own preprocessing (timm's data config: crop_pct, crop_mode; torchvision's resize + centre crop),
stored with the run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from clipeval.dissect.maps import ASSUMED_VIEW, crop_box, overlay, run_view
from clipeval.models.targets import from_module, preprocess_view, timm_preprocess


def _timm(name, **kw):
    import timm

    return timm_preprocess(timm.create_model(name, pretrained=False, **kw))[0]


# each target family's real transform, built as clipeval builds it for that family
FAMILIES = {
    # built-in EfficientNet-Lite, torchvision and in-memory targets: resize to size / 0.875, centre crop
    "torchvision / built-in (87.5%)": lambda: from_module(nn.Identity(), input_size=224).preprocess,
    "built-in efficientnet_lite2 (260)": lambda: from_module(nn.Identity(), input_size=260).preprocess,
    "timm ViT (crop_pct 0.9)": lambda: _timm("vit_tiny_patch16_224"),
    "timm ResNet-50 (0.95)": lambda: _timm("resnet50"),
    "timm register ViT (0.95, 256)": lambda: _timm("vit_little_patch16_reg4_gap_256"),
    "timm EVA02 (0.9)": lambda: _timm("eva02_tiny_patch14_224.mim_in22k"),
    "timm ConvNeXt 384 (crop_mode squash)": lambda: _timm("convnext_tiny.in12k_ft_in1k_384"),
    "timm ViT (crop_mode border, padded)": lambda: _timm(
        "vit_tiny_patch16_224", pretrained_cfg_overlay={"crop_mode": "border", "crop_pct": 0.9}
    ),
}
SIZES = [(256, 192), (160, 240), (96, 64)]  # landscape, portrait, smaller than the input (upscaled)


def _seen_coordinates(preprocess, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel is each pixel's x and green its y, through the real transform: for
    every input pixel of the network, the image coordinates (pixel centres) it was taken from."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.arange(w)[None, :]
    rgb[..., 1] = np.arange(h)[:, None]
    out = preprocess(Image.fromarray(rgb))
    norm = next(t for t in preprocess.transforms if isinstance(t, T.Normalize))
    mean, std = torch.as_tensor(norm.mean)[:, None, None], torch.as_tensor(norm.std)[:, None, None]
    values = ((out * std + mean) * 255).double().numpy()
    return values[0] + 0.5, values[1] + 0.5


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_crop_box_is_where_the_real_transform_takes_its_pixels(family):
    """Every network input pixel inside the image (the padding of crop_mode 'border' aside) comes from
    where crop_box puts it: within the uint8 rounding of the coordinates (0.5 px), and 0.2 px on average
    (the rounding of exact halves leans one way when upscaling; one resized pixel off moves it 0.77 px on
    the 256x192 image)."""
    preprocess = FAMILIES[family]()
    view = preprocess_view(preprocess)
    assert view is not None
    for w, h in SIZES:
        xs, ys = _seen_coordinates(preprocess, w, h)
        x0, y0, x1, y1 = crop_box(view, w, h)
        oh, ow = xs.shape
        want_x = x0 + (np.arange(ow) + 0.5) * (x1 - x0) / ow
        want_y = y0 + (np.arange(oh) + 0.5) * (y1 - y0) / oh
        in_x, in_y = (want_x > 2) & (want_x < w - 2), (want_y > 2) & (want_y < h - 2)  # inside, off the edge clamp
        dx = xs[oh // 2, in_x] - want_x[in_x]
        dy = ys[in_y, ow // 2] - want_y[in_y]
        assert np.abs(dx).max() <= 0.51 and abs(dx.mean()) < 0.2, (family, (w, h), dx.max(), dx.mean())
        assert np.abs(dy).max() <= 0.51 and abs(dy.mean()) < 0.2, (family, (w, h), dy.max(), dy.mean())


def test_the_old_assumption_is_off_for_timm_targets():
    """What the fixed 87.5% centre square would have drawn on a 256x192 image, against the real crop."""
    for family, off in (
        ("timm ViT (crop_pct 0.9)", 2.5),
        ("timm ResNet-50 (0.95)", 7.0),
        ("timm ConvNeXt 384 (crop_mode squash)", 12.0),
    ):
        real = np.array(crop_box(preprocess_view(FAMILIES[family]()), 256, 192))
        assumed = np.array(crop_box(ASSUMED_VIEW, 256, 192))
        assert np.abs(real - assumed).max() > off, family


def _jpeg(w, h, colour=(0, 0, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize(
    "family",
    [
        "timm ViT (crop_pct 0.9)",
        "timm ConvNeXt 384 (crop_mode squash)",
        "timm ViT (crop_mode border, padded)",
        "torchvision / built-in (87.5%)",
    ],
)
def test_the_overlay_colours_exactly_the_crop_box(family):
    view = preprocess_view(FAMILIES[family]())
    w, h = 128, 96
    out = np.asarray(
        Image.open(io.BytesIO(overlay(_jpeg(w, h), np.ones((7, 7), np.float32), 1.0, (0.0, 1.0), view))).convert("RGB")
    ).astype(int)
    x0, y0, x1, y1 = crop_box(view, w, h)
    # the map's top colour (viridis yellow, blue 37) where it lies; JPEG ringing lifts blue near the edge
    red = (out[..., 0] > 200) & (out[..., 2] < 160)
    blue = (out[..., 2] > 200) & (out[..., 0] < 60)
    xs, ys = np.arange(w)[None, :] + 0.5, np.arange(h)[:, None] + 0.5
    inside = (xs > x0 + 1.5) & (xs < x1 - 1.5) & (ys > y0 + 1.5) & (ys < y1 - 1.5)
    outside = (xs < x0 - 1.5) | (xs > x1 + 1.5) | (ys < y0 - 1.5) | (ys > y1 + 1.5)
    assert red[inside].all() and blue[outside].all(), family
    assert inside.any()


def test_a_preprocessing_of_unknown_geometry_has_no_view_and_the_map_covers_the_whole_image():
    pre = T.Compose([T.Lambda(lambda im: im.crop((0, 0, 10, 10))), T.ToTensor()])
    assert preprocess_view(pre) is None
    assert from_module(nn.Identity(), preprocess=pre).info["view"] is None
    view, where = run_view({"models_json": json.dumps({"target": {"name": "x", "view": None}})})
    assert view is None and "whole image" in where
    out = np.asarray(
        Image.open(io.BytesIO(overlay(_jpeg(40, 30), np.ones((2, 2), np.float32), 1.0, (0.0, 1.0), None))).convert(
            "RGB"
        )
    ).astype(int)
    assert (out[1:-1, 1:-1, 0] > 200).all()


def test_the_view_is_stored_with_the_run_and_old_runs_say_what_is_assumed(built_run):
    from clipeval.models.targets import load_target
    from clipeval.store import Store

    db, run_id, _ = built_run
    store = Store(db, read_only=True)
    try:
        run = store.run(run_id)
    finally:
        store.close()
    target = json.loads(run["models_json"])["target"]
    want = preprocess_view(load_target("efficientnet_lite0").preprocess)
    assert target["view"] == want and want["ops"][0] == {"op": "resize_short", "size": 256, "max_size": None}
    view, where = run_view(run)
    assert view == want and "Resize(short side 256) + CenterCrop(224x224)" in where and "assumed" not in where
    old = {**run, "models_json": json.dumps({"target": {k: v for k, v in target.items() if k != "view"}})}
    view, where = run_view(old)
    assert view == ASSUMED_VIEW and "assumed" in where and "87.5%" in where
