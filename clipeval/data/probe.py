"""Probe image sets: ImageFolder-style trees, several merged into one, with source and licence per image.

A folder may carry a `manifest.csv` (columns path,source,license,label; paths relative to the folder)
that lists its images in order with their provenance; otherwise the tree is walked in sorted order
(root/<class>/<file> gives the class as label, files directly in root get no label).
"""

from __future__ import annotations

import csv
import os
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from clipeval.errors import ClipevalError, check_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "source", "license", "label")


@dataclass(frozen=True)
class ProbeImage:
    path: str  # absolute
    source: str
    license: str
    label: str


@dataclass
class ProbeSet:
    images: list[ProbeImage]
    fingerprint: str  # changes whenever any file is added, removed, resized or rewritten
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable files left out

    def __len__(self) -> int:
        return len(self.images)


def load_rgb(path: str) -> Image.Image:
    """Decode an image as RGB; transparent clip art is put on white, not black."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, im).convert("RGB")
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ClipevalError(f"cannot read image {path}: {e}") from e


def _check_image(path: Path) -> str | None:
    """None if the file looks like a readable image, else the reason it is not."""
    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}" or "unreadable"


def _walk(root: Path) -> list[tuple[Path, str, str, str]]:
    manifest = root / MANIFEST
    if manifest.exists():
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ClipevalError(f"{manifest} lacks column(s) {sorted(missing)}; expected {','.join(MANIFEST_COLUMNS)}")
            rows = list(reader)
        out = []
        for i, r in enumerate(rows, start=2):
            path = root / r["path"]
            # judged on the text (a folder may hold symlinks to shared files; those are fine)
            rel = os.path.normpath(r["path"] or ".")
            if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep) or rel == ".":
                raise ClipevalError(f"{manifest} row {i}: path {r['path']!r} leads outside the probe folder {root}; "
                                    "manifest paths are relative to the folder and stay inside it")
            out.append((path, r["source"], r["license"], r["label"]))
        return out
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    out = []
    for p in files:
        rel = p.relative_to(root)
        label = rel.parts[0] if len(rel.parts) > 1 else ""
        out.append((p, root.name, "unknown (user folder)", label))
    return out


def load_probe(paths: Sequence[str], on_bad_image: str = "skip") -> ProbeSet:
    """List the images of one or more folders (merged in order), checking that each can be read."""
    if not paths:
        raise ClipevalError("no probe folder given")
    entries: list[tuple[Path, str, str, str]] = []
    for raw in paths:
        root = check_path(raw, "probe folder", "folder")
        found = _walk(root)
        if not found:
            raise ClipevalError(f"probe folder {raw} holds no images (looked for {' '.join(IMAGE_EXTENSIONS)})")
        entries.extend(found)

    images, skipped, seen = [], [], set()
    digest = hashlib.sha256()
    for path, source, license_, label in entries:
        key = str(path.resolve())
        if key in seen:  # the same file reached through two roots counts once
            continue
        seen.add(key)
        reason = "missing" if not path.exists() else _check_image(path)
        if reason:
            skipped.append((str(path), reason))
            continue
        images.append(ProbeImage(key, source, license_, label))
        st = path.stat()  # size and mtime, not content: hashing a 50k-image probe would take minutes
        digest.update(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\0{source}\0{label}\n".encode())

    if skipped:
        listing = "; ".join(f"{p} ({r})" for p, r in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        if on_bad_image == "fail":
            raise ClipevalError(f"{len(skipped)} unreadable file(s) in the probe set: {listing}. "
                                "Remove them or pass --on-bad-image skip")
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) in the probe set: {listing}", stacklevel=2)
    if not images:
        raise ClipevalError(f"probe set {list(paths)} has no readable images")
    return ProbeSet(images, digest.hexdigest()[:16], skipped)


def thumbnail_jpeg(image: Image.Image, size: int = 128, quality: int = 85) -> bytes:
    """A small JPEG the app can show without touching the probe folder again."""
    thumb = image.copy()
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
