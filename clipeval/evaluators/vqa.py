"""VQA: ask a VQA model (BLIP-2 by default) `Is this image related to "<label>"?` about each top-k
image; raw score P(yes) from the next-token logits of one forward pass, each image's vision features
computed once for all the labels asked about it (real, shuffled, constant)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipeval.compute import ray_map
from clipeval.compute.batches import YesNoBatch
from clipeval.evaluators.base import EvalInputs
from clipeval.models.vqa import format_prompt

IMAGE_SIZE = 128  # the paper showed its evaluators 128 x 128 images


class VisualQuestionAnswering:
    name = "vqa"
    kinds = ("top",)

    def __init__(
        self,
        vqa,
        prompt: str,
        image_size: int | None = IMAGE_SIZE,
        batch_size: int | None = None,
        num_workers: int | None = None,
        engine=None,
        ray_work=None,
    ):
        """batch_size: images per call and (image, question) rows per language-model call (default per
        device: 8 on the CPU, 256 on a GPU); images are decoded and preprocessed in num_workers processes.
        With a Ray `engine`, `ray_work` (clipeval.compute.ray_map.VqaWork) says which model the workers load and
        `vqa` may be None: this process never loads it."""
        format_prompt(prompt, "x")  # fail early on a template without {label}
        self.vqa, self.prompt, self.image_size = vqa, prompt, image_size
        self.engine, self.ray_work = engine, ray_work
        self.model_info: dict = vqa.info() if vqa is not None else {}
        if engine is not None and engine.is_ray:
            self.work = None
            self.images_per_call = ray_work.batch_size
        else:
            self.work = YesNoBatch(vqa, image_size, batch_size=batch_size)
            self.images_per_call = self.work.batch_size
        self.num_workers = num_workers

    def score(self, inputs: EvalInputs, progress: bool = True) -> pd.DataFrame:
        pairs = inputs.pairs(self.kinds)
        asked = pairs.groupby("image_id", sort=True)["label"].agg(lambda s: sorted(set(s)))
        ids = asked.index.to_numpy()
        questions = [[format_prompt(self.prompt, l) for l in asked[i]] for i in ids]
        paths = [inputs.paths[int(i)] for i in ids]
        if self.work is None:
            probs, self.model_info = ray_map.yes_probability(
                self.engine, self.ray_work, paths, questions, progress=progress
            )
        else:
            probs = self.work.score(paths, questions, num_workers=self.num_workers, progress=progress, desc="VQA")
        p_yes = {(int(i), label): float(p) for i, ps in zip(ids, probs) for label, p in zip(asked[i], ps)}
        raw = np.array([p_yes[(int(i), l)] for i, l in zip(pairs["image_id"], pairs["label"])])
        return pairs.assign(raw=raw)
