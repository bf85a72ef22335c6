"""Contrast: beyond the paper. A label that is true of a neuron should be present in the images that
activate it and absent from those that do not. Scores cosine(image, label) on the neuron's top-k
images AND on inactive ones (its lowest-activation images and random images below its 90th
activation percentile); the neuron's score is the ROC-AUC separating the two groups (see rules.py),
so a vague label that fits every image ("object") scores near 0.5 instead of passing."""

from __future__ import annotations

from clipeval.evaluators.es import EmbeddingSimilarity


class Contrast(EmbeddingSimilarity):
    name = "contrast"
    kinds = ("top", "low", "random")
