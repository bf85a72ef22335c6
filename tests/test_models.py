"""Target networks and image-text backends: real shipped weights, local checkpoints, offline errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipeval.errors import ClipevalError, WeightsUnavailable
from clipeval.models import targets
from clipeval.models.image_text import ConseModel, OpenClipModel


@pytest.fixture(scope="module")
def cat():
    from skimage import data

    return Image.fromarray(data.chelsea())


def test_shipped_efficientnet_lite0_is_a_real_imagenet_classifier(cat):
    t = targets.load_target("efficientnet_lite0")
    with torch.no_grad():
        probs = t.module(t.preprocess(cat)[None]).softmax(-1)[0]
    from clipeval.datasets.imagenet import imagenet_classnames

    assert imagenet_classnames()[int(probs.argmax())] in ("Egyptian Mau", "tabby cat", "tiger cat")
    assert "efficientnet-lite0" in t.weights


def test_torchvision_and_timm_targets_from_local_weight_files(tmp_path):
    import timm
    import torchvision

    tv = torchvision.models.get_model("resnet18", weights=None)
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "r18.pth")
    t = targets.load_target("torchvision:resnet18", str(tmp_path / "r18.pth"))
    torch.testing.assert_close(t.module.fc.weight, tv.fc.weight)
    assert "layer4" in targets.layer_shapes(t)

    tm = timm.create_model("resnet10t", pretrained=False)
    torch.save(tm.state_dict(), tmp_path / "r10.pth")
    t2 = targets.load_target("timm:resnet10t", str(tmp_path / "r10.pth"))
    torch.testing.assert_close(t2.module.fc.weight, tm.fc.weight)


def test_missing_weights_and_unknown_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty torch hub cache
    with pytest.raises(WeightsUnavailable, match="resnet18.*Download"):
        targets.load_target("torchvision:resnet18")
    with pytest.raises(WeightsUnavailable, match="timm weights for resnet10t"):
        targets.load_target("timm:resnet10t")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        targets.load_target("efficientnet_lite0", str(tmp_path / "nope.pth"))
    with pytest.raises(ClipevalError, match="unknown target 'resnet9000'"):
        targets.load_target("resnet9000")


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_checkpoint(tmp_path_factory):
    """A small open_clip ViT-CLIP built from a config (random weights) and saved as a local checkpoint."""
    import open_clip

    folder = tmp_path_factory.mktemp("tinyclip")
    (folder / "clipeval-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    model = open_clip.create_model("clipeval-tiny")
    torch.save(model.state_dict(), folder / "tiny.pt")
    return folder / "tiny.pt", model


def test_open_clip_from_local_checkpoint(tiny_clip_checkpoint, cat):
    path, original = tiny_clip_checkpoint
    m = OpenClipModel.load("clipeval-tiny", str(path), image_size=128)
    assert m.is_clip and m.info()["weights"] == str(path)
    img = m.encode_images(torch.stack([m.preprocess(cat), m.preprocess(cat.rotate(90))]))
    txt = m.encode_texts(["a cat", "a car", "stripes"])
    assert img.shape == (2, 16) and txt.shape == (3, 16)
    np.testing.assert_allclose(img.norm(dim=-1).numpy(), 1, rtol=1e-5)
    np.testing.assert_allclose(txt.norm(dim=-1).numpy(), 1, rtol=1e-5)
    with torch.no_grad():  # same weights as the model that was saved, full 77-token context
        want = torch.nn.functional.normalize(original.encode_text(m.tokenizer(["a cat", "a car", "stripes"])), dim=-1)
    torch.testing.assert_close(txt, want, rtol=1e-5, atol=1e-6)  # the trimmed context changes nothing


def test_open_clip_random_weights_are_not_called_clip(tiny_clip_checkpoint):
    m = OpenClipModel.load("clipeval-tiny", "")
    assert not m.is_clip and "RANDOM" in m.info()["description"]


def test_open_clip_offline_errors():
    with pytest.raises(WeightsUnavailable, match="laion2b_s34b_b79k.*create_model_and_transforms"):
        OpenClipModel.load("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(ClipevalError, match="neither a checkpoint file nor a pretrained tag"):
        OpenClipModel.load("ViT-B-32", "my-weights")
    with pytest.raises(ClipevalError, match="no architecture"):
        OpenClipModel.load("ViT-Z-99", "")


def test_conse_offline_backend_knows_objects(cat):
    m = ConseModel("efficientnet_lite1")
    assert not m.is_clip and "not CLIP" in m.info()["description"]
    img = m.encode_images(m.preprocess(cat)[None])
    txt = m.encode_texts(["cat", "car", "coffee"])
    sims = (img @ txt.T)[0]
    assert sims.argmax().item() == 0
    np.testing.assert_allclose(img.norm(dim=-1).numpy(), 1, rtol=1e-5)
