"""VQA: ask a VQA model (BLIP-2 by default) `Is this image related to "<label>"?` about each top-k
image; raw score P(yes) from the next-token logits of one forward pass, each image's vision features
computed once for all the labels asked about it (real, shuffled, constant)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from clipeval.data.probe import load_rgb
from clipeval.evaluators.base import EvalInputs
from clipeval.models.vqa import format_prompt

IMAGE_SIZE = 128  # the paper showed its evaluators 128 x 128 images


class VisualQuestionAnswering:
    name = "vqa"
    kinds = ("top",)

    def __init__(self, vqa, prompt: str, image_size: int | None = IMAGE_SIZE, images_per_call: int = 8):
        format_prompt(prompt, "x")  # fail early on a template without {label}
        self.vqa, self.prompt, self.image_size, self.images_per_call = vqa, prompt, image_size, images_per_call

    def _image(self, path: str) -> Image.Image:
        img = load_rgb(path)
        return img.resize((self.image_size, self.image_size), Image.BICUBIC) if self.image_size else img

    def score(self, inputs: EvalInputs, progress: bool = True) -> pd.DataFrame:
        pairs = inputs.pairs(self.kinds)
        asked = pairs.groupby("image_id", sort=True)["label"].agg(lambda s: sorted(set(s)))
        p_yes: dict[tuple[int, str], float] = {}
        ids = asked.index.to_numpy()
        for start in tqdm(range(0, len(ids), self.images_per_call), desc="VQA", disable=not progress, unit="batch"):
            chunk = ids[start:start + self.images_per_call]
            questions = [[format_prompt(self.prompt, l) for l in asked[i]] for i in chunk]
            probs = self.vqa.yes_probability([self._image(inputs.paths[int(i)]) for i in chunk], questions)
            for i, ps in zip(chunk, probs):
                for label, p in zip(asked[i], ps):
                    p_yes[(int(i), label)] = float(p)
        raw = np.array([p_yes[(int(i), l)] for i, l in zip(pairs["image_id"], pairs["label"])])
        return pairs.assign(raw=raw)
