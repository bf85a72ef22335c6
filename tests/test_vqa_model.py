"""Blip2Vqa on a tiny random BLIP-2 built offline (tests/tiny_blip2.py): exactness, batching, reuse, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_blip2 import make_tiny_blip2, save_tiny_blip2

import clipeval.models.vqa as vqa_module
from clipeval.errors import ClipevalError, WeightsUnavailable
from clipeval.models.vqa import DEFAULT_TEMPLATE, Blip2Vqa, format_prompt

LABELS = ["cat", "dog", "red car", "tree", "a very small blue house"]
LONG_Q = format_prompt(DEFAULT_TEMPLATE, "a photo of a very large green tree with a small red house " * 3)
OTHER_TEMPLATE = "Is the image of a {label}? Answer:"  # shares only BOS with DEFAULT_TEMPLATE


@pytest.fixture(scope="module")
def vqa() -> Blip2Vqa:
    return make_tiny_blip2()


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    # sizes differ from the model's 32x32 on purpose: the processor resizes
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


def _questions(labels) -> list[str]:
    return [format_prompt(DEFAULT_TEMPLATE, lab) for lab in labels]


def test_format_prompt():
    assert format_prompt(DEFAULT_TEMPLATE, "cat") == 'Question: Is this image related to "cat"? Answer:'
    assert format_prompt("Is {label} in {it}? {label}!", "a{b}") == "Is a{b} in {it}? a{b}!"
    with pytest.raises(ClipevalError, match=r"\{label\}"):
        format_prompt("Question: is this a cat?", "cat")


def test_yes_no_token_ids_are_single_and_deduplicated(vqa):
    tok = vqa.tokenizer
    # the tiny tokenizer splits on whitespace, so " yes" is the same token as "yes": counted once
    assert vqa.yes_ids == [tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("Yes")]
    assert vqa.no_ids == [tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("No")]


def test_p_yes_formula(vqa):
    logits = torch.randn(3, len(vqa.tokenizer)) * 5
    probs = logits.softmax(-1)
    yes, no = probs[:, vqa.yes_ids].sum(-1), probs[:, vqa.no_ids].sum(-1)
    torch.testing.assert_close(vqa._p_yes(logits), yes / (yes + no))


def test_shapes_range_and_input_checks(vqa):
    images = _images(3)
    out = vqa.yes_probability(images, [[], _questions(LABELS[:2]), _questions(LABELS)])
    assert [a.shape for a in out] == [(0,), (2,), (5,)]
    allp = np.concatenate(out)
    assert np.all(np.isfinite(allp)) and np.all((allp >= 0) & (allp <= 1))
    assert np.ptp(allp) > 1e-3  # the random model does tell inputs apart, so equality tests below mean something
    assert vqa.yes_probability([], []) == []
    with pytest.raises(ClipevalError):
        vqa.yes_probability(images, [["q"]])
    with pytest.raises(ClipevalError):
        vqa.yes_probability(images[:1], [["q"]], batch_size=0)


def test_batch_size_does_not_change_results(vqa):
    images = _images(5)
    questions = [_questions(LABELS[: 1 + i]) for i in range(5)]  # 1..5 questions per image
    ref = vqa.yes_probability(images, questions, batch_size=1)
    for bs in (2, 3, 8):
        for a, b in zip(ref, vqa.yes_probability(images, questions, batch_size=bs)):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padding_does_not_change_results(vqa, monkeypatch, padding_side):
    # whatever the tokenizer's padding side, the answer is read at each row's last real token
    monkeypatch.setattr(vqa.tokenizer, "padding_side", padding_side)
    image = _images(1)
    short = _questions(["cat"])[0]
    alone = vqa.yes_probability(image, [[short]])[0]
    with_long = vqa.yes_probability(image, [[short, LONG_Q]])[0]
    assert len(vqa.tokenizer(LONG_Q).input_ids) > 3 * len(vqa.tokenizer(short).input_ids)
    np.testing.assert_allclose(with_long[0], alone[0], atol=1e-5)


def test_vision_runs_once_per_image(vqa):
    seen = {"vision": 0, "lm_rows": 0}

    def count_vision(module, args, kwargs, output):
        seen["vision"] += (kwargs.get("pixel_values") if "pixel_values" in kwargs else args[0]).shape[0]

    def count_lm(module, args, kwargs, output):
        seen["lm_rows"] += kwargs["inputs_embeds"].shape[0]

    def count_decoder(module, args, kwargs, output):
        seen["decoder_rows"] += kwargs["inputs_embeds"].shape[0]

    seen["decoder_rows"] = 0
    hooks = [
        vqa.model.vision_model.register_forward_hook(count_vision, with_kwargs=True),
        vqa.model.language_model.register_forward_hook(count_lm, with_kwargs=True),
        vqa.model.language_model.get_decoder().register_forward_hook(count_decoder, with_kwargs=True),
    ]
    try:
        n_images, n_questions = 3, 4
        vqa.yes_probability(_images(n_images), [_questions(LABELS[:n_questions])] * n_images, batch_size=8)
    finally:
        for h in hooks:
            h.remove()
    # the language model's head runs once per pair; the decoder also runs [image | shared prefix] once per image
    assert seen == {
        "vision": n_images,
        "lm_rows": n_images * n_questions,
        "decoder_rows": n_images + n_images * n_questions,
    }


def test_matches_the_models_own_forward(vqa):
    """Our inputs_embeds path == Blip2ForConditionalGeneration.forward(pixel_values, input_ids with image tokens)."""
    image, question = _images(1, seed=3)[0], _questions(["dog"])[0]
    inputs = vqa.processor(images=[image], text=[question], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == vqa.model.config.image_token_id).sum())
    assert n_image_tokens == vqa.model.config.num_query_tokens  # the processor really inserted placeholders
    with torch.no_grad():
        theirs = vqa.model(**inputs).logits[:, -1].float()
    ours = vqa._next_token_logits(vqa._image_embeddings([image]), vqa._token_ids([question]))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    p = vqa.yes_probability([image], [[question]])[0][0]
    assert p == pytest.approx(float(vqa._p_yes(theirs)[0]), abs=1e-6)
    # with a second question the prefix cache path runs; the first answer stays the model's own
    p_shared = vqa.yes_probability([image], [[question, _questions(["cat"])[0]]])[0][0]
    assert p_shared == pytest.approx(float(vqa._p_yes(theirs)[0]), abs=1e-5)


def test_shared_prefix_length_and_fallback(vqa):
    n_query = vqa.model.config.num_query_tokens
    assert n_query == 4
    assert vqa._shared_prefix_len([[1, 5, 6, 7], [1, 5, 6, 8]], n_images=1) == 3
    assert vqa._shared_prefix_len([[1, 5, 6], [1, 5]], n_images=1) == 1  # each prompt keeps a token of its own
    assert vqa._shared_prefix_len([[5, 6], [7, 8]], n_images=1) == 0  # nothing in common but the image
    assert vqa._shared_prefix_len([[1, 5, 6]], n_images=1) is None  # one question per image: nothing to share
    assert vqa._shared_prefix_len([[1, 5], [1, 6]], n_images=2) is None
    assert vqa._shared_prefix_len([[], [1, 6]], n_images=1) is None  # an empty prompt: plain path
    long = [[1, 2] + [9] * 40, [1, 3] + [9] * 40]  # shares 5 of 46 positions: below MIN_SAVED_FRACTION
    assert vqa._shared_prefix_len(long, n_images=1) is None


def _no_bos(vqa):
    # a tokenizer without BOS: questions from different templates then share no token at all
    return lambda questions: vqa.tokenizer(list(questions), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("case", ["one template", "mixed templates", "template per image", "mixed, no BOS"])
def test_shared_prefix_path_equals_plain_path(vqa, monkeypatch, case, batch_size):
    images = _images(5, seed=7)
    if case == "one template":
        questions = [_questions(LABELS[: 1 + i]) for i in range(5)]
    elif case == "template per image":
        questions = [
            [format_prompt(DEFAULT_TEMPLATE if i % 2 else OTHER_TEMPLATE, lab) for lab in LABELS[i:]] for i in range(5)
        ]
    else:
        questions = [
            [format_prompt((DEFAULT_TEMPLATE, OTHER_TEMPLATE)[j % 2], lab) for j, lab in enumerate(LABELS)]
            for _ in range(5)
        ]
    if case == "mixed, no BOS":
        monkeypatch.setattr(vqa, "_token_ids", _no_bos(vqa))
    plain = vqa.yes_probability(images, questions, batch_size=batch_size, share_prefix=False)
    # take the prefix path in every image batch, even one that would not pay, and check that it does
    monkeypatch.setattr(vqa_module, "MIN_SAVED_FRACTION", 0.0)
    calls, original = [], vqa._prefix_cache

    def prefix_cache(embeds, prefix):
        calls.append(len(prefix))
        return original(embeds, prefix)

    monkeypatch.setattr(vqa, "_prefix_cache", prefix_cache)
    shared = vqa.yes_probability(images, questions, batch_size=batch_size)
    assert len(calls) == -(-len(images) // batch_size)
    if case == "one template":
        assert min(calls) >= 8  # BOS Question : Is this image related to "
    elif case == "mixed, no BOS":
        assert max(calls) == 0  # only the image embeddings are shared
    for a, b in zip(plain, shared):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_load_from_saved_folder(vqa, tmp_path):
    folder = save_tiny_blip2(tmp_path / "tiny")
    loaded = Blip2Vqa.load(str(folder))
    info = loaded.info()
    assert info["name"] == str(folder)
    assert info["class"] == "Blip2ForConditionalGeneration"
    assert info["parameters"] == vqa.info()["parameters"] > 0
    assert (info["dtype"], info["device"]) == ("float32", "cpu")
    images, questions = _images(2), [_questions(LABELS[:3])] * 2
    for a, b in zip(vqa.yes_probability(images, questions), loaded.yes_probability(images, questions)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_load_missing_weights_is_helpful(monkeypatch, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    name = "clipeval-tests/blip2-never-published"  # a hub id no cache can hold, so this never depends on the machine
    assert not isinstance(try_to_load_from_cache(name, "config.json"), str)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as e:
        Blip2Vqa.load(name)
    msg = str(e.value)
    for part in (name, f"huggingface-cli download {name}", f"hf download {name}", "HF_HOME", "save_pretrained"):
        assert part in msg

    with pytest.raises(WeightsUnavailable, match="does not hold a complete BLIP-2"):
        Blip2Vqa.load(str(tmp_path))  # an existing but empty folder
