"""The ImageNet class names and their WordNet synonyms, read from the installed open_clip and timm packages'
files without importing them (both import torch: 10+ s that the app's pages must not pay)."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from clipeval.errors import ClipevalError


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it (timm and open_clip import torch: 10+ s)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ClipevalError(f"the package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def imagenet_classnames() -> list[str]:
    """open_clip.IMAGENET_CLASSNAMES, read from its source file: the app shows class names and must not
    import torch to do so (importing open_clip costs the first page load 5-14 s on 2 busy cores)."""
    tree = ast.parse((_package_dir("open_clip") / "zero_shot_metadata.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "IMAGENET_CLASSNAMES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ClipevalError("open_clip's zero_shot_metadata.py has no IMAGENET_CLASSNAMES")


@functools.lru_cache(maxsize=1)
def imagenet_synonyms() -> list[set[str]]:
    """Per ImageNet class (in class-index order): its open_clip name and the WordNet lemmas of its
    synset (timm ships the synset list and lemmas), lower-cased."""
    info = _package_dir("timm") / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(
        line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines() if "\t" in line
    )
    names = imagenet_classnames()
    return [
        {names[i].lower(), *(l.strip().lower() for l in lemmas.get(s, "").split(","))} - {""}
        for i, s in enumerate(synsets)
    ]
