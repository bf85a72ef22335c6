"""BLIP-2 as a yes/no judge: P(yes) for (image, question) pairs in one forward pass per batch.

BLIP-2 feeds the language model `num_query_tokens` projected Q-Former outputs followed by the prompt.
The image part depends only on the image, so it is computed once per image and reused for every
question about that image. The language model is causal, so [image embeddings | the prompt tokens all
questions start with] also runs once per image, keeping its key/value cache; each question then runs
only its own remaining tokens. No generate() loop: the answer is read from the next-token distribution
after the prompt, and the vocabulary projection is applied at that last position only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image

from clipeval.compute.device import resolve_dtype
from clipeval.config import DEFAULT_PROMPT
from clipeval.datasets.probe import to_rgb
from clipeval.errors import ClipevalError, WeightsUnavailable
from clipeval.models.hub import folder_fingerprint, module_fingerprint, offline_hub

if TYPE_CHECKING:  # transformers is imported where it is used: importing it takes seconds
    from transformers import DynamicCache

# Imported inside the functions that use them: transformers and huggingface_hub, only when BLIP-2 is loaded
# (seconds to import; VQA is optional).

DEFAULT_MODEL = "Salesforce/blip2-opt-2.7b"
DEFAULT_TEMPLATE = DEFAULT_PROMPT
YES_VARIANTS = ("yes", " yes", "Yes", " Yes")
NO_VARIANTS = ("no", " no", "No", " No")
# Share [image | common prompt prefix] across an image's questions only where that saves at least this
# fraction of the language model's positions: below it, the extra forward call and the per-row copies
# of the key/value cache cost about as much as they save (break-even 0.15-0.18 on bench/bench_vqa.py's model).
MIN_SAVED_FRACTION = 0.2


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


def _resolve_dtype(dtype, device) -> torch.dtype:
    """None or 'auto': float32 on the CPU (slow or unsupported half precision there), bfloat16 on GPUs
    that support it, else float16 (clipeval.compute.device.resolve_dtype)."""

    if dtype is not None and not isinstance(dtype, (str, torch.dtype)):
        raise ClipevalError(f"dtype must be a torch dtype or its name, got {dtype!r}")
    return resolve_dtype(dtype, torch.device(device))


def weights_fingerprint(name_or_path: str) -> str:
    """Identity of the files a load of `name_or_path` reads, computed WITHOUT loading them: a local folder's
    files, or the local Hugging Face cache's snapshot of a hub id; '' when neither is here (the load
    then fails as unavailable). Replacing a folder's weights changes it, so stale scores are never reused."""

    if os.path.isdir(name_or_path):
        return folder_fingerprint(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        with offline_hub():
            return folder_fingerprint(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # not in the cache (or not a hub id): nothing to identify
        return ""


def vqa_identity(name_or_path: str, backend=None, dtype=None, device: str = "cpu") -> dict:
    """What a VQA evaluation's scores depend on besides its settings: the model's name, its weights'
    fingerprint and the dtype it runs in (the prompt template is in the evaluation's settings)."""
    if backend is not None:
        info = backend.info()
        return {
            "name": info.get("name", ""),
            "fingerprint": info.get("fingerprint", ""),
            "dtype": info.get("dtype", ""),
        }
    return {
        "name": name_or_path,
        "fingerprint": weights_fingerprint(name_or_path),
        "dtype": str(_resolve_dtype(dtype, device)).replace("torch.", ""),
    }


class Blip2Vqa:
    """A BLIP-2 (decoder-only language model, e.g. OPT) model + processor, asked yes/no questions."""

    def __init__(self, model, processor, device: str = "cpu", name: str = "", fingerprint: str = ""):
        if not getattr(model.config, "use_decoder_only_language_model", True):
            raise ClipevalError("Blip2Vqa needs a decoder-only language model (OPT); Flan-T5 BLIP-2 is not supported")
        self.model = model.to(device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self._fingerprint = fingerprint  # of the files it was loaded from; else its weights' hash, on demand
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
        fingerprint = weights_fingerprint(name_or_path)
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
        return cls(model, processor, device=device, name=name_or_path, fingerprint=fingerprint)

    def info(self) -> dict:
        """Provenance recorded next to every score."""
        return {
            "name": self.name,
            "class": type(self.model).__name__,
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            # the language model's dtype: model.dtype reports the first parameter, the fp32-kept query tokens
            "dtype": str(self.model.language_model.dtype).replace("torch.", ""),
            "device": str(self.device),
            "fingerprint": self.fingerprint,
            "yes_token_ids": list(self.yes_ids),
            "no_token_ids": list(self.no_ids),
        }

    @property
    def fingerprint(self) -> str:
        if not self._fingerprint:
            self._fingerprint = module_fingerprint(self.model)
        return self._fingerprint

    # -- internals -------------------------------------------------------------------------------

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The image processor's (n, 3, H, W) float32 pixels on the CPU (DataLoader workers make them one
        image at a time: clipeval.compute.batches.DecodeVqa)."""

        return self.processor.image_processor([to_rgb(im) for im in images], return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def _image_embeddings(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """(n_images, num_query_tokens, lm_hidden): vision encoder -> Q-Former -> projection, once per image.
        `images`: PIL images, or their pixel_values already made."""
        pixels = images if torch.is_tensor(images) else self.pixel_values(images)
        pixels = pixels.to(self.device, non_blocking=self.device.type == "cuda").to(self.model.vision_model.dtype)
        # get_image_features is the model's own path (it also handles the fp32 Q-Former), so our
        # embeddings are exactly those its forward() scatters into the image-token positions.
        return self.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output

    def _token_ids(self, questions: Sequence[str]) -> list[list[int]]:
        # Unpadded with special tokens (BOS), as Blip2Processor tokenises; no image-token placeholders,
        # because we put the image embeddings in front ourselves.
        return self.tokenizer(list(questions), add_special_tokens=True, padding=False)["input_ids"]

    def _right_padded(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, attention mask), padded on the right by us (the tokenizer's padding_side plays no part)."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        tokens = torch.full((len(ids), max(map(len, ids))), pad_id, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for row, x in enumerate(ids):
            tokens[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        return tokens.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def _next_token_logits(self, image_embeds: torch.Tensor, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """(len(ids), vocab) logits after each prompt; image_embeds[i] goes with the token ids ids[i].

        The plain path: each row is the full [image embeddings | BOS + question tokens], padded on the
        right. With causal attention the real tokens never see the padding, and OPT derives positions
        from the attention mask, so a row's logits at its last real token do not depend on what else is
        in the batch. This is the layout Blip2Processor builds (image tokens before BOS).
        """
        tokens, text_mask = self._right_padded(ids)
        text_embeds = self.model.get_input_embeddings()(tokens)
        inputs_embeds = torch.cat([image_embeds.to(text_embeds.dtype), text_embeds], dim=1)
        mask = torch.cat([text_mask.new_ones(len(text_mask), image_embeds.shape[1]), text_mask], dim=1)
        last = mask.sum(dim=1, keepdim=True) - 1
        # logits_to_keep: the vocabulary projection only at each row's last real token
        out = self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=mask, logits_to_keep=last)
        return out.logits[:, 0].float()

    @torch.no_grad()
    def _prefix_cache(self, image_embeds: torch.Tensor, prefix: Sequence[int]) -> DynamicCache:
        """Key/value cache of [image_embeds[i] | prefix tokens], one row per image (no padding, no logits)."""
        from transformers import DynamicCache

        lm = self.model.language_model
        text_embeds = lm.get_input_embeddings()(torch.tensor(list(prefix), dtype=torch.long, device=self.device))
        text_embeds = text_embeds.expand(len(image_embeds), -1, -1)
        inputs_embeds = torch.cat([image_embeds.to(text_embeds.dtype), text_embeds], dim=1)
        cache = DynamicCache(config=lm.config)
        lm.base_model(inputs_embeds=inputs_embeds, cache=cache, use_cache=True)  # the decoder, without lm_head
        return cache

    @torch.no_grad()
    def _next_token_logits_cached(
        self, cache: DynamicCache, image_idx: torch.Tensor, rests: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Like _next_token_logits for prompts [cache[image_idx[i]] | rests[i]]: only the tokens after the
        shared prefix run; each attends to its image's cached keys/values. rests[i] must not be empty."""
        from transformers import DynamicCache

        lm = self.model.language_model
        # A fresh cache per call, one row per prompt: the forward appends to the cache it is given, and the
        # prefix cache is needed again for the next rows.
        rows = DynamicCache([(la.keys[image_idx], la.values[image_idx]) for la in cache.layers], config=lm.config)
        tokens, text_mask = self._right_padded(rests)
        # the mask covers cached + new positions; OPT numbers the new tokens from it (cumsum), so the
        # positions continue after the prefix exactly as in the full sequence
        mask = torch.cat([text_mask.new_ones(len(text_mask), cache.get_seq_length()), text_mask], dim=1)
        last = text_mask.sum(dim=1, keepdim=True) - 1
        out = lm(inputs_embeds=lm.get_input_embeddings()(tokens), attention_mask=mask, cache=rows, logits_to_keep=last)
        return out.logits[:, 0].float()

    def _shared_prefix_len(self, ids: Sequence[Sequence[int]], n_images: int) -> int | None:
        """How many leading tokens every prompt in `ids` shares (leaving each at least one of its own), or
        None where running [image | prefix] once per image would not pay for the extra forward call."""
        if min(map(len, ids)) == 0:
            return None
        n = 0
        for column in zip(*ids):
            if any(t != column[0] for t in column):
                break
            n += 1
        n = min(n, min(map(len, ids)) - 1)
        n_query = self.model.config.num_query_tokens
        saved = (len(ids) - n_images) * (n_query + n)  # positions not run again for an image's 2nd, 3rd... question
        return n if saved >= MIN_SAVED_FRACTION * sum(n_query + len(x) for x in ids) else None

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
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        questions: Sequence[Sequence[str]],
        batch_size: int = 8,
        share_prefix: bool = True,
    ) -> list[np.ndarray]:
        """P(yes) per question, per image: questions[i] are asked about images[i] (PIL images, or a
        (n, 3, H, W) tensor of their pixel_values, as workers prepare them to overlap the model).

        Images go through the vision side batch_size at a time; then all their (image, question) pairs
        go through the language model batch_size rows at a time, reusing each image's embeddings. With
        share_prefix (the default), [image embeddings | the tokens all these prompts start with] runs once
        per image and only the rest of each prompt per question, attending to that key/value cache:
        the same logits as the full prompt (share_prefix=False, the plain path) up to float rounding.
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
            chunk = images[start : start + batch_size]
            embeds = self._image_embeddings(chunk)
            ids = self._token_ids([q for qs in chunk_q for q in qs])
            image_of = [i for i, qs in enumerate(chunk_q) for _ in qs]
            n = self._shared_prefix_len(ids, len(chunk_q)) if share_prefix else None
            cache = None if n is None else self._prefix_cache(embeds, ids[0][:n])
            p = np.empty(len(ids), dtype=np.float64)
            for b in range(0, len(ids), batch_size):
                img_idx = torch.tensor(image_of[b : b + batch_size], device=embeds.device)
                if cache is None:
                    logits = self._next_token_logits(embeds[img_idx], ids[b : b + batch_size])
                else:
                    logits = self._next_token_logits_cached(cache, img_idx, [x[n:] for x in ids[b : b + batch_size]])
                p[b : b + len(img_idx)] = self._p_yes(logits).cpu().numpy()
            offset = 0
            for qs in chunk_q:
                results.append(p[offset : offset + len(qs)])
                offset += len(qs)
        return results
