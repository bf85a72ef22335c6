"""Pooling modes, layer listing and checks, one-pass collection, per-neuron summaries."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipeval.compute.batches import THUMB
from clipeval.datasets.probe import ProbeImage
from clipeval.dissect.activations import ThumbFile, collect, neuron_summaries
from clipeval.dissect.pooling import pool
from clipeval.errors import ClipevalError
from clipeval.models.targets import check_layers, from_module, layer_layouts, layer_shapes


class Toy(nn.Module):
    """conv (4-D), tokens (3-D, CLS first), fc (2-D), and a tuple output."""

    has_class_token, num_prefix_tokens = True, 1  # as timm ViTs say it: token 0 is the class token

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tokens = nn.Identity()
        self.fc = nn.Linear(4, 2)
        self.pair = PairOut()

    def forward(self, x):
        c = self.conv(x)
        t = self.tokens(torch.cat([c.mean(dim=(2, 3))[:, None], c.flatten(2).transpose(1, 2)], 1))  # (B, 1 + HW, 4)
        self.pair(t)
        return self.fc(t[:, 0])


class PairOut(nn.Module):
    def forward(self, x):
        return x, x


def test_pool_modes():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    torch.testing.assert_close(pool(x, "mean", "l"), x.mean(dim=(2, 3)))
    torch.testing.assert_close(pool(x, "max", "l"), x.amax(dim=(2, 3)))
    tokens = torch.randn(2, 5, 3)
    torch.testing.assert_close(pool(tokens, "mean", "l"), tokens[:, 0])  # CLS token, whatever the mode
    flat = torch.randn(2, 3)
    got = pool(flat, "max", "l")
    torch.testing.assert_close(got, flat)
    assert got.data_ptr() != flat.data_ptr()  # a copy: a later in-place op cannot change what was recorded
    with pytest.raises(ClipevalError, match="cannot be pooled"):
        pool(torch.randn(1, 2, 3, 4, 5), "mean", "l")
    with pytest.raises(ClipevalError, match="not a tensor"):
        pool((flat, flat), "mean", "l")


def test_layer_listing_and_checks():
    target = from_module(Toy(), input_size=8)
    shapes = layer_shapes(target)
    assert shapes["conv"] == (4, 8, 8) and shapes["tokens"] == (65, 4) and shapes["fc"] == (2,)
    assert shapes["pair"] == "tuple"
    assert check_layers(target, ["conv", "fc"], shapes) == {"conv": (4, 8, 8), "fc": (2,)}
    with pytest.raises(ClipevalError, match="unknown layer 'layer9'.*conv"):
        check_layers(target, ["layer9"], shapes)
    with pytest.raises(ClipevalError, match="outputs tuple"):
        check_layers(target, ["pair"], shapes)


def test_collect_one_pass_all_layers(tmp_path):
    images = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (12, 12), colour).save(p)
        images.append(ProbeImage(str(p), "t", "CC0", ""))
    module = Toy()
    target = from_module(module, input_size=8)
    layouts = layer_layouts(target, ["conv", "tokens", "fc"])  # detected on a dummy forward of its own
    assert layouts == {"conv": "nchw", "tokens": "tokens:cls:1", "fc": "flat"}
    calls = []
    module.register_forward_hook(lambda *a: calls.append(1))
    thumbs = ThumbFile(tmp_path / "thumbs")
    got = collect(
        images,
        target=target,
        layers=["conv", "tokens", "fc"],
        pooling="max",
        thumb_size=8,
        batch_size=2,
        num_workers=0,
        progress=False,
        layouts=layouts,
        sinks={THUMB: thumbs},
    )
    assert len(calls) == 2  # 3 images in batches of 2: one forward per batch for all three layers
    assert got.activations["conv"].shape == (3, 4) and got.activations["tokens"].shape == (3, 4)
    with torch.no_grad():
        x = torch.stack([target.preprocess(Image.open(i.path).convert("RGB")) for i in images])
        want = module.conv(x).amax(dim=(2, 3)).numpy()
    np.testing.assert_allclose(got.activations["conv"], want, rtol=1e-5, atol=1e-5)
    made = dict(next(thumbs.read(range(3)))[1])
    assert sorted(made) == [0, 1, 2] and all(t[:2] == b"\xff\xd8" for t in made.values())  # JPEG thumbnails


def test_neuron_summaries():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 3)).astype(np.float32)
    images, hist, stats = neuron_summaries("l", A, k=5, n_contrast=4, seed=0)
    assert not stats["dead"].any() and list(stats["n_negatives"]) == [8, 8, 8]
    for u in range(3):
        mine = images[images["unit"] == u]
        top = mine[mine["kind"] == "top"].sort_values("rank")
        assert list(top["image_id"]) == list(np.argsort(-A[:, u])[:5])
        np.testing.assert_allclose(top["activation"], np.sort(A[:, u])[::-1][:5])
        low = mine[mine["kind"] == "low"]
        assert set(low["image_id"]) == set(np.argsort(A[:, u])[:4])
        rand = mine[mine["kind"] == "random"]
        assert len(rand) == 4 and (rand["activation"] < np.quantile(A[:, u], 0.9)).all()
        assert not set(rand["image_id"]) & set(top["image_id"])
        levels = mine[mine["kind"] == "level"]["activation"].to_numpy()
        assert (np.diff(levels) <= 0).all()  # most to least active
        assert hist[hist["unit"] == u]["count"].sum() == 50
    with pytest.raises(ClipevalError, match="k=60 is more than the 50"):
        neuron_summaries("l", A, k=60, n_contrast=4, seed=0)
