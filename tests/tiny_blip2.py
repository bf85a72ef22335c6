"""A tiny random-weight BLIP-2 (ViT + Q-Former + OPT) with a home-made tokenizer, built fully offline."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from clipeval.models.vqa import Blip2Vqa

IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
SPECIALS = ["<pad>", "</s>", "<unk>", "<image>"]  # OPT uses </s> as BOS and EOS
WORDS = (
    'yes no Yes No Question : Is this image related to " "? ? Answer a the cat dog red car tree house '
    "photo of an animal small large very blue green outdoor scene with"
).split()


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()  # " yes" and "yes" -> same id: exercises the dedupe
    tk.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
    )  # no image_token attribute: Blip2Processor then registers "<image>" (already in the vocab) itself


def make_model(vocab_size: int, image_token_id: int, seed: int = 0) -> Blip2ForConditionalGeneration:
    vision = Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        encoder_hidden_size=32,
        vocab_size=64,
        max_position_embeddings=64,
    )
    text = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        word_embed_proj_dim=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        init_std=0.3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
        # large random weights (here and OPT's init_std) so that P(yes) differs clearly between inputs
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    return Blip2ForConditionalGeneration(config).eval()


def make_processor() -> Blip2Processor:
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Blip2Processor(image_processor, make_tokenizer(), num_query_tokens=NUM_QUERY_TOKENS)


def make_tiny_blip2(tmp_path=None) -> Blip2Vqa:
    """A ready Blip2Vqa; with tmp_path, it goes through save_pretrained + Blip2Vqa.load as well."""
    if tmp_path is not None:
        return Blip2Vqa.load(str(save_tiny_blip2(Path(tmp_path) / "tiny-blip2")))
    processor = make_processor()
    tok = processor.tokenizer
    model = make_model(len(tok), tok.convert_tokens_to_ids("<image>"))
    return Blip2Vqa(model, processor, name="tiny-blip2")


def save_tiny_blip2(folder) -> Path:
    """save_pretrained the tiny model and processor into `folder` (a real local model folder)."""
    folder = Path(folder)
    vqa = make_tiny_blip2()
    vqa.model.save_pretrained(folder)
    vqa.processor.save_pretrained(folder)
    return folder
