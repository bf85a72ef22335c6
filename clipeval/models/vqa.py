"""BLIP-2 as a yes/no judge: P(yes) for (image, question) pairs in one forward pass per batch.

BLIP-2 feeds the language model `num_query_tokens` projected Q-Former outputs followed by the prompt.
The image part depends only on the image, so it is computed once per image and reused for every
question about that image; the language model then runs on [image embeddings | question embeddings].
No generate() loop: the answer is read from the next-token distribution after the prompt.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from clipeval.errors import ClipevalError, WeightsUnavailable

DEFAULT_MODEL = "Salesforce/blip2-opt-2.7b"
DEFAULT_TEMPLATE = 'Question: Is this image related to "{label}"? Answer:'
YES_VARIANTS = ("yes", " yes", "Yes", " Yes")
NO_VARIANTS = ("no", " no", "No", " No")


def format_prompt(template: str, label: str) -> str:
    """The question asked about an image for `label`; `template` must contain `{label}`."""
    if "{label}" not in template:
        raise ClipevalError(f"prompt template must contain {{label}}, got: {template!r}")
    # replace(), not format(): a template may contain other braces, and labels may too.
    return template.replace("{label}", label)


def _single_token_ids(tokenizer, variants: Sequence[str]) -> list[int]:
    """Ids of the variants that tokenise to exactly one token (deduplicated, in order)."""
    ids: list[int] = []
    for v in variants:
        enc = tokenizer.encode(v, add_special_tokens=False)
        if len(enc) == 1 and enc[0] != tokenizer.unk_token_id and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except Exception:  # very old/new huggingface_hub layouts: fall back to the documented default
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.path.join(home, "hub")


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        # Half precision halves memory on GPUs; CPUs are slow (or unsupported) in fp16, so keep fp32 there.
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        try:
            dtype = getattr(torch, dtype)
        except AttributeError:
            raise ClipevalError(f"unknown dtype {dtype!r} (use e.g. float32, float16, bfloat16)") from None
    if not isinstance(dtype, torch.dtype):
        raise ClipevalError(f"dtype must be a torch dtype or its name, got {dtype!r}")
    return dtype


class Blip2Vqa:
    """A BLIP-2 (decoder-only language model, e.g. OPT) model + processor, asked yes/no questions."""

    def __init__(self, model, processor, device: str = "cpu", name: str = ""):
        if not getattr(model.config, "use_decoder_only_language_model", True):
            raise ClipevalError("Blip2Vqa needs a decoder-only language model (OPT); Flan-T5 BLIP-2 is not supported")
        self.model = model.to(device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.yes_ids = _single_token_ids(self.tokenizer, YES_VARIANTS)
        self.no_ids = _single_token_ids(self.tokenizer, NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise ClipevalError(
                f"the tokenizer of {self.name} has no single-token 'yes'/'no' "
                f"(yes ids {self.yes_ids}, no ids {self.no_ids}); cannot read P(yes)"
            )

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype=None) -> "Blip2Vqa":
        """Load from the local Hugging Face cache or a save_pretrained folder; never from the network."""
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        torch_dtype = _resolve_dtype(dtype, device)
        try:
            processor = Blip2Processor.from_pretrained(name_or_path, local_files_only=True)
            model = Blip2ForConditionalGeneration.from_pretrained(
                name_or_path, local_files_only=True, dtype=torch_dtype
            )
        except (OSError, ValueError) as e:  # hub/cache misses surface as OSError subclasses
            if os.path.isdir(name_or_path):
                where = f"the folder {os.path.abspath(name_or_path)} does not hold a complete BLIP-2 model + processor"
            else:
                where = f"the BLIP-2 model {name_or_path!r} is not in the local Hugging Face cache ({_hf_cache_dir()})"
            raise WeightsUnavailable(
                f"{where} ({type(e).__name__}: {e}).\n"
                f"Model hubs are not reached from here. To get it, on a machine with network run\n"
                f"    huggingface-cli download {name_or_path}     (or: hf download {name_or_path})\n"
                f"and copy its Hugging Face cache to this machine (looked for under HF_HOME, default "
                f"~/.cache/huggingface; set HF_HOME to use another cache), or there call\n"
                f"    Blip2ForConditionalGeneration.from_pretrained(NAME).save_pretrained(FOLDER) and\n"
                f"    Blip2Processor.from_pretrained(NAME).save_pretrained(FOLDER),\n"
                f"copy FOLDER here and pass its path as the model name."
            ) from e
        return cls(model, processor, device=device, name=name_or_path)

    def info(self) -> dict:
        """Provenance recorded next to every score."""
        return {
            "name": self.name,
            "class": type(self.model).__name__,
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            # the language model's dtype: model.dtype reports the first parameter, the fp32-kept query tokens
            "dtype": str(self.model.language_model.dtype).replace("torch.", ""),
            "device": str(self.device),
            "yes_token_ids": list(self.yes_ids),
            "no_token_ids": list(self.no_ids),
        }

    # -- internals -------------------------------------------------------------------------------

    @torch.no_grad()
    def _image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n_images, num_query_tokens, lm_hidden): vision encoder -> Q-Former -> projection, once per image."""
        pixels = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.model.vision_model.dtype)
        # get_image_features is the model's own path (it also handles the fp32 Q-Former), so our
        # embeddings are exactly those its forward() scatters into the image-token positions.
        return self.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output

    @torch.no_grad()
    def _next_token_logits(self, image_embeds: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """(len(questions), vocab) logits after each prompt; image_embeds[i] goes with questions[i].

        Rows are [image embeddings | BOS + question tokens] padded on the right by us (the tokenizer's
        padding_side plays no part). With causal attention the real tokens never see the padding, and OPT
        derives positions from the attention mask, so a row's logits at its last real token do not depend
        on what else is in the batch. This is the layout Blip2Processor builds (image tokens before BOS).
        """
        # Tokenise unpadded, as the processor does (add_special_tokens -> BOS); no image tokens needed
        # because we insert the image embeddings ourselves.
        ids = self.tokenizer(list(questions), add_special_tokens=True, padding=False)["input_ids"]
        n_query = image_embeds.shape[1]
        lengths = [n_query + len(x) for x in ids]
        width = max(lengths)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), width - n_query), pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (x, n) in enumerate(zip(ids, lengths)):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            attention[row, :n] = 1
        text_embeds = self.model.get_input_embeddings()(input_ids.to(self.device))
        inputs_embeds = torch.cat([image_embeds.to(text_embeds.dtype), text_embeds], dim=1)
        out = self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention.to(self.device))
        last = torch.tensor(lengths, device=out.logits.device) - 1
        return out.logits[torch.arange(len(ids), device=out.logits.device), last].float()

    def _p_yes(self, logits: torch.Tensor) -> torch.Tensor:
        """sum P(yes variants) / (sum P(yes variants) + sum P(no variants)) from next-token logits.

        The softmax normaliser cancels in the ratio, so this is sigmoid(logsumexp(yes) - logsumexp(no)),
        which stays exact even when both are tiny in absolute terms.
        """
        yes = torch.logsumexp(logits[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logits[:, self.no_ids], dim=-1)
        return torch.sigmoid(yes - no)

    # -- public ----------------------------------------------------------------------------------

    def yes_probability(
        self, images: Sequence[Image.Image], questions: Sequence[Sequence[str]], batch_size: int = 8
    ) -> list[np.ndarray]:
        """P(yes) per question, per image: questions[i] are asked about images[i].

        Images go through the vision side batch_size at a time; then all their (image, question) pairs
        go through the language model batch_size rows at a time, reusing each image's embeddings.
        """
        if len(images) != len(questions):
            raise ClipevalError(f"{len(images)} images but {len(questions)} question lists")
        if batch_size < 1:
            raise ClipevalError(f"batch_size must be >= 1, got {batch_size}")
        results: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk_q = [list(q) for q in questions[start : start + batch_size]]
            if not any(chunk_q):  # no questions: skip the vision model as well
                results.extend(np.zeros(0, dtype=np.float64) for _ in chunk_q)
                continue
            embeds = self._image_embeddings([im.convert("RGB") for im in images[start : start + batch_size]])
            pairs = [(i, q) for i, qs in enumerate(chunk_q) for q in qs]
            p = np.empty(len(pairs), dtype=np.float64)
            for b in range(0, len(pairs), batch_size):
                rows = pairs[b : b + batch_size]
                img_idx = torch.tensor([i for i, _ in rows], device=embeds.device)
                logits = self._next_token_logits(embeds[img_idx], [q for _, q in rows])
                p[b : b + len(rows)] = self._p_yes(logits).cpu().numpy()
            offset = 0
            for qs in chunk_q:
                results.append(p[offset : offset + len(qs)])
                offset += len(qs)
        return results
