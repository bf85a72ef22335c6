"""The sanity check for a layer whose units are the ImageNet classes: does unit i's label name class i?"""

from __future__ import annotations

import numpy as np

from clipeval.datasets.imagenet import imagenet_classnames, imagenet_synonyms
from clipeval.store import Store

IMAGENET_CLASSES = 1000


def unit_imagenet_class(n_units: int, unit: int, label: str, concepts=()) -> dict | None:
    """The obvious sanity check for a layer whose units are the ImageNet classes (a 1000-way classifier):
    unit i is class i. Returns the class name, whether the label names it (its name or a WordNet
    synonym), and the rank of the first of `concepts` (runner-ups, best first, rank 1 = the label) that
    does; None for any other layer."""
    if int(n_units) != IMAGENET_CLASSES or not 0 <= int(unit) < IMAGENET_CLASSES:
        return None
    synonyms = imagenet_synonyms()[int(unit)]
    rank = next((i for i, c in enumerate(concepts, 1) if str(c).lower() in synonyms), None)
    return {
        "class": imagenet_classnames()[int(unit)],
        "label_matches": str(label).lower() in synonyms,
        "concept_rank": rank,
        "synonyms": sorted(synonyms),
    }


def imagenet_label_accuracy(store: Store, run_id: str, layer: str) -> dict:
    """Top-1 / top-5 label accuracy of a layer whose 1,000 units are the ImageNet classes: the label
    (or one of the five best concepts) names the unit's class (its name or a WordNet synonym). The
    original CLIP-Dissect reports 95.5% top-1 for ResNet-50's final layer with ImageNet class names."""
    synonyms = imagenet_synonyms()
    ru = store.all_runner_ups(run_id)
    ru = ru[ru["layer"] == layer]
    if ru.empty or ru["unit"].nunique() != len(synonyms):
        return {}
    hit = np.array([str(c).lower() in synonyms[int(u)] for u, c in zip(ru["unit"], ru["concept"])], bool)
    ru = ru.assign(top1=hit & (ru["rank"] == 1).to_numpy(), top5=hit & (ru["rank"] <= 5).to_numpy())
    by_unit = ru.groupby("unit")[["top1", "top5"]].any()
    return {
        "layer": layer,
        "neurons": int(len(by_unit)),
        "top1": float(by_unit["top1"].mean()),
        "top5": float(by_unit["top5"].mean()),
    }
