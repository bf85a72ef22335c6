"""VQA: Blip2Vqa.yes_probability (image features and [image | shared prompt prefix] once per image, the
rest of each question batched) against one generate() call per (image, question) reading the answer
text, on the same BLIP-2; also yes_probability(share_prefix=False), its plain full-sequence path.

    python bench/bench_vqa.py [--quick] [--images N]

The model is a scaled-down BLIP-2 with random weights, built offline (no hub), sized so the timings
mean something on a CPU (far bigger than the unit tests' tiny model, far smaller than blip2-opt-2.7b):
  vision  ViT, 6 layers, width 256, MLP 1024, 4 heads, 224 x 224 px, patch 14 (256 patches + CLS)
  Q-Former 2 layers, width 256, MLP 1024, 4 heads, cross-attention every 2nd layer, 32 query tokens
  LM      OPT, 6 layers, width 512, FFN 2048, 8 heads, vocabulary = the word-level tokenizer below
The tokenizer is word-level (tokenizers WordLevel + whitespace/punctuation split) over the prompt words
and every word of the 10k concept set (about 10k entries); OPT's real vocabulary is 50,272.
Images: probe images at 128 x 128 (as clipeval's VQA evaluator shows them), each asked 3 questions
(the template with its real, a shuffled and a constant label), as an evaluation run does.
Baseline: for each (image, question): processor(image, prompt) -> model.generate(max_new_tokens=3,
greedy) -> decode -> does the answer start with "yes"? (3 new tokens is the least that reads a short
answer; a longer limit only makes the baseline slower.) P(yes) is then checked against the first
generated step's scores of the same model for a few pairs (not timed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s, met, parser, print_machine, probe_images, ratio, set_threads, table, write_json  # noqa: E402

TARGET = 5.0
SPECIALS = ["<pad>", "</s>", "<unk>", "<image>"]
PROMPT_WORDS = 'Question : Is this image related to " "? ? Answer yes no Yes No'.split()


def make_tokenizer(concepts: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = dict.fromkeys(SPECIALS + PROMPT_WORDS)
    for c in concepts:
        for piece, _ in split.pre_tokenize_str(f'"{c}"?'):
            words.setdefault(piece)
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = split
    tk.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="</s>", eos_token="</s>", unk_token="<unk>"
    )


def make_blip2(concepts: list[str], seed: int = 0):
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    tok = make_tokenizer(concepts)
    vision = Blip2VisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=4,
        image_size=224,
        patch_size=14,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=256,
        vocab_size=64,
        max_position_embeddings=64,
    )
    text = OPTConfig(
        vocab_size=len(tok),
        hidden_size=512,
        word_embed_proj_dim=512,
        ffn_dim=2048,
        num_hidden_layers=6,
        num_attention_heads=8,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=32,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    processor = Blip2Processor(BlipImageProcessor(size={"height": 224, "width": 224}), tok, num_query_tokens=32)
    return model, processor


def generate_answers(model, processor, images, questions, max_new_tokens: int = 3):
    """The straightforward way: one generate() per (image, question); answer text -> yes?"""
    import torch

    out = []
    with torch.no_grad():
        for img, qs in zip(images, questions):
            for q in qs:
                enc = processor(images=img, text=q, return_tensors="pt")
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
                answer = processor.tokenizer.decode(ids[0, -max_new_tokens:], skip_special_tokens=True)
                out.append(answer.strip().lower().startswith("yes"))
    return out


def first_step_p_yes(vqa, images, questions):
    """P(yes) from the first generated step's scores of generate() (for the equality check)."""
    import torch

    probs = []
    with torch.no_grad():
        for img, qs in zip(images, questions):
            for q in qs:
                enc = vqa.processor(images=img, text=q, return_tensors="pt")
                g = vqa.model.generate(
                    **enc,
                    max_new_tokens=1,
                    do_sample=False,
                    output_scores=True,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
                logits = (g.logits if getattr(g, "logits", None) is not None else g.scores)[0].float()
                probs.append(float(vqa._p_yes(logits)[0]))
    return np.array(probs)


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--images", type=int)
    ap.add_argument("--batch-size", type=int, default=8, help="yes_probability's batch_size (default 8)")
    args = ap.parse_args()
    set_threads(args.threads)
    from PIL import Image

    from clipeval.datasets.concepts import load_concepts
    from clipeval.datasets.probe import load_rgb
    from clipeval.models.vqa import DEFAULT_TEMPLATE, Blip2Vqa, format_prompt

    info = print_machine()
    n_images = args.images or (8 if args.quick else 24)
    concepts = list(load_concepts("common-10k").concepts)
    model, processor = make_blip2(concepts)
    vqa = Blip2Vqa(model, processor, name="bench-blip2")
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: scaled-down BLIP-2, random weights, {n_params / 1e6:.1f} M parameters, vocabulary {len(processor.tokenizer)}"
    )
    rng = np.random.default_rng(0)
    paths, source = probe_images(n_images, seed=1)
    images = [load_rgb(p).resize((128, 128), Image.BICUBIC) for p in paths]
    real = rng.choice(concepts, n_images)
    shuffled = rng.permutation(real)
    constant = real[0]
    questions = [[format_prompt(DEFAULT_TEMPLATE, l) for l in (r, s, constant)] for r, s in zip(real, shuffled)]
    n_pairs = sum(len(q) for q in questions)
    print(f"{n_images} images ({source}) at 128 px, 3 questions each -> {n_pairs} (image, question) pairs")
    vqa.yes_probability(images[:2], [q[:2] for q in questions[:2]])  # warm-up, not timed (both paths)
    vqa.yes_probability(images[:2], [q[:2] for q in questions[:2]], share_prefix=False)
    generate_answers(model, processor, images[:1], [questions[0][:1]])

    start = time.perf_counter()
    probs = vqa.yes_probability(images, questions, batch_size=args.batch_size)
    t_ours = time.perf_counter() - start
    print(f"  ours: yes_probability           {fmt_s(t_ours)}", flush=True)
    start = time.perf_counter()
    plain = vqa.yes_probability(images, questions, batch_size=args.batch_size, share_prefix=False)
    t_plain = time.perf_counter() - start
    plain_diff = float(np.abs(np.concatenate(plain) - np.concatenate(probs)).max())
    print(
        f"  ours, share_prefix=False        {fmt_s(t_plain)} (max |diff| vs shared prefix {plain_diff:.1g})", flush=True
    )
    start = time.perf_counter()
    answers = generate_answers(model, processor, images, questions)
    t_base = time.perf_counter() - start
    print(f"  baseline: generate() per pair    {fmt_s(t_base)}", flush=True)

    # where ours spends its time: the vision side (ViT + Q-Former + projection, once per image) alone
    start = time.perf_counter()
    for i in range(0, n_images, args.batch_size):
        vqa._image_embeddings(images[i : i + args.batch_size])
    t_vision = time.perf_counter() - start
    # what yes_probability shares in the first image batch (the prompt prefix is computed per image batch)
    ids = vqa._token_ids([q for qs in questions[: args.batch_size] for q in qs])
    n = vqa._shared_prefix_len(ids, len(questions[: args.batch_size])) or 0
    n_query = model.config.num_query_tokens
    print(
        f"    of which vision side (ViT + Q-Former, {n_images} images) {fmt_s(t_vision)}, "
        f"language model + rest {fmt_s(max(0.0, t_ours - t_vision))} ([image | prompt prefix] = {n_query + n} "
        f"positions once per image, then {n_pairs} rows of {np.mean([len(x) - n for x in ids]):.1f} positions "
        f"on average, logits at the last only)",
        flush=True,
    )

    k = min(4, n_images)
    ref = first_step_p_yes(vqa, images[:k], questions[:k])
    got = np.concatenate(probs[:k])
    diff = float(np.abs(ref - got).max())
    flat = np.concatenate(probs)
    rows = [
        {
            "way": "ours: Blip2Vqa.yes_probability (prompt prefix once per image, lm_head at the last token)",
            "seconds": fmt_s(t_ours),
            "pairs/s": f"{n_pairs / t_ours:.1f}",
            "ratio": ratio(t_base, t_ours),
            f"target {TARGET:.0f}x met": met(t_base / t_ours >= TARGET),
        },
        {
            "way": "ours, share_prefix=False (full prompt per question, lm_head at the last token)",
            "seconds": fmt_s(t_plain),
            "pairs/s": f"{n_pairs / t_plain:.1f}",
            "ratio": ratio(t_base, t_plain),
            f"target {TARGET:.0f}x met": met(t_base / t_plain >= TARGET),
        },
        {
            "way": "baseline: generate(max_new_tokens=3) per (image, question), read the text",
            "seconds": fmt_s(t_base),
            "pairs/s": f"{n_pairs / t_base:.1f}",
        },
    ]
    print()
    print(table(rows, list(rows[0])))
    print(
        f"\nP(yes) vs generate()'s first-step scores on {len(ref)} pairs: max |diff| {diff:.1g}; "
        f"answers 'yes' (generate) {np.mean(answers):.0%}, P(yes) > 0.5 (ours) {np.mean(flat > 0.5):.0%} "
        f"(random weights: the answers themselves mean nothing)"
    )
    write_json(
        args.json,
        {
            "machine": info,
            "results": {
                "images": n_images,
                "pairs": n_pairs,
                "ours_s": t_ours,
                "baseline_s": t_base,
                "ratio": t_base / t_ours,
                "p_yes_max_diff_vs_generate_scores": diff,
                "ours_vision_side_s": t_vision,
                "plain_path_s": t_plain,
                "plain_path_max_diff": plain_diff,
                "shared_prefix_positions": n_query + n,
                "parameters": n_params,
                "vocab": len(processor.tokenizer),
                "batch_size": args.batch_size,
            },
        },
    )


if __name__ == "__main__":
    main()
