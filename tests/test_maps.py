"""Where it fires: activation maps of each unit's top images, kept during the probe pass."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipeval.datasets.probe import ProbeImage
from clipeval.dissect import maps
from clipeval.dissect.activations import collect, neuron_summaries
from clipeval.models.targets import from_module, layer_layouts

N_UNITS = 4
PEAKS = [(1, 2), (5, 6), (0, 7), (3, 3)]  # planted (row, col) of each unit's activation on an 8x8 grid


class Planted(nn.Module):
    """Layers that are zero except at one planted cell per unit, whose value grows with the image's
    brightness, in every layout a probe pass meets:
      conv    (B, C, 8, 8)            channels first
      nhwc    (B, 8, 8, C)            channels last (timm Swin stages)
      tokens  (B, prefix + 64, C)     a ViT's tokens: class (and register) tokens, then an 8x8 patch grid
      big     (B, 2, 48, 48)          larger than MAP_SIDE: shrunk by max-pooling
    The prefix tokens carry a larger value than any patch: a map that kept them would peak there."""

    def __init__(self, n_prefix: int = 1, has_class_token: bool = True):
        super().__init__()
        self.num_prefix_tokens, self.has_class_token = n_prefix, has_class_token
        self.conv, self.nhwc, self.tokens, self.big = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x):
        b = x.shape[0]
        brightness = x.mean(dim=(1, 2, 3))
        conv = torch.zeros(b, N_UNITS, 8, 8)
        tok = torch.zeros(b, self.num_prefix_tokens + 64, N_UNITS)
        tok[:, : self.num_prefix_tokens] = 50.0 + brightness[:, None, None]  # the class token ranks the images too
        for u, (r, c) in enumerate(PEAKS):
            conv[:, u, r, c] = brightness + 1 + u
            tok[:, self.num_prefix_tokens + r * 8 + c, u] = brightness + 1
        big = torch.zeros(b, 2, 48, 48)
        big[:, :, 40, 10] = brightness[:, None] + 1
        return self.conv(conv), self.nhwc(conv.permute(0, 2, 3, 1).contiguous()), self.tokens(tok), self.big(big)


def _images(tmp_path, n=12, darker=False):
    """Grey images, brighter with the id (or darker: then the first images are the most active)."""
    out = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        v = 10 * (n - i if darker else i)
        Image.new("RGB", (32, 32), (v, v, v)).save(p)
        out.append(ProbeImage(str(p), "test", "cc0", ""))
    return out


def _argmax(m: np.ndarray) -> tuple[int, int]:
    return tuple(int(i) for i in np.unravel_index(m.argmax(), m.shape))


@pytest.mark.parametrize(
    "n_prefix, has_cls, token_layout",
    [
        (1, True, "tokens:cls:1"),  # ViT: one class token
        (5, True, "tokens:cls:5"),  # class + 4 register tokens
        (0, False, "tokens:avg:0"),
    ],
)  # no class token
def test_map_argmax_matches_the_planted_activation_in_every_layout(tmp_path, n_prefix, has_cls, token_layout):
    target = from_module(Planted(n_prefix, has_cls), input_size=32)
    layers = ["conv", "nhwc", "tokens", "big"]
    assert layer_layouts(target, layers) == {"conv": "nchw", "nhwc": "nhwc", "tokens": token_layout, "big": "nchw"}
    got = collect(
        _images(tmp_path), target=target, layers=layers, pooling="max", maps_keep=3, batch_size=5, progress=False
    )
    for layer in ("conv", "nhwc", "tokens"):
        kept = got.maps[layer]
        for u, (r, c) in enumerate(PEAKS):
            # the kept images are the unit's most active ones (the brightest), and only those
            assert sorted(kept.ids[kept.units == u].tolist()) == [9, 10, 11], layer
            for image_id in (9, 10, 11):
                m = kept.get(u, image_id)
                assert m.shape == (8, 8) and _argmax(m) == (r, c), (layer, u)
    b = got.maps["big"].get(0, 11)
    assert b.shape == (24, 24) and _argmax(b) == (20, 5)  # max-pooled 2x2: the peak kept its cell and value
    assert b.max() == pytest.approx(got.activations["big"][11, 0])


@pytest.mark.parametrize(
    "arch, size, layout, grid",
    [
        ("vit_tiny_patch16_224", 224, "tokens:cls:1", 14),  # a class token, then 14x14 patches
        ("vit_little_patch16_reg4_gap_256", 256, "tokens:avg:4", 16),  # 4 register tokens, no class token
    ],
)
def test_a_real_vit_gives_its_patch_tokens_as_the_map(probe_dir, arch, size, layout, grid):
    """The ViT path on real timm architectures (random weights, built from their configs): the map kept
    for a unit on an image is that unit's patch tokens of the block's output, in raster order, without
    the class and register tokens; checked against the block's output read with a hook of the test's own."""
    import timm

    torch.manual_seed(0)
    module = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    target = from_module(module, name=arch, input_size=size)
    layer = "blocks.3"
    assert layer_layouts(target, [layer]) == {layer: layout}
    paths = sorted(p for p in probe_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:6]
    images = [ProbeImage(str(p), "test", "", "") for p in paths]
    got = collect(images, target=target, layers=[layer], maps_keep=2, batch_size=3, progress=False)
    out = {}
    hook = dict(target.module.named_modules())[layer].register_forward_hook(lambda m, i, o: out.update(o=o))
    with torch.no_grad():
        target.module(torch.stack([target.preprocess(Image.open(p).convert("RGB")) for p in paths]))
    hook.remove()
    n_prefix = out["o"].shape[1] - grid * grid
    assert n_prefix == (1 if layout == "tokens:cls:1" else 4)
    kept = got.maps[layer]
    for u in (0, 5, 17):
        ids = kept.ids[kept.units == u]
        assert len(ids) == 2
        for image_id in ids.tolist():
            want = out["o"][image_id, n_prefix:, u].reshape(grid, grid).numpy()
            np.testing.assert_allclose(kept.get(u, image_id), want, rtol=1e-4, atol=1e-4)


def test_a_flat_layer_has_no_map(tmp_path):
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 5)

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    got = collect(
        _images(tmp_path, 4), target=from_module(Flat(), input_size=16), layers=["fc"], maps_keep=2, progress=False
    )
    assert got.maps == {} and got.activations["fc"].shape == (4, 5)


class FlakyEmbedder:
    """An image-text model that runs out of CUDA memory (fake) on more than 2 images: the part of the batch
    is retried after the target's forward pass has already been run on it."""

    def __init__(self):
        self.preprocess = lambda img: torch.from_numpy(np.asarray(img.resize((4, 4)), np.float32)).permute(2, 0, 1)

    def encode_images(self, batch):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return torch.nn.functional.normalize(batch.flatten(1)[:, :6], dim=-1)


