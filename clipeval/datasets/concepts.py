"""Concept sets: a text file (one concept per line), built-in common-English sets, ImageNet class names."""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from clipeval.datasets.imagenet import imagenet_classnames
from clipeval.errors import ClipevalError, check_path

# Imported inside the functions that use them: wordfreq, only for the common-word concept sets.

# Built-in sets, made from packages that ship their data (no download).
BUILTIN = {
    "common-3k": "the 3,000 most frequent English words (wordfreq)",
    "common-10k": "the 10,000 most frequent English words (wordfreq)",
    "common-20k": "the 20,000 most frequent English words (wordfreq)",
    "imagenet": "the 1,000 ImageNet class names (open_clip.IMAGENET_CLASSNAMES)",
}
_WORD = re.compile(r"^[a-z][a-z\- ]*$")


@dataclass(frozen=True)
class ConceptSet:
    name: str
    concepts: tuple[str, ...]
    content_hash: str  # keys text-embedding caches: editing the file gives a new key

    def __len__(self) -> int:
        return len(self.concepts)

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.concepts)}


def _common_words(n: int) -> list[str]:
    from wordfreq import top_n_list

    # wordfreq's list holds contractions and numerals; keep plain words, like the original 10k/20k sets.
    words = [w for w in top_n_list("en", 3 * n) if _WORD.match(w)]
    return words[:n]


def from_lines(name: str, lines: list[str], warn: bool = True) -> ConceptSet:
    """Trim, drop blank lines, drop duplicates (first one kept, with a warning); reject an empty set."""
    seen: dict[str, None] = {}
    duplicates = []
    for line in lines:
        concept = line.strip()
        if not concept:
            continue
        if concept in seen:
            duplicates.append(concept)
            continue
        seen[concept] = None
    if not seen:
        raise ClipevalError(f"concept set {name} is empty (no non-blank lines)")
    if len(seen) == 1:
        raise ClipevalError(
            f"concept set {name} has a single distinct concept ({next(iter(seen))!r}"
            f"{f', repeated {len(duplicates) + 1} times' if duplicates else ''}); a label is "
            "the best of several concepts, so give at least two"
        )
    if duplicates and warn:
        shown = ", ".join(repr(d) for d in duplicates[:5]) + (" ..." if len(duplicates) > 5 else "")
        warnings.warn(f"concept set {name}: removed {len(duplicates)} duplicate(s): {shown}", stacklevel=3)
    concepts = tuple(seen)
    digest = hashlib.sha256("\n".join(concepts).encode()).hexdigest()[:16]
    return ConceptSet(name, concepts, digest)


def load_concepts(source: str) -> ConceptSet:
    """A built-in set by name (see BUILTIN) or a UTF-8 text file with one concept per line."""
    if source in BUILTIN:
        if source == "imagenet":  # open_clip names two classes each 'missile' and 'sunglasses': known, kept once
            return from_lines(source, imagenet_classnames(), warn=False)
        n = int(source.split("-")[1].rstrip("k")) * 1000
        return from_lines(source, _common_words(n))
    path = Path(source).expanduser()
    if not path.is_file():
        raise ClipevalError(f"concept set {source!r} is neither a file nor a built-in set ({', '.join(BUILTIN)})")
    check_path(path, "concept file", "read")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows editors) is not part of a concept
    except UnicodeDecodeError as e:
        raise ClipevalError(f"concept file {path} is not UTF-8 text: {e}") from e
    return from_lines(path.name, text.splitlines())
