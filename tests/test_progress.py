"""Progress on every long step (issue 11, point 7): text embeddings of a large concept set get a bar
with a rate and the time left, and chunking does not change the embeddings."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from clipeval.dissect import pipeline


class HashTextModel:
    """A deterministic text encoder (each text's sha256 as a unit vector), counting its calls."""

    def __init__(self):
        self.calls = []

    def encode_texts(self, texts):
        self.calls.append(len(texts))
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8).astype(np.float32) for t in texts]
        x = torch.from_numpy(np.stack(rows))
        return x / x.norm(dim=1, keepdim=True)

    def info(self):
        return {"text_fingerprint": "hash"}


def test_large_concept_sets_show_a_bar_with_rate_and_time_left(tmp_path, capsys):
    texts = [f"concept {i}" for i in range(pipeline.TEXT_CHUNK * 2 + 5)]
    model = HashTextModel()
    got = pipeline.encode_texts_cached(model, texts, pipeline.ArrayCache(tmp_path), progress=True)
    err = capsys.readouterr().err
    assert "text embeddings" in err and "concept/s" in err and f"{len(texts)}/{len(texts)}" in err
    assert "<" in err  # tqdm's elapsed<remaining
    assert model.calls == [pipeline.TEXT_CHUNK, pipeline.TEXT_CHUNK, 5]
    assert np.allclose(got, HashTextModel().encode_texts(texts).numpy())


def test_small_sets_go_in_one_call_without_a_bar(tmp_path, capsys):
    model = HashTextModel()
    pipeline.encode_texts_cached(model, ["a", "b"], pipeline.ArrayCache(tmp_path), progress=True)
    assert model.calls == [2] and "concept/s" not in capsys.readouterr().err