def test_a_part_retried_after_out_of_memory_keeps_the_same_maps(tmp_path, capsys):
    images = _images(tmp_path, darker=True)  # the first images are the top ones, so a retry would meet them again
    target = from_module(Planted(), input_size=32)
    ref = collect(images, target=target, layers=["conv"], maps_keep=3, batch_size=8, progress=False)
    got = collect(
        images,
        target=target,
        layers=["conv"],
        maps_keep=3,
        batch_size=8,
        progress=False,
        image_models={"labelling": FlakyEmbedder()},
    )
    assert "retrying in batches of 2" in capsys.readouterr().err
    for u in range(N_UNITS):
        assert sorted(got.maps["conv"].ids[got.maps["conv"].units == u]) == [0, 1, 2]
    assert sorted(zip(got.maps["conv"].units, got.maps["conv"].ids)) == sorted(
        zip(ref.maps["conv"].units, ref.maps["conv"].ids)
    )


def test_an_image_that_does_not_decode_leaves_the_maps_ids_on_the_activation_rows(tmp_path):
    """Issue 11 leaves undecodable images out and renumbers the rest; the maps follow that numbering."""
    images = _images(tmp_path)
    (tmp_path / "10.png").write_bytes((tmp_path / "10.png").read_bytes()[:60])  # one of the most active ones
    target = from_module(Planted(), input_size=32)
    got = collect(images, target=target, layers=["conv"], pooling="max", maps_keep=3, batch_size=5, progress=False)
    assert [i for i, _ in got.failed] == [10] and got.activations["conv"].shape[0] == 11
    kept = got.maps["conv"]
    for u in range(N_UNITS):
        assert sorted(kept.ids[kept.units == u]) == [8, 9, 10]  # images 8, 9 and 11 under their new ids
        for i in (8, 9, 10):
            assert kept.get(u, i).max() == pytest.approx(got.activations["conv"][i, u])


