"""Probe image sets: ImageFolder-style trees, several merged into one, with source and licence per image.

A folder may carry a `manifest.csv` (columns path,source,license,label; paths relative to the folder)
that lists its images in order with their provenance; otherwise the tree is walked in sorted order
(root/<class>/<file> gives the class as label, files directly in root get no label).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
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


# Refused from the header, before anything is decoded: a decompression bomb, or a strip whose short
# side scaled to the network's input makes a huge image (60000x1 -> 256 x 15.36M pixels, ~12 GB).
# 80 megapixels: above most camera photos, 240 MB as RGB in each decoding worker, and under Pillow's
# own decompression-bomb warning (89.5 M), so no image taken sets it off
MAX_PIXELS = 80_000_000
MAX_ASPECT = 20  # a centre crop would see under a twentieth of anything longer

# Pillow keeps 16-bit grey samples (PNG, TIFF, PGM at any maxval above 255) on a 0..65535 scale in these
GREY_16 = ("I", "I;16", "I;16B", "I;16L", "I;16N")
SCALED_GREY = (*GREY_16, "F")  # the modes to_rgb scales itself


def size_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused before decoding, or None."""
    if width < 1 or height < 1:
        return f"{width}x{height} pixels: no pixels"
    if width * height > MAX_PIXELS:
        return (
            f"{width}x{height} pixels is over the limit of {MAX_PIXELS:,} pixels "
            "(a decompression bomb or an image too large to decode safely)"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        ratio = max(width, height) / min(width, height)
        return (
            f"{width}x{height} pixels: aspect ratio {ratio:,.0f}:1 is beyond the limit of {MAX_ASPECT}:1 "
            "(the network's centre crop would see a sliver of it, and resizing it could exhaust memory)"
        )
    return None


def to_rgb(im: Image.Image) -> Image.Image:
    """An image of any Pillow mode as the RGB image a network sees: transparent parts on white (clip
    art is drawn for a white page, not black), 16-bit and 32-bit grey scaled to 8 bits (Pillow's own
    convert clips them: a 16-bit scan turns solid white), floats read on 0..1 when they lie there (the
    float image convention) and else on 0..255 (Pillow's)."""
    if im.mode in SCALED_GREY:
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
            scale = 255.0 if a.size and a.min() >= 0.0 and a.max() <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        grey = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")
        key = im.info.get("transparency")
        if isinstance(key, (int, float)):  # one grey value marked transparent (a PNG tRNS chunk)
            grey.putalpha(Image.fromarray(np.where(np.asarray(im) == key, 0, 255).astype(np.uint8), "L"))
        im = grey
    if im.has_transparency_data:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def load_rgb(source: str | os.PathLike | BinaryIO) -> Image.Image:
    """The one way an image file (a path, or an open file such as an upload) becomes the RGB image a
    network sees: its size is checked from the header before it is decoded (size_problem), then it is
    converted by to_rgb. Every problem is a ClipevalError naming the file."""
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "the uploaded image")
    try:
        with Image.open(source) as im:
            why = size_problem(*im.size)
            if why is None:
                im.load()
                return to_rgb(im)
    except UnidentifiedImageError:
        # Pillow's message names the file by its repr: "<_io.BytesIO object at 0x...>" for an upload
        why = "not an image format Pillow reads (PNG, JPEG, WebP, BMP, GIF, TIFF, ...)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the file", str(e)) or type(e).__name__
    raise ClipevalError(f"cannot read image {name}: {why}")


def _check_image(path: Path) -> tuple[str | None, str]:
    """(None, its Pillow mode) if the file looks like a readable image of a size load_rgb takes, else
    (the reason it is not, '')."""
    try:
        with Image.open(path) as im:
            why = size_problem(*im.size)
            if why:
                return why, ""
            mode = im.mode
            im.verify()
        return None, mode
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}" or "unreadable", ""


def _walk(root: Path) -> list[tuple[Path, str, str, str]]:
    manifest = root / MANIFEST
    if manifest.exists():
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ClipevalError(
                    f"{manifest} lacks column(s) {sorted(missing)}; expected {','.join(MANIFEST_COLUMNS)}"
                )
            rows = list(reader)
        out = []
        for i, r in enumerate(rows, start=2):
            path = root / r["path"]
            # judged on the text (a folder may hold symlinks to shared files; those are fine)
            rel = os.path.normpath(r["path"] or ".")
            if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep) or rel == ".":
                raise ClipevalError(
                    f"{manifest} row {i}: path {r['path']!r} leads outside the probe folder {root}; "
                    "manifest paths are relative to the folder and stay inside it"
                )
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
        reason, mode = ("missing", "") if not path.exists() else _check_image(path)
        if reason:
            skipped.append((str(path), reason))
            continue
        images.append(ProbeImage(key, source, license_, label))
        st = path.stat()  # size and mtime, not content: hashing a 50k-image probe would take minutes
        # Pillow's own convert clipped 16-bit and float grey to white: such images are marked, so that
        # runs and cached arrays made from those white images are not taken for today's
        mark = "\0scaled grey" if mode in SCALED_GREY else ""
        digest.update(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\0{source}\0{label}{mark}\n".encode())

    if skipped:
        listing = "; ".join(f"{p} ({r})" for p, r in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        if on_bad_image == "fail":
            raise ClipevalError(
                f"{len(skipped)} unreadable file(s) in the probe set: {listing}. "
                "Remove them or pass --on-bad-image skip"
            )
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
