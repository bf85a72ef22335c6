"""Run settings: every setting change gives a new cache key; configs survive a JSON round trip."""

import dataclasses

import pytest

from clipeval.config import (
    ConceptConfig,
    DissectConfig,
    ImageTextConfig,
    ProbeConfig,
    SimilarityConfig,
    TargetConfig,
    stable_hash,
)
from clipeval.errors import ClipevalError

BASE = DissectConfig(layers=("blocks.1",), probe=ProbeConfig(("/p",)))


def variants():
    yield dataclasses.replace(BASE, target=TargetConfig("efficientnet_lite1"))
    yield dataclasses.replace(BASE, target=TargetConfig(weights="/w.pth"))
    yield dataclasses.replace(BASE, layers=("blocks.2",))
    yield dataclasses.replace(BASE, layers=("blocks.1", "blocks.2"))
    yield dataclasses.replace(BASE, pooling="max")
    yield dataclasses.replace(BASE, probe=ProbeConfig(("/q",)))
    yield dataclasses.replace(BASE, probe=ProbeConfig(("/p", "/q")))
    yield dataclasses.replace(BASE, probe=ProbeConfig(("/p",), on_bad_image="fail"))
    yield dataclasses.replace(BASE, concepts=ConceptConfig("common-20k"))
    yield dataclasses.replace(BASE, image_text=ImageTextConfig("open_clip", "ViT-B-16", "openai"))
    yield dataclasses.replace(BASE, image_text=ImageTextConfig(top_t=5))
    yield dataclasses.replace(BASE, image_text=ImageTextConfig(image_size=128))
    yield dataclasses.replace(BASE, similarity=SimilarityConfig("wpmi"))
    yield dataclasses.replace(BASE, similarity=SimilarityConfig("soft_wpmi", (("top_k", 50.0),)))
    yield dataclasses.replace(BASE, k=10)
    yield dataclasses.replace(BASE, n_runner_ups=3)
    yield dataclasses.replace(BASE, n_contrast=5)
    yield dataclasses.replace(BASE, seed=1)
    yield dataclasses.replace(BASE, dtype="bfloat16")
    yield dataclasses.replace(BASE, dtype="float16")


def test_hash_is_stable_and_every_setting_changes_it():
    assert stable_hash(BASE) == stable_hash(DissectConfig(layers=("blocks.1",), probe=ProbeConfig(("/p",))))
    keys = {stable_hash(BASE)} | {stable_hash(v) for v in variants()}
    assert len(keys) == 1 + len(list(variants()))


def test_content_fingerprints_change_the_key():
    assert stable_hash(BASE, "probe-a") != stable_hash(BASE, "probe-b")


def test_every_field_is_covered_by_the_variants():
    changed = set()
    for v in variants():
        changed |= {f.name for f in dataclasses.fields(DissectConfig) if getattr(v, f.name) != getattr(BASE, f.name)}
    assert changed == {f.name for f in dataclasses.fields(DissectConfig)}


def test_json_round_trip():
    cfg = dataclasses.replace(
        BASE,
        similarity=SimilarityConfig("soft_wpmi", (("a", 5.0),)),
        image_text=ImageTextConfig("open_clip", "ViT-B-32", "x.pt", image_size=128),
    )
    assert DissectConfig.from_json(cfg.to_json()) == cfg
    assert stable_hash(DissectConfig.from_json(cfg.to_json())) == stable_hash(cfg)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layers=()), "no layers"),
        (dict(layers=("a", "a")), "twice"),
        (dict(layers=("a",), pooling="median"), "pooling"),
        (dict(layers=("a",), k=0), "k must"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ClipevalError, match=match):
        DissectConfig(**kwargs)


def test_bad_similarity_and_backend():
    with pytest.raises(ClipevalError, match="unknown similarity"):
        SimilarityConfig("cosine")
    with pytest.raises(ClipevalError, match="no parameter"):
        SimilarityConfig("wpmi", (("p_start", 0.9),))
    with pytest.raises(ClipevalError, match="backend"):
        ImageTextConfig(backend="clip")
    with pytest.raises(ClipevalError, match="on_bad_image"):
        ProbeConfig(("/p",), on_bad_image="ignore")