def test_the_running_top_and_the_merge_keep_exactly_the_top_k_with_ties_as_neuron_summaries():
    """Batches in any order, split over two 'workers' (as on Ray), ties included: the merged maps are
    those of the top-k images neuron_summaries picks (activation descending, lower image id first)."""
    rng = np.random.default_rng(0)
    n, c, k = 200, 7, 5
    A = rng.normal(size=(n, c)).astype(np.float32)
    A[:, 3] = np.round(A[:, 3])  # many ties
    A[:, 4] = 1.0  # all tied
    maps_all = rng.normal(size=(n, c, 3, 2)).astype(np.float32)
    merged = maps.KeptMaps(k)
    workers = [maps.RunningTop(k), maps.RunningTop(k)]
    order = rng.permutation(n)
    for i, start in enumerate(range(0, n, 16)):
        rows = order[start : start + 16]
        top = workers[i % 2]
        entered = top.update(torch.from_numpy(A[rows]), torch.from_numpy(rows))
        merged.add(rows, maps.pack(entered, torch.from_numpy(A[rows]), torch.from_numpy(maps_all[rows])))
    images, _, _ = neuron_summaries("l", A, k, 3, 0)
    top = images[images["kind"] == "top"]
    expected = np.argsort(-A, axis=0, kind="stable")[:k]
    for u in range(c):
        want = sorted(top.loc[top["unit"] == u, "image_id"]) if u != 4 else sorted(expected[:, u])
        assert sorted(merged.ids[merged.units == u].tolist()) == want
        for i in want:
            np.testing.assert_array_equal(merged.get(u, i), maps_all[i, u])
    index, stored = merged.arrays()
    again = maps.KeptMaps.from_arrays(k, index.astype(np.float32), stored)
    assert sorted(zip(again.units, again.ids)) == sorted(zip(merged.units, merged.ids))


def test_maps_rows_follow_the_top_images_and_survive_encoding(tmp_path):
    target = from_module(Planted(), input_size=32)
    got = collect(_images(tmp_path), target=target, layers=["conv"], pooling="max", maps_keep=3, progress=False)
    images, _, _ = neuron_summaries("conv", got.activations["conv"], 3, 2, 0)
    top = images[images["kind"] == "top"]
    rows = maps.map_rows("conv", top, got.maps["conv"])
    assert len(rows) == len(top) and (rows["h"] == 8).all()
    assert rows["map"].map(len).max() == 64  # one byte per cell
    r = rows.iloc[0]
    m = maps.decode(r["h"], r["w"], r["lo"], r["hi"], r["map"])
    assert _argmax(m) == PEAKS[int(r["unit"])]
    assert m.max() == pytest.approx(r["hi"]) and m.min() == pytest.approx(r["lo"])


def test_overlay_keeps_the_size_and_colours_the_peak():
    buf = io.BytesIO()
    Image.new("RGB", (128, 96), (0, 0, 255)).save(buf, "JPEG")
    m = np.zeros((8, 8), np.float32)
    m[0, 0] = 1.0
    out = Image.open(io.BytesIO(maps.overlay(buf.getvalue(), m, opacity=1.0))).convert("RGB")
    assert out.size == (128, 96)
    side = round(0.875 * 96)
    x0, y0 = (128 - side) // 2, (96 - side) // 2
    peak = np.asarray(out)[y0 + 2, x0 + 2].astype(int)
    far = np.asarray(out)[95 - y0 - 2, 127 - x0 - 2].astype(int)
    assert peak[0] > 200 and peak[2] < 80  # the scale's top colour (viridis yellow) over the planted cell
    assert far[2] > 200 and far[0] < 60  # the blue image untouched where the unit is silent


def test_pipeline_stores_maps_whose_mean_is_the_pooled_activation(built_run):
    """The demo network's maps come from the same pass: with mean pooling, the mean of a stored map
    (14x14, not shrunk) is the top image's stored activation, up to the uint8 rounding."""
    from clipeval.store import Store

    db, run_id, _ = built_run
    store = Store(db, read_only=True)
    try:
        layer = "blocks.4"
        top = store.neuron_images(run_id, kinds=("top",), layer=layer, unit=3)
        stored = store.activation_maps(run_id, layer, 3)
        assert sorted(stored["image_id"]) == sorted(top["image_id"])
        big = store.activation_maps(run_id, "blocks.1", 0)  # 56x56, shrunk to 24x24
        assert len(big) and (big["h"] == 24).all() and (big["w"] == 24).all()
        assert store.activation_maps(run_id, "classifier", 3).empty  # a vector layer has no map
    finally:
        store.close()
    for r in stored.itertuples():
        m = maps.decode(r.h, r.w, r.lo, r.hi, r.map)
        act = float(top.loc[top["image_id"] == r.image_id, "activation"].iloc[0])
        assert m.shape == (14, 14) and abs(m.mean() - act) <= (r.hi - r.lo) / 255
